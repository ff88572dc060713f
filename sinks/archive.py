"""The tickerplant log archived beyond Kafka's retention: each closed day, exactly as the log held it.

kdb+ keeps each day's TP log file (and archives it to S3); here the log is
Kafka, which deletes a day after ``retention_hours``. So at each end of day,
every table's closed day (each partition's ``[start, end)`` from the EOD
marker) is read back from the log (read_committed, as every reader sees it)
and written to ``<archive_root>/<table>/date=YYYY-MM-DD/``:

- ``p000-00000.avro``, ``p000-00001.avro``, ``p001-00000.avro``... Avro object
  container files (deflate: the codec every Avro implementation reads), one
  record per message: partition, offset, timestamp and its type, key, value
  and headers, the value byte for byte (fences included), so the log can be
  reproduced exactly and replayed (``sinks.archive_read``). A partition's day
  goes to a new file every ``ARCHIVE_FILE_BYTES`` of message bytes. The sync
  marker is derived from the file's place, so the bytes depend only on the log:
  a rerun writes the same files, checksum for checksum;
- ``_manifest.json`` (``sinks.archive_manifest``) last, atomically: per
  partition the first and last offset, the message count and each file's
  SHA-256; the writer schemas by fingerprint. A day without one is unfinished
  and is written again from the start; a day with one is never rewritten.

Whoever archives a day writes the same bytes at the same paths (a temporary
file renamed into place on a disk, one PUT on S3), so a restarted archiver,
or two at once, never leave two copies or a mix. The PDB runs an archiver in
a thread of its own (``ArchiveThread``); ``tickplant archive run`` runs one
alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ingest.control_follower import ControlFollower
from ingest.framing import BLOCK_MAGIC, HEADER_LEN, ROW_MAGIC
from ingest.logread import make_consumer, read_ranges
from ingest.replay import unretained
from ingest.schema_topic import SchemaTopic
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from sinks.archive_avro import ContainerWriter, encode_message
from sinks.archive_manifest import (
    ArchiveFile,
    ArchiveManifest,
    PartitionArchive,
)
from sinks.archive_store import ArchiveError, ArchiveStore, FileOut, archive_root
from sinks.writedown import FAILPOINT_ENV
from tickplant.config import Settings
from tickplant.kafka.message import position

log = logging.getLogger("tickplant.archive")

# message bytes a file holds before the partition's next one (a reader holds a file whole to check it)
ARCHIVE_FILE_BYTES = 64 << 20
SYNC_INTERVAL = 1 << 20  # bytes of records per Avro block
# deflate: the codec every Avro implementation reads; level 1 compressed a day of quote blocks
# 2.5x, a tenth larger than the default level 6 at a third of its CPU
DEFLATE_LEVEL = 1
SCHEDULE_SECONDS = 1.0  # how often the control topic is looked at for newly closed days
RETRY_SECONDS = 10.0  # after a failed day

class LogGoneError(ArchiveError):
    """Kafka no longer holds all of a day: it cannot be archived (any more)."""


class ArchiveStopped(ArchiveError):
    """The archiver was asked to stop mid-day: the day has no manifest and is written again later."""


def _failpoint(table: str, partition: int) -> None:
    """Tests only: ``TICKPLANT_FAILPOINT=archive-mid-file:<table>:<partition>`` stops the archiver
    half-way through a partition's first file, for a kill -9."""
    if os.environ.get(FAILPOINT_ENV) == f"archive-mid-file:{table}:{partition}":
        log.warning("failpoint %s reached: waiting to be killed", os.environ[FAILPOINT_ENV])
        while True:
            time.sleep(3600)


@dataclass
class _Chunk:
    """The file being written: consecutive messages of one partition."""

    name: str
    out: FileOut
    writer: ContainerWriter
    first_offset: int
    last_offset: int
    messages: int = 0
    message_bytes: int = 0


class DayArchiver:
    """Writes closed days of the log into the archive (each day idempotently)."""

    def __init__(self, settings: Settings, store: ArchiveStore | None = None, written_by: str = "archiver",
                 file_bytes: int = ARCHIVE_FILE_BYTES, stopping: threading.Event | None = None):
        self.settings = settings
        self.stopping = stopping or threading.Event()
        self.store = store or ArchiveStore.from_settings(settings)
        self.names = TopicNames(settings.topic_prefix)
        self.written_by = written_by
        self.file_bytes = file_bytes
        self.schema_topic = SchemaTopic(settings)
        self._open_chunk: _Chunk | None = None

    def archive_day(self, table: str, date: dt.date, ranges: dict[int, tuple[int, int]]) -> tuple[ArchiveManifest, bool]:
        """Archive ``table``'s day (its EOD ranges); (manifest, written): written is False when the
        day was archived already."""
        existing = self.store.manifest(table, date)
        if existing is not None:
            return existing, False
        self._check_retained(table, date, ranges)
        topic = self.names.table(table)
        consumer = make_consumer(self.settings)
        try:
            partitions = {p: PartitionArchive(start, end) for p, (start, end) in sorted(ranges.items())}
            fingerprints: set[bytes] = set()
            registry_ids: set[int] = set()
            for part, (start, end) in sorted(ranges.items()):
                self._archive_partition(consumer, table, date, part, start, end, partitions[part],
                                        fingerprints, registry_ids)
        finally:
            consumer.close()
        # retention may have begun on the day while it was read (a reader sent past deleted
        # offsets skips to the log's start): then what was read is not the whole day
        self._check_retained(table, date, ranges)
        manifest = ArchiveManifest(
            table=table, topic=topic, date=date, partitions=partitions,
            schemas=self._schemas(fingerprints), registry_schemas=self._registry_schemas(registry_ids),
            written_by=self.written_by, written_at=time.time_ns(),
        )
        self.store.put_manifest(manifest)
        self.store.remove_strays(manifest)
        return manifest, True

    def _check_retained(self, table: str, date: dt.date, ranges: dict[int, tuple[int, int]]) -> None:
        gone = unretained(self.settings, table, ranges)
        if gone is not None:
            part, low, start = gone
            raise LogGoneError(f"the log no longer holds all of {table} {date}: partition {part} starts at "
                               f"offset {low}, the day at {start}; it cannot be archived")

    def _archive_partition(self, consumer: Any, table: str, date: dt.date, part: int, start: int, end: int,
                           into: PartitionArchive, fingerprints: set[bytes], registry_ids: set[int]) -> None:
        chunk: _Chunk | None = None
        try:
            chunk = self._copy_partition(consumer, table, date, part, start, end, into, fingerprints, registry_ids)
        except BaseException:
            if self._open_chunk is not None:
                self._open_chunk.out.discard()
            raise
        finally:
            self._open_chunk = None
        if chunk is not None:
            self._close(chunk, into)

    def _copy_partition(self, consumer: Any, table: str, date: dt.date, part: int, start: int, end: int,
                        into: PartitionArchive, fingerprints: set[bytes], registry_ids: set[int]) -> _Chunk | None:
        """Every message of the range into files; returns the last file, still open."""
        chunk: _Chunk | None = None
        for msg in read_ranges(consumer, self.names.table(table), {part: (start, end)}):
            if self.stopping.is_set():
                raise ArchiveStopped(f"stopped while archiving {table} {date}")
            value = msg.value()
            _, _, offset = position(msg)
            if chunk is not None and chunk.message_bytes >= self.file_bytes:
                self._close(chunk, into)
                chunk = None
            if chunk is None:
                chunk = self._open_chunk = self._open(table, date, part, len(into.files), offset)
            kind, ts = msg.timestamp()
            headers = msg.headers()
            pairs = [(k, v if v is None else bytes(v, "utf-8") if isinstance(v, str) else v)
                     for k, v in (headers.items() if isinstance(headers, dict) else headers or [])]
            chunk.writer.append(encode_message(part, offset, ts, kind, msg.key(), value, pairs or None))
            chunk.message_bytes += len(value or b"") + len(msg.key() or b"")
            chunk.messages += 1
            chunk.last_offset = offset
            into.messages += 1
            into.first_offset = offset if into.first_offset is None else into.first_offset
            into.last_offset = offset
            if value and value[:2] in (ROW_MAGIC, BLOCK_MAGIC) and len(value) >= HEADER_LEN:
                fingerprints.add(value[2:HEADER_LEN])
            elif value and value[:1] == b"\x00" and len(value) >= 5:
                registry_ids.add(int.from_bytes(value[1:5], "big"))
            if chunk.messages == 1 and not into.files:
                chunk.writer.flush()
                _failpoint(table, part)
        return chunk

    def _open(self, table: str, date: dt.date, part: int, index: int, first_offset: int) -> _Chunk:
        name = f"p{part:03d}-{index:05d}.avro"
        out = self.store.open_file(table, date, name)
        # the sync marker from the file's place: the same log gives the same bytes
        marker = hashlib.sha256(f"{self.names.table(table)}|{date}|{name}".encode()).digest()[:16]
        writer = ContainerWriter(out, {"tickplant.table": table, "tickplant.date": date.isoformat(),
                                       "tickplant.partition": str(part)}, marker, DEFLATE_LEVEL, SYNC_INTERVAL)
        return _Chunk(name, out, writer, first_offset, first_offset)

    def _close(self, chunk: _Chunk, into: PartitionArchive) -> None:
        chunk.writer.flush()
        chunk.out.close()
        into.files.append(ArchiveFile(chunk.name, chunk.messages, chunk.out.size, chunk.out.sha.hexdigest(),
                                      chunk.first_offset, chunk.last_offset))

    def _schemas(self, fingerprints: set[bytes]) -> dict[str, dict[str, Any]]:
        """The writer schemas the day's messages name (a fingerprint nobody registered, a corrupt
        message's, is left out: every reader refuses that message, from the log or the archive)."""
        out = {}
        for fp in sorted(fingerprints):
            avro = self.schema_topic.lookup(fp)
            if avro is not None:
                out[fp.hex()] = avro
        return out

    def _registry_schemas(self, ids: set[int]) -> dict[int, dict[str, Any]]:
        if not ids or not self.settings.schema_registry_url:
            return {}
        from ingest.registry import Registry, RegistryError

        registry = Registry(self.settings.schema_registry_url)
        out = {}
        for schema_id in sorted(ids):
            try:
                avro, block = registry.writer(schema_id)
            except RegistryError:
                continue
            out[schema_id] = {"schema": avro, "block": block}
        return out


class ArchiveThread(threading.Thread):
    """Archives every closed day of every table as the control topic closes them, in the
    background (the PDB runs one; ``tickplant archive run`` runs one in the foreground).

    At start it finishes whatever days were closed and not archived (an archiver killed mid-day
    wrote no manifest, so the day is written again); a day the log no longer holds whole is
    reported once and left.
    """

    def __init__(self, settings: Settings, catalog: SchemaCatalog, written_by: str = "archiver",
                 store: ArchiveStore | None = None):
        super().__init__(name="tp-archive", daemon=True)
        self.settings = settings
        self.catalog = catalog
        self.stopping = threading.Event()
        self.archiver = DayArchiver(settings, store, written_by, stopping=self.stopping)
        self.done: set[tuple[str, dt.date]] = set()
        self.failed: dict[tuple[str, dt.date], tuple[float, str]] = {}
        self.archived: list[ArchiveManifest] = []

    @classmethod
    def for_settings(cls, settings: Settings, catalog: SchemaCatalog, written_by: str) -> ArchiveThread | None:
        """An archiver, or None when the archive is off."""
        return cls(settings, catalog, written_by) if archive_root(settings) is not None else None

    def run(self) -> None:
        control: ControlFollower | None = None
        while not self.stopping.is_set():
            try:
                if control is None:
                    control = ControlFollower(self.settings)
                    control.poll(until_end=True)
                else:
                    control.poll()
                self.archive_closed(control.state.closed)
            except Exception as exc:  # noqa: BLE001 - the broker or the store away: again later
                log.warning("archiver: %s; again in %.0f s", exc, RETRY_SECONDS)
                self.stopping.wait(RETRY_SECONDS)
            self.stopping.wait(SCHEDULE_SECONDS)
        if control is not None:
            control.close()

    def archive_closed(self, closed: dict[dt.date, dict[str, dict[int, tuple[int, int]]]]) -> None:
        """Archive each closed day of each table not archived yet, oldest first."""
        for date in sorted(closed):
            for table in self.catalog.names:
                key = (table, date)
                ranges = closed[date].get(table)
                if key in self.done or ranges is None or self.stopping.is_set():
                    continue
                failed = self.failed.get(key)
                if failed and time.monotonic() - failed[0] < RETRY_SECONDS:
                    continue
                started = time.monotonic()
                try:
                    manifest, written = self.archiver.archive_day(table, date, ranges)
                except ArchiveStopped:
                    return
                except LogGoneError as exc:  # the log lost the day: said once, not retried
                    log.error("%s", exc)
                    self.done.add(key)
                    continue
                except Exception as exc:  # noqa: BLE001 - retried later
                    self.failed[key] = (time.monotonic(), str(exc))
                    log.error("archiving %s %s failed (retried in %.0f s): %s", table, date, RETRY_SECONDS, exc)
                    continue
                self.failed.pop(key, None)
                self.done.add(key)
                if written:
                    self.archived.append(manifest)
                    log.info("%s %s archived: %s messages in %d file(s), %.1f MB, in %.2f s", table, date,
                             f"{manifest.messages:,}", len(manifest.files), manifest.bytes / 1e6,
                             time.monotonic() - started)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)
