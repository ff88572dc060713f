"""Loading one object into the log exactly once: its rows and its load record in Kafka transactions.

An object is read in chunks (``ingest.batchread``); each chunk's good rows,
its bad rows' dead letters and the object's updated load record (``chunks``
committed so far) go to Kafka in one transaction. A transaction per chunk,
not per object: a 2 GB file in one transaction would outlive any sane
``transaction.timeout.ms`` and hold every read_committed reader of the table
(the RDB, the PDB, replay) behind its first row until it commits.

Exactly once, whatever happens:
- the transactional id is the object's (its identity's digest), so a second
  loader of the same object (a duplicate S3 event, a restarted watcher, a
  rerun after kill -9) fences the first and aborts its open transaction in
  ``init_transactions``, then reads the committed load record and resumes
  after its last committed chunk; a chunk's rows and the record that counts
  them are committed together or not at all;
- a record in state ``done`` means the whole object is in the log: a later
  delivery of it publishes nothing;
- readers of the log are read_committed, so an aborted chunk's rows are
  never seen. A loader killed mid-chunk leaves its transaction open until
  the next loader of that object or ``transaction_timeout_ms`` ends it;
  meanwhile readers of that table's partitions wait at it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from ingest.batchconvert import Converter
from ingest.batchread import ObjectReader, Rejected
from ingest.deadletter import letter
from ingest.loadlog import DONE, LoadIndex, LoadRecord
from ingest.logread import LogReadError
from ingest.objects import ObjectRef, Store
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.sources import IngestOptions, ingest_options
from ingest.topics import TopicNames, ensure_topics
from ingest.validate import RowRules
from tickplant.config import Settings

COMMIT_TIMEOUT_S = 60.0
PRECHECK_WAIT_S = 3.0
REJECTS_KEPT = 1000


class LoadError(RuntimeError):
    """An object could not be loaded (or was taken over by another loader); names it."""


@dataclass
class LoadResult:
    record: LoadRecord
    already: bool = False  # loaded before: nothing published now
    resumed_at: int = 0  # chunks found committed when this load started
    published: int = 0  # rows published by this call
    rejected: list[Rejected] = field(default_factory=list)  # this call's, the first REJECTS_KEPT


class _ChunkLetters:
    """Stands in for the publisher's dead letters: a refused row's letter joins the chunk's transaction."""

    def __init__(self, producer: Any, topic: str, source: str):
        self.producer = producer
        self.topic = topic
        self.source = source
        self.sent = 0

    def send(self, table: str, reason: str, payload: Any, where: str = "") -> None:
        key = (where or table).encode()
        self.producer.produce(self.topic, key=key, value=letter(self.source, table, reason, payload, where))
        self.sent += 1

    def flush(self, timeout: float = 30.0) -> None:
        """Committed with the chunk's transaction."""


class BatchLoader:
    """Loads objects for one process; reuse it for many (it keeps the load index warm)."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog | None = None,
                 options: IngestOptions | None = None):
        self.settings = settings
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.options = options or ingest_options(settings, set(self.catalog.names))
        self.store = Store(settings)
        self.names = TopicNames(settings.topic_prefix)
        ensure_topics(settings, self.catalog)
        self.index = LoadIndex(settings)
        self.rules = RowRules(settings, self.catalog)
        self.loader = f"{socket.gethostname()}:{os.getpid()}"

    def loaded(self, ref: ObjectRef) -> LoadRecord | None:
        """The object's committed record if it is loaded whole (from what this loader has read)."""
        record = self.index.get(ref.identity)
        return record if record is not None and record.done else None

    def load(self, target: str | ObjectRef, table: str | None = None, version: str = "", etag: str = "",
             progress: Callable[[LoadRecord], None] | None = None) -> LoadResult:
        """Load one object (a path, ``s3://bucket/key`` or a resolved ``ObjectRef``) once."""
        ref = target if isinstance(target, ObjectRef) else self.store.resolve(target, version, etag)
        source = self.options.source_for(ref.name, table)
        if source.table not in self.catalog.names:
            raise LoadError(f"{ref.url}: table {source.table!r} is not a table of the plant")
        try:  # loaded already? then no producer at all; a killed loader's open transaction may hold
            self.index.catch_up(idle_timeout=PRECHECK_WAIT_S)  # this read back: init_transactions ends it
        except LogReadError:
            pass
        done = self.loaded(ref)
        if done is not None:
            return LoadResult(done, already=True, resumed_at=done.chunks)
        tp = Tickerplant(self.settings, self.catalog, mode="batch", source=f"load:{ref.url}",
                         transactional_id=f"{self.settings.topic_prefix}tickplant-load-{ref.digest}",
                         transaction_timeout_ms=self.options.transaction_timeout_ms)
        letters = _ChunkLetters(tp.producer, self.names.deadletter, f"load:{ref.url}")
        tp.deadletters = letters  # type: ignore[assignment]  # refused rows go in the chunk's transaction
        try:
            # the lock on this object: fences any other loader of it, aborts its open transaction
            tp.producer.init_transactions(COMMIT_TIMEOUT_S)
            self.index.catch_up()  # now final for this object: nobody else can commit to it
            return self._load(tp, letters, ref, source, progress)
        except KafkaException as exc:
            raise LoadError(f"{ref.url}: {_why(exc)}") from None

    def _load(self, tp: Tickerplant, letters: _ChunkLetters, ref: ObjectRef, source: Any,
              progress: Callable[[LoadRecord], None] | None) -> LoadResult:
        now = time.time_ns()
        record = self.index.get(ref.identity) or LoadRecord(
            identity=ref.identity, url=ref.url, table=source.table, source=source.name, format=ref.format,
            size=ref.size, version=ref.version, etag=ref.etag, started_ns=now, chunk_rows=self.options.chunk_rows)
        result = LoadResult(record, already=record.done, resumed_at=record.chunks)
        if record.done:
            return result
        if record.table != source.table:
            raise LoadError(f"{ref.url}: half loaded into {record.table} ({record.chunks} chunks), but its source "
                            f"{source.name} now says table {source.table}; finish it with --table {record.table}")
        schema = self.catalog[source.table]
        reader = ObjectReader(ref, Converter(source, schema), self.rules, record.chunk_rows or self.options.chunk_rows)
        reader.skip = record.chunks
        handle = self.store.open_stream(ref) if ref.format == "csv" else self.store.open_file(ref)
        try:
            chunks = reader.csv_chunks(handle) if ref.format == "csv" else reader.parquet_chunks(handle)
            for chunk in chunks:
                if chunk.index < record.chunks:
                    continue  # committed by an earlier run
                published = self._commit_chunk(tp, letters, schema.name, chunk, record)
                result.published += published
                room = REJECTS_KEPT - len(result.rejected)
                if room > 0:
                    result.rejected += chunk.rejected[:room]
                if progress:
                    progress(record)
        finally:
            handle.close()
        record.checksum = reader.checksum or self.store.checksum(ref)
        record.state = DONE
        record.updated_ns = time.time_ns()
        tp.producer.begin_transaction()
        try:
            self._write(tp, record)
            tp.producer.commit_transaction(COMMIT_TIMEOUT_S)
        except BaseException:
            _abort(tp)
            raise
        self.index.records[ref.identity] = record
        return result

    def _commit_chunk(self, tp: Tickerplant, letters: _ChunkLetters, table: str, chunk: Any,
                      record: LoadRecord) -> int:
        """One chunk's rows, dead letters and the record counting them, in one transaction."""
        tp.producer.begin_transaction()
        try:
            before = letters.sent
            published = tp.publish_frame(table, chunk.rows) if chunk.rows.num_rows else 0
            tp.send_waiting()
            for bad in chunk.rejected:
                letters.send(table, bad.reason, bad.payload, bad.where)
            record.chunks = chunk.index + 1
            record.rows += published
            record.rejected += letters.sent - before
            record.updated_ns = time.time_ns()
            record.loader = self.loader
            self._write(tp, record)
            tp.producer.commit_transaction(COMMIT_TIMEOUT_S)
        except BaseException:
            _abort(tp)
            raise
        if tp.stats.errors:
            raise LoadError(f"{record.url}: chunk {chunk.index}: {tp.stats.errors[0]}")
        return published

    def _write(self, tp: Tickerplant, record: LoadRecord) -> None:
        tp.producer.produce(self.names.loads, key=record.identity.encode(), value=record.encode())


def _abort(tp: Tickerplant) -> None:
    try:
        tp.producer.abort_transaction(COMMIT_TIMEOUT_S)
    except KafkaException:
        pass  # fenced or the broker away: the transaction times out, or the next loader aborts it


def _why(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    if "fenced" in text.lower():
        return f"another loader took this object over ({text}); its load continues there"
    return text
