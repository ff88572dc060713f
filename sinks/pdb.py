"""The PDB (kdb+'s persisting database): captures the day, writes it down at end of day.

A custom RDB that is not in the query path. One process, the consumer group
``<prefix>tickplant-pdb``, reads every table topic all day into an on-disk
cache (``sinks.spill``: memory stays bounded whatever the day's size) and,
once a day is closed and all of it captured, sorts it and writes its Parquet
partition (``sinks.writedown``) in a background thread while capture of the
new day goes on: end of day without downtime. Then it says so on the control
topic (``sinks.markers``); the RDBs drop the day and the HDB side sees it.

When a day is complete: the control topic's EOD marker gives each
partition's ``[start, end)`` and ``end`` is the fence's own offset; the day
is all captured when every partition of the table has read past its fence.
No timestamps are involved.

Late rows. The day a row belongs to is the one whose log range holds it
(``ingest.eod``): a row stamped 23:59:59.9 that reached the log after the
fence is in the next day's partition, and one stamped after midnight that
got in before the fence is in the closing day's. Nothing is dropped or moved;
a partition's manifest records its actual time range (``time_min`` and
``time_max`` may fall outside the date), so a query by time over a date
boundary should read the neighbouring date too.

Recovery. The cache's state and the group's assignment are all there is:
a restarted PDB (kill -9 included) resumes capture where its cache's
committed state ends, and redoes any write-down that had not published its
manifest (a write-down starts by clearing what a crashed one left). Days
already in the HDB (a manifest, or a "published" marker) are not redone. A
day whose start the log no longer held when capture began cannot be written
by the PDB: ``tickplant hdb backfill`` can, while the log retains it.

The log's archive. The PDB also runs the archiver (``sinks.archive``) in a
thread of its own: each closed day's messages, as the log held them, to
``archive_root``, so the day can be rebuilt after Kafka deleted it.

One PDB per plant is the design (a second instance in the group is a
standby that takes the partitions over if the first dies; it needs the same
cache directory to write down days the first had begun).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, TopicPartition

from ingest.control_follower import ControlFollower
from ingest.deadletter import DeadLetters
from ingest.eod import confirmed_fence_date
from ingest.framing import control_of
from ingest.intake import Intake
from ingest.logread import watermarks
from ingest.metadata import MetadataPublisher
from ingest.node_record import PdbRecord
from ingest.records import PublishedMarker
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, ensure_topics
from sinks.archive import ArchiveThread
from sinks.manifest import Manifest
from sinks.markers import MarkerPublisher
from sinks.spill import SpillCache, read_day
from sinks.store import HdbStore
from sinks.writedown import WriteOptions, write_partition
from tickplant import metrics
from tickplant.config import Settings
from tickplant.kafka.message import position

log = logging.getLogger("tickplant.pdb")

COMMIT_SECONDS = 0.5      # capture is made durable (and the group's offsets committed) this often
COMMIT_ROWS = 200_000     # ... or sooner, when this many rows are buffered
SCHEDULE_SECONDS = 0.25   # how often the control topic is read and closed days are looked at
ANNOUNCE_SECONDS = 2.0    # how often it tells the metadata topic where it runs and what it does
RETRY_SECONDS = 10.0      # after a failed write-down
FENCE_WAIT_SECONDS = 30.0  # a fence's marker not yet read, while the roll's transaction completes


def group_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}tickplant-pdb"


def cache_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve() / "pdb"


@dataclass
class _Job:
    table: str
    date: dt.date
    ranges: dict[int, tuple[int, int]]
    thread: threading.Thread | None = None
    manifest: Manifest | None = None
    marker: PublishedMarker | None = None
    error: BaseException | None = None
    started: float = field(default_factory=time.monotonic)


class Pdb:
    """One PDB process: capture loop in the caller's thread, write-downs in a background one."""

    def __init__(self, settings: Settings, node_id: str = "pdb-1", catalog: SchemaCatalog | None = None,
                 options: WriteOptions | None = None):
        self.settings = settings
        self.node_id = node_id
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.names = TopicNames(settings.topic_prefix)
        self.topics = {self.names.table(t.name): t.name for t in self.catalog}
        self.options = options or WriteOptions.of(settings)
        self.dir = cache_dir(settings)
        self.cache = SpillCache(self.dir / "cache", self.catalog)
        self.store = HdbStore.from_settings(settings)
        self.memory_bytes = settings.pdb_memory_mb << 20
        self.decoder = make_decoder(settings, self.catalog)
        self.intake = Intake(settings, self.catalog, self.decoder, DeadLetters(settings, f"pdb:{node_id}"),
                             seq=True)  # the HDB's files keep each row's place in the log: ingest.seq
        self.markers = MarkerPublisher(settings)
        self.control: ControlFollower | None = None
        self.consumer: Consumer | None = None
        self.done: set[tuple[str, dt.date]] = set()
        self.queue: list[tuple[str, dt.date]] = []
        self.job: _Job | None = None
        self.failed: dict[tuple[str, dt.date], tuple[float, str]] = {}
        self.published: list[PublishedMarker] = []
        self.rows_captured = 0
        self.messages = 0
        self._warned: set[tuple[str, dt.date]] = set()
        self._hdb_dates: dict[str, set[dt.date]] = {}
        self.ready = threading.Event()
        # the log's archive (sinks.archive): its own thread and reader of the log, so that a slow
        # archive store never holds capture or the write-down back
        self.archive = ArchiveThread.for_settings(settings, self.catalog, f"pdb:{node_id}")
        # metrics (tickplant/metrics.py): rows counted per message (a block is many), write-downs
        # timed, the lag read at scrape time
        self._rows_in = {t: metrics.ROWS_IN.labels("pdb", t) for t in self.catalog.names}
        self.log_ends = metrics.LogEnds()  # noted by the capture loop, read by a scrape
        for table in self.catalog.names:
            metrics.init_labels(metrics.WRITEDOWNS, {"table": table, "outcome": "ok"},
                                {"table": table, "outcome": "failed"})
        metrics.add_source(self.metric_samples)

    def metric_samples(self) -> Any:
        """The capture's lag per table partition and what the intake refused, at scrape time."""
        positions = {(t, self.names.table(t), p): s.next for (t, p), s in list(self.cache.parts.items())
                     if s.next is not None}
        yield from self.log_ends.lag("pdb", positions)
        yield f"{metrics.PREFIX}refused_messages", {"role": "pdb"}, self.intake.refused_messages

    # -- the loop ----------------------------------------------------------------

    def run(self, stop: threading.Event, stop_timeout: float = 60.0) -> None:
        """Capture and write down until ``stop`` is set; on the way out, commit what was captured."""
        ensure_topics(self.settings, self.catalog)
        self.control = ControlFollower(self.settings)
        self.control.poll(until_end=True)
        if self.archive is not None:
            self.archive.start()
        self.consumer = Consumer(self.settings.kafka_config(**{
            "group.id": group_id(self.settings),
            "group.instance.id": f"{self.settings.topic_prefix}{self.node_id}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 100,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }))
        self.consumer.subscribe(sorted(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        announcer = MetadataPublisher(self.settings, self.node_id)
        last_commit = last_schedule = last_announce = time.monotonic()
        try:
            while not stop.is_set():
                for msg in self.consumer.consume(5000, timeout=0.05):
                    self._handle(msg)
                self.log_ends.note(self.consumer, self._capturing)
                now = time.monotonic()
                if now - last_commit >= COMMIT_SECONDS or self.cache.pending() >= COMMIT_ROWS:
                    self._commit()
                    last_commit = now
                if now - last_schedule >= SCHEDULE_SECONDS:
                    self.control.poll()
                    self._reap()
                    self._schedule()
                    last_schedule = now
                if now - last_announce >= ANNOUNCE_SECONDS:
                    self._announce(announcer)
                    last_announce = now
        finally:
            self._shutdown(stop_timeout)
            try:
                announcer.goodbye()
            except Exception:  # noqa: BLE001 - the broker away: the record goes stale by itself
                pass

    def _capturing(self) -> list[tuple[str, int]]:
        return [(self.names.table(t), p) for t, p in list(self.cache.parts)]

    def _announce(self, announcer: MetadataPublisher) -> None:
        """Where this PDB runs and what it does, for ``tickplant status`` (never stops the PDB)."""
        try:
            announcer.publish(PdbRecord(
                node=self.node_id, host=self.settings.advertised_host, pid=os.getpid(),
                partitions=tuple(sorted(f"{t}[{p}]" for t, p in self.cache.parts)),
                # the next offset it captures, per table partition: its lag in status
                next={f"{t}[{p}]": s.next or 0 for (t, p), s in list(self.cache.parts.items())},
                rows_captured=self.rows_captured,
                writing=f"{self.job.table} {self.job.date}" if self.job else None,
                queued=len(self.queue)))
        except Exception as exc:  # noqa: BLE001 - the broker away: announce again next time
            log.warning("could not announce the PDB: %s", exc)

    def _shutdown(self, stop_timeout: float) -> None:
        try:
            self.cache.commit()  # what was captured is durable before anything else
            job = self.job
            if job is not None and job.thread is not None and job.thread.is_alive():
                log.info("waiting for the write-down of %s %s", job.table, job.date)
                job.thread.join(stop_timeout)
                if job.thread.is_alive():
                    log.warning("write-down of %s %s unfinished: it is redone at the next start",
                                job.table, job.date)
            self._reap()
        finally:
            if self.archive is not None:
                self.archive.stop()
            self.cache.close()
            if self.consumer is not None:
                self.consumer.close()
            if self.control is not None:
                self.control.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            table = self.topics[tp.topic]
            resume = self.cache.position(table, tp.partition)
            if resume is None:
                resume = self._initial_offset(table, tp.partition)
            low, _ = watermarks(consumer, tp.topic, tp.partition)
            self.cache.start(table, tp.partition, max(resume, low))
            tp.offset = max(resume, low)
        self.cache.commit()
        consumer.assign(partitions)
        self.ready.set()
        log.info("capturing %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.cache.commit()

    def _initial_offset(self, table: str, partition: int) -> int:
        """Where a partition never captured before starts: the first day the HDB lacks."""
        assert self.control is not None
        state = self.control.state
        have = state.published.get(table, set()) | self._hdb(table)
        starts = [
            ranges[table][partition][0] for date, ranges in state.closed.items()
            if date not in have and partition in ranges.get(table, {})
        ]
        if state.open_date is not None:
            starts.append(state.start_of_open_day(table, partition))
        return min(starts) if starts else 0

    def _hdb(self, table: str) -> set[dt.date]:
        if table not in self._hdb_dates:
            self._hdb_dates[table] = set(self.store.dates(table))
        return self._hdb_dates[table]

    def _handle(self, msg: Any) -> None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                # e.g. fenced by a newer member with our static id after the broker came back:
                # this consumer can never recover; exit so the supervisor starts a fresh one
                # (capture resumes from the spilled state, nothing is lost or doubled).
                raise RuntimeError(f"the PDB's consumer failed for good: {err}")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consuming %s: %s", msg.topic(), err)
            return
        topic, part, offset = position(msg)
        table = self.topics.get(topic)
        if table is None:
            return
        captured_to = self.cache.position(table, part)
        if captured_to is None or offset < captured_to:
            return  # already captured (redelivered after a rebalance)
        self.messages += 1
        assert self.control is not None
        if control_of(msg.headers()):
            self.cache.fence(table, part, offset)
            # the day the rows after it belong to (the intake's checks): the marker committed with it
            _, state = confirmed_fence_date(self.settings, self.control.state, table, part, offset, FENCE_WAIT_SECONDS)
            if len(state.markers) > len(self.control.state.markers):
                self.control.state = state  # the follower applies the later markers to it (each idempotent)
            return
        # a block comes as Arrow columns (ingest.blocks), anything else as row dicts
        rows = self.intake.arrow(table, part, offset, msg.value(), self.control.state.date_of(table, part, offset))
        if self.intake.pending:
            self.intake.flush()  # before the cache's next commit moves past the message
        count = rows.num_rows if isinstance(rows, pa.Table) else len(rows)
        if not count:
            self.cache.skip(table, part, offset)
            return
        self.cache.append(table, part, offset, rows)
        self.rows_captured += count
        self._rows_in[table].inc(count)

    def _commit(self) -> None:
        self.cache.commit()
        if self.consumer is None:
            return
        offsets = [
            TopicPartition(self.names.table(t), p, s.next)
            for (t, p), s in self.cache.parts.items() if s.next is not None
        ]
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            except Exception as exc:  # noqa: BLE001 - the group's offsets are for monitoring only
                log.debug("offset commit: %s", exc)

    # -- end of day --------------------------------------------------------------

    def _schedule(self) -> None:
        assert self.control is not None
        state = self.control.state
        for date in sorted(state.closed):
            for table in self.catalog.names:
                key = (table, date)
                if key in self.done or key in self.queue or (self.job and (self.job.table, self.job.date) == key):
                    continue
                ranges = state.closed[date].get(table)
                if ranges is None:
                    self.done.add(key)
                    continue
                if date in state.published.get(table, set()):
                    self.cache.drop_day(table, ranges)
                    self.done.add(key)
                    continue
                failed = self.failed.get(key)
                if failed and time.monotonic() - failed[0] < RETRY_SECONDS:
                    continue
                if self.cache.missing(table, ranges):
                    if self.cache.lost(table, ranges) and key not in self._warned:
                        self._warned.add(key)
                        log.warning("%s %s: capture began after the day's start; "
                                    "'tickplant hdb backfill --table %s --date %s' can write it", table, date,
                                    table, date)
                    continue
                self.queue.append(key)
        if self.job is None and self.queue:
            table, date = self.queue.pop(0)
            ranges = state.closed[date][table]
            job = _Job(table, date, ranges)
            files = self.cache.day_files(table, ranges)
            job.thread = threading.Thread(target=self._write, args=(job, files), name=f"pdb-write-{table}-{date}",
                                          daemon=True)
            self.job = job
            job.thread.start()

    def _write(self, job: _Job, files: list) -> None:
        """In the background thread: write the partition (unless it is there) and say so."""
        try:
            started = time.monotonic()
            manifest = self.store.manifest(job.table, job.date)
            if manifest is None:
                manifest = write_partition(
                    self.store, self.catalog[job.table], job.date, read_day(files), job.ranges,
                    memory_bytes=self.memory_bytes, tmp_dir=self.dir, written_by="pdb", options=self.options,
                )
                log.info("%s %s: %s rows in %d file(s), %.1f MB, written in %.2f s", job.table, job.date,
                         f"{manifest.rows:,}", len(manifest.files), manifest.bytes / 1e6,
                         time.monotonic() - started)
            else:
                problems = self.store.verify(manifest)
                if problems:
                    raise RuntimeError(f"{job.table} {job.date} is published but damaged ({'; '.join(problems)}); "
                                       f"'tickplant hdb backfill --force' rewrites it")
            job.manifest = manifest
            job.marker = self.markers.publish(manifest, self.store.display_root)
            metrics.WRITEDOWN_SECONDS.labels(job.table).observe(time.monotonic() - started)
        except BaseException as exc:  # noqa: BLE001 - reported by _reap, retried later
            job.error = exc

    def _reap(self) -> None:
        job = self.job
        if job is None or (job.thread is not None and job.thread.is_alive()):
            return
        self.job = None
        key = (job.table, job.date)
        outcome = "failed" if job.error is not None else "ok"
        metrics.WRITEDOWNS.labels(job.table, outcome).inc()
        if job.error is not None:
            self.failed[key] = (time.monotonic(), str(job.error))
            log.error("write-down of %s %s failed (retried in %.0f s): %s", job.table, job.date,
                      RETRY_SECONDS, job.error)
            return
        self.failed.pop(key, None)
        self.done.add(key)
        if job.manifest is not None:
            metrics.ROWS_OUT.labels("pdb", job.table).inc(job.manifest.rows)
        self._hdb(job.table).add(job.date)
        if job.marker is not None:
            self.published.append(job.marker)
        self.cache.drop_day(job.table, job.ranges)

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "rows_captured": self.rows_captured,
            "messages": self.messages,
            "refused": {"messages": self.intake.refused_messages, "rows": self.intake.refused_rows},
            "partitions": {f"{t}[{p}]": {"since": s.since, "next": s.next, "segments": len(s.segments)}
                           for (t, p), s in sorted(self.cache.parts.items())},
            "writing": f"{self.job.table} {self.job.date}" if self.job else None,
            "queued": [f"{t} {d}" for t, d in self.queue],
            "failed": {f"{t} {d}": e for (t, d), (_, e) in self.failed.items()},
            "published": [f"{m.table} {m.date}" for m in self.published],
        }


def run_pdb(settings: Settings, node_id: str = "pdb-1", stop: threading.Event | None = None) -> None:
    """Run the PDB in the foreground until SIGTERM/SIGINT (``tickplant pdb run``)."""
    import signal

    stop = stop or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        Pdb(settings, node_id).run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
