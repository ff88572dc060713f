"""The tickerplant: publishes rows to the log, in zero-latency or batch mode.

As kdb+tick's ``tick.q``: in zero-latency mode each row is sent at once as
its own message; in batch mode rows are gathered per (table, partition) and
every ``batch_interval_ms`` each group goes out as one block message (or
sooner when it reaches ``max_block_rows``, which no block exceeds). Either
way the producer is idempotent with acks=all and the partition is the sym's,
so per-sym order is the publish order. A row is acknowledged once ``flush()``
returns; rows the codec rejects go to the dead-letter topic with the reason,
never nowhere.

Rows are encoded many at a time (a publish call's rows in zero-latency mode,
``ENCODE_BATCH`` waiting rows in batch mode) by ``ingest.framing``'s
column-wise encoder, or row by row (``RecordCodec.record``: the compiled writer of
``ingest.rowcode``, fastavro for what it does not take) when it cannot take them.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, Producer

from ingest.deadletter import DeadLetters
from ingest.framing import FAST_MIN_ROWS, HEADER_LEN, RecordCodec, codec_for, encode_row, np
from ingest.publish_frames import publish_frame
from ingest.schema_topic import SchemaTopic
from ingest.schemas import SchemaCatalog, TableSchema
from ingest.topics import TopicNames, ensure_topics, partition_for
from tickplant import metrics
from tickplant.config import Settings

# Batch mode gathers a table's rows until this many are waiting (or the timer
# fires) and encodes them in one go, whatever the size of the publish calls:
# the column-wise encoder costs ~0.2 ms a call on top of its cost per row.
ENCODE_BATCH = 8192


class PublishError(RuntimeError):
    """Kafka did not acknowledge some rows; the message says how many and why."""


@dataclass
class PublishStats:
    """Counters the status line and feed reports read; updated from delivery reports."""

    delivered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: int = 0
    rejected: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def producer_config(settings: Settings, mode: str) -> dict[str, Any]:
    """The tickerplant producer's librdkafka settings for a publish mode."""
    batch = mode == "batch"
    return settings.kafka_config(**{
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5 if batch else settings.zero_linger_ms,
        # zero-latency: no Nagle delay on the producer's socket (a row is a few dozen bytes)
        "socket.nagle.disable": not batch,
        "compression.type": "lz4" if batch else "none",
        "batch.size": 4 * 1024 * 1024,
        "message.max.bytes": 8 * 1024 * 1024,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1024 * 1024,
    })


class _Block:
    """One partition's encoded rows waiting to go out as a block message."""

    __slots__ = ("chunks", "rows")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.rows = 0


class Tickerplant:
    def __init__(
        self,
        settings: Settings,
        catalog: SchemaCatalog | None = None,
        mode: str | None = None,
        source: str = "publisher",
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ):
        """``transactional_id``: a transactional producer (the batch loader's); its rows go out
        only inside the caller's transactions, so there is no batch timer: ``send_waiting``
        hands them to the producer before the caller commits."""
        self.settings = settings
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.mode = mode or settings.publish_mode
        if self.mode not in ("batch", "zero"):
            raise ValueError(f"mode must be 'batch' or 'zero', not {self.mode!r}")
        self.names = TopicNames(settings.topic_prefix)
        counts = ensure_topics(settings, self.catalog)
        self.partitions = {t.name: counts[self.names.table(t.name)] for t in self.catalog}
        SchemaTopic(settings).register(self.catalog)
        self.stats = PublishStats()
        self.deadletters = DeadLetters(settings, source)
        metrics.add_source(self.metric_samples)  # rows acknowledged, read at scrape time
        self.deadletters.expect(self.catalog.names)
        metrics.init_labels(metrics.PUBLISH_ERRORS, *({"role": "tickerplant", "table": t} for t in self.catalog.names))
        batch = self.mode == "batch"
        config = producer_config(settings, self.mode)
        if transactional_id:
            config.update({"transactional.id": transactional_id, "transaction.timeout.ms": transaction_timeout_ms})
        self.producer = Producer(config)
        self._topics = {t.name: self.names.table(t.name) for t in self.catalog}
        # (row header, block header) per table: our framing, or Confluent's with a registry
        self._headers = {t.name: (codec_for(t).row_header, codec_for(t).block_header) for t in self.catalog}
        if settings.schema_registry_url:
            from ingest.registry import Registry

            registry = Registry(settings.schema_registry_url)
            self._headers = {t.name: registry.headers(self._topics[t.name], t) for t in self.catalog}
        # per table: sym -> partition (batch) or sym -> (partition, key bytes) (zero)
        self._sym_cache: dict[str, dict[str, Any]] = defaultdict(dict)
        self._row_callback = {t.name: self._row_acker(t.name) for t in self.catalog}
        # batch mode: rows not yet encoded, per table (rows, their partitions), and
        # encoded rows per (table, partition) waiting for their block
        self._pending: dict[str, tuple[list[dict[str, Any]], list[int]]] = {}
        self._blocks: dict[tuple[str, int], _Block] = {}
        # one lock over gathering, encoding and producing: blocks of a partition
        # reach the producer in row order whichever thread (caller or timer) sends
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if batch and not transactional_id:
            self._timer = threading.Thread(target=self._tick, name="tp-batch-timer", daemon=True)
            self._timer.start()

    # -- publishing ---------------------------------------------------------

    def _partition(self, table: TableSchema, row: dict[str, Any]) -> int:
        sym = row.get("sym")
        if not isinstance(sym, str) or not sym:
            raise ValueError(f"{table.name} row has no sym (a non-empty string): {row!r}")
        return partition_for(sym, self.partitions[table.name])

    def _sym_info(self, table: str, rows: list[dict[str, Any]]) -> tuple[list[Any], int | None]:
        """Each row's partition (batch) or (partition, key) (zero), from a per-sym
        cache; and the index of the first row without a sym (None if all have one)."""
        cache = self._sym_cache[table]
        try:
            return [cache[row["sym"]] for row in rows], None
        except (KeyError, TypeError):  # a new sym, or a row without one: row by row
            pass
        parts = self.partitions[table]
        zero = self.mode == "zero"
        info: list[Any] = []
        for i, row in enumerate(rows):
            sym = row.get("sym")
            got = cache.get(sym) if type(sym) is str else None
            if got is None:
                if not isinstance(sym, str) or not sym:
                    return info, i
                part = partition_for(sym, parts)
                got = (part, sym.encode()) if zero else part
                if type(sym) is str:
                    cache[sym] = got
            info.append(got)
        return info, None

    def publish(self, table: str, row: dict[str, Any]) -> None:
        """Publish one row (kdb+'s ``.u.upd``)."""
        self.publish_rows(table, (row,))

    def publish_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        schema = self.catalog[table]
        rows = rows if isinstance(rows, list) else list(rows)
        info, bad = self._sym_info(table, rows)
        good = rows if bad is None else rows[:bad]
        if self.mode == "zero":
            if good:
                self._send_rows(schema, good, info)
            self.producer.poll(0)
        elif good:
            with self._lock:
                pending = self._pending.get(table)
                if pending is None:
                    pending = self._pending[table] = ([], [])
                pending[0].extend(good)
                pending[1].extend(info)
                if len(pending[0]) >= ENCODE_BATCH:
                    self._encode_pending(table)
        if bad is not None:
            raise ValueError(f"{table} row has no sym (a non-empty string): {rows[bad]!r}")

    def publish_frame(self, table: str, frame: Any) -> int:
        """Publish a frame's rows, columns at a time: a pandas or polars DataFrame, a pyarrow
        Table or RecordBatch, or a dict of numpy arrays or lists (ingest/publish_frames.py).
        Returns the rows published."""
        return publish_frame(self, table, frame)

    # -- zero-latency mode --------------------------------------------------

    def _send_rows(self, schema: TableSchema, rows: list[dict[str, Any]], info: list[Any]) -> None:
        codec = codec_for(schema)
        topic = self._topics[schema.name]
        callback = self._row_callback[schema.name]
        produce = self.producer.produce
        fast = codec.records(rows, prefix=self._headers[schema.name][0]) if len(rows) >= FAST_MIN_ROWS else None
        if fast is None:
            for row, (part, key) in zip(rows, info, strict=True):
                self._send_row(schema, part, row, key)
            return
        data = fast[0].tobytes()
        start = 0
        for end, (part, key) in zip(fast[1].tolist(), info, strict=True):
            value = data[start:end]
            start = end
            try:
                produce(topic, value, key, part, callback)
            except BufferError:
                self._produce(schema.name, part, key, value, 1)

    def _send_row(self, schema: TableSchema, part: int, row: dict[str, Any], key: bytes | None = None) -> None:
        try:
            value = encode_row(schema, row)
        except Exception as exc:  # fastavro: ValueError, TypeError, AttributeError...
            self._reject(schema, row, exc)
            return
        header = self._headers[schema.name][0]
        if not value.startswith(header):
            value = header + value[HEADER_LEN:]
        self._produce(schema.name, part, row["sym"].encode() if key is None else key, value, 1)

    # -- batch mode ---------------------------------------------------------

    def _encode_pending(self, table: str) -> None:
        """Encode a table's waiting rows into their partitions' blocks (under the lock)."""
        pending = self._pending.pop(table, None)
        if not pending or not pending[0]:
            return
        rows, parts = pending
        schema = self.catalog[table]
        codec = codec_for(schema)
        fast = None
        if np is not None and len(rows) >= FAST_MIN_ROWS:
            part_of = np.array(parts, np.intp)
            order = np.argsort(part_of, kind="stable")
            fast = codec.records(rows, order=order)
        if fast is None:
            self._encode_slow(schema, codec, rows, parts)
            return
        self._add_by_partition(schema, table, fast, part_of)

    def _add_by_partition(self, schema: TableSchema, table: str, fast: Any, part_of: Any) -> None:
        """Encoded records ordered by partition (``fast``: their bytes and each one's end)
        into each partition's block."""
        data, ends = fast
        counts = np.bincount(part_of, minlength=self.partitions[table]).tolist()
        first = 0
        for part, count in enumerate(counts):
            if not count:
                continue
            last = first + count
            b0 = int(ends[first - 1]) if first else 0
            self._add(schema, part, data[b0:int(ends[last - 1])].tobytes(), ends[first:last] - b0)
            first = last

    def _encode_slow(self, schema: TableSchema, codec: RecordCodec, rows: list[dict[str, Any]], parts: list[int]) -> None:
        """Row by row (``RecordCodec.record``): rows fastavro refuses go to the dead-letter topic."""
        outs: dict[int, tuple[list[bytes], list[int]]] = {}
        record = codec.record
        for row, part in zip(rows, parts, strict=True):
            try:
                data = record(row)
            except Exception as exc:  # fastavro: ValueError, TypeError, AttributeError...
                self._reject(schema, row, exc)
                continue
            got = outs.get(part)
            if got is None:
                got = outs[part] = ([], [])
            chunks, ends = got
            chunks.append(data)
            ends.append((ends[-1] if ends else 0) + len(data))
        for part, (chunks, ends) in outs.items():
            self._add(schema, part, b"".join(chunks), ends)

    def _add(self, schema: TableSchema, part: int, data: bytes, ends: Any) -> None:
        """Append encoded rows (``ends``: each one's end offset in ``data``) to the
        partition's block; send each block that reaches ``max_block_rows``."""
        key = (schema.name, part)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = _Block()
        cap = max(1, self.settings.max_block_rows)
        count = len(ends)
        start = taken = 0
        while block.rows + count - taken >= cap:
            take = cap - block.rows
            cut = int(ends[taken + take - 1])
            block.chunks.append(data[start:cut])
            self._send_block(schema, part, block.chunks, cap)
            block.chunks, block.rows = [], 0
            start, taken = cut, taken + take
        if taken < count:
            block.chunks.append(data[start:] if start else data)
            block.rows += count - taken

    def _send_block(self, schema: TableSchema, part: int, chunks: list[bytes], nrows: int) -> None:
        value = codec_for(schema).block(b"".join(chunks), nrows)
        header = self._headers[schema.name][1]
        if not value.startswith(header):
            value = header + value[HEADER_LEN:]
        self._produce(schema.name, part, None, value, nrows)

    def _produce(self, table: str, part: int, key: bytes | None, value: bytes, nrows: int) -> None:
        topic = self._topics[table]
        callback = self._row_callback[table] if nrows == 1 else partial(self._delivered, table, nrows)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=part, on_delivery=callback)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _row_acker(self, table: str) -> Any:
        """``_delivered`` for one-row messages, with less call overhead (one per row)."""
        delivered = self._delivered

        def acked(err: KafkaError | None, msg: Any) -> None:
            if err is None:
                stats = self.stats
                stats.delivered[table] += 1
                stats.messages += 1
            else:
                delivered(table, 1, err, msg)

        return acked

    def _delivered(self, table: str, nrows: int, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.stats.delivered[table] += nrows
            self.stats.messages += 1
        else:
            self.stats.failed += nrows
            metrics.PUBLISH_ERRORS.labels("tickerplant", table).inc(nrows)
            self.stats.errors.append(f"{table}: {nrows} rows not acknowledged: {err}")

    def metric_samples(self) -> Any:
        for table in self.catalog.names:
            yield f"{metrics.PREFIX}rows_published", {"role": "tickerplant", "table": table}, self.stats.delivered[table]
        yield f"{metrics.PREFIX}rows_rejected", {"role": "tickerplant"}, self.stats.rejected

    def _reject(self, schema: TableSchema, row: dict[str, Any], exc: Exception) -> None:
        self.stats.rejected += 1
        self.deadletters.send(schema.name, f"does not match schema {schema.name}: {exc}", row)

    # -- the batch timer ----------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            for table in list(self._pending):
                self._encode_pending(table)
            for (table, part), block in self._blocks.items():
                if block.rows:
                    self._send_block(self.catalog[table], part, block.chunks, block.rows)
                    block.chunks, block.rows = [], 0
        self.producer.poll(0)

    def send_waiting(self) -> None:
        """Hand every row still waiting for its block to the producer now."""
        self._drain()

    def _tick(self) -> None:
        interval = self.settings.batch_interval_ms / 1000.0
        while not self._stop.wait(interval):
            self._drain()

    # -- acknowledgement ----------------------------------------------------

    def flush(self, timeout: float = 60.0) -> None:
        """Send what is buffered and wait until Kafka acknowledged every row."""
        self._drain()
        deadline = time.monotonic() + timeout
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        self.deadletters.flush(timeout)
        if len(self.producer):
            raise PublishError(f"{len(self.producer)} messages not acknowledged after {timeout:.0f}s")
        if self.stats.errors:
            errors, self.stats.errors = self.stats.errors, []
            raise PublishError("; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))

    def close(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._timer:
            self._timer.join()
        self.flush(timeout)

    def __enter__(self) -> Tickerplant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
