"""The real-time database: Faust workers that keep today's ticks in RocksDB shards.

The workers form the Faust consumer group ``<prefix>tickplant-rdb`` on a
membership topic (``_tp.rdb.assignment``, as many partitions as each table
topic, never written to): Faust assigns its partitions, rebalances them as
workers come and go, and partition p of it stands for partition p of every
table. A partition is a set of syms (key = sym), so N workers are N sym
shards. The rows themselves are read by a plain consumer thread, assigned
those table partitions from each shard's offset: a Faust event per Kafka
message would cap a worker at a few thousand messages a second, which
zero-latency mode (a message per row) exceeds. Faust keeps the group, the
rebalances, the web views and the timers.

Each run of messages of one partition is decoded and applied with its last
offset to the partition's shard in one RocksDB write: a message read again
after a crash or a rebalance is skipped, so state is exactly-once. A revoked
partition is dropped by the reader before the rebalance completes.

Shards live under ``<data_dir>/rdb/<table>/p<partition>``, shared by the
workers of one machine: a partition handed to another local worker is opened
where it is, with no replay. A restarted worker serves at once and catches up
from its shards' offsets: time to serving does not grow with the day.

Replicas (hot-hot): ``--replica NAME`` (default ``a``) puts a worker in that
replica's group (``<prefix>tickplant-rdb-<name>``; the default keeps
``<prefix>tickplant-rdb``), its shards under ``<data_dir>/rdb/<name>/...``
(the default replica keeps the paths above). Each replica reads every table
partition itself: a full, independent copy. Workers forward only to peers of
their replica; the metadata record says the replica and the load (queries in
flight), for the gateway to pick and fail over.

Latency: small runs (zero-latency mode) go to the shard's in-memory tail,
queryable at once and written to RocksDB every 200 ms (streams/shard.py); the
worker times each stage of publish -> visible (``stages_ms`` in the status).

End of day: a fence in a partition closes that partition's day (confirmed by
the committed marker on the control topic); rows after it go to the new day.
The closed day stays queryable until the control topic says the HDB has
published it, then it is dropped.

Views (each worker, ``http://<node_host>:<port>``, announced at ``advertise_host``):
  GET /rdb/v1/{table}/rows?syms=A,B&start=NS&end=NS&columns=c1,c2&date=YYYY-MM-DD
      -> Arrow IPC stream (``format=json`` for JSON rows)
  GET /rdb/v1/{table}/last?syms=...   -> the latest row per sym (Arrow IPC or JSON)
  GET /rdb/v1/{table}/count?syms=...  -> {"counts": {sym: rows}}
  GET /rdb/v1/status                  -> what this worker holds
Requests for syms another worker owns are forwarded to it (metadata topic).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import numpy as np
import pyarrow as pa
from confluent_kafka import KafkaException, TopicPartition
from faust.types import TP
from faust.web import View

from ingest.deadletter import DeadLetters
from ingest.eod import confirmed_fence_date, read_day_state
from ingest.framing import control_of
from ingest.gather import Gathered
from ingest.intake import Intake
from ingest.logread import make_tail_consumer
from ingest.metadata import MetadataPublisher, read_metadata
from ingest.node_record import NODE_VERSION, NodeRecord, RdbRecord, TableHeld, node_from_fields
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_for
from streams.client import MISDIRECTED
from streams.group import membership_app, run_worker_app
from streams.observed import Timed, add_metrics_page, rdb_samples
from streams.partial import run_partial
from streams.query import QueryError, RowsQuery, counts, read_last, read_rows, to_ipc
from streams.shard import Resources, Shard, ShardError
from tickplant import internal, metrics
from tickplant.config import Settings
from tickplant.ec2 import instance_id
from tickplant.metrics import rss_bytes  # noqa: F401 - the status's and the CEP's RSS figure
from tickplant.observe import observe_role

log = logging.getLogger("tickplant.rdb")
FENCE_WAIT_SECONDS = 30.0
# one read of the reader thread: at most this many messages or bytes (a block is
# thousands of rows; decoded rows are Python objects until they are Arrow)
READ_MESSAGES = 10_000
READ_BYTES = 4 << 20
GIL_SWITCH_SECONDS = 0.0005
OFF_LOOP_ROWS = 20_000  # answers bigger than this are serialised on the executor
LOCK_TRY_SECONDS = 1.0  # an assigned shard's lock held by another process: waited for this long at the rebalance,
LOCK_RETRY_SECONDS = 0.5  # then tried again this often by the reader
CATCH_UP_CHECK_SECONDS = 0.2  # how often the reader looks whether newly assigned shards have caught up


DEFAULT_REPLICA = "a"
_REPLICA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class NotHeld(RuntimeError):
    """Asked for partitions this worker does not hold (any more): 421 Misdirected Request;
    the gateway routes again once the metadata says who holds them."""


def check_replica(name: str, tables: Iterable[str] = ()) -> str:
    """A replica name: lowercase letters, digits, ``-``/``_``; not a table's name nor
    ``workers`` (both are directories beside the replicas' under ``<data_dir>/rdb``)."""
    if not _REPLICA_NAME.fullmatch(name):
        raise ValueError(f"replica name {name!r}: use 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit")
    if name != DEFAULT_REPLICA and (name == "workers" or name in set(tables)):
        raise ValueError(f"replica name {name!r} is taken (a table or the workers' directory under rdb/)")
    return name


def group_id(settings: Settings, replica: str = DEFAULT_REPLICA) -> str:
    """The replica's consumer group: replicas read the same topics as independent copies."""
    base = f"{settings.topic_prefix}tickplant-rdb"
    return base if replica == DEFAULT_REPLICA else f"{base}-{replica}"


def replica_dir(settings: Settings, replica: str = DEFAULT_REPLICA) -> Path:
    """Where a replica's shards live: ``<data_dir>/rdb`` for the default one (the layout
    before replicas existed, so its shards stay where they are), ``<data_dir>/rdb/<name>``."""
    root = Path(settings.data_dir).resolve() / "rdb"
    return root if replica == DEFAULT_REPLICA else root / replica


def shard_path(settings: Settings, table: str, partition: int, replica: str = DEFAULT_REPLICA) -> Path:
    return replica_dir(settings, replica) / table / f"p{partition:03d}"


def sched_ns(thread_id: int | None = None) -> dict[str, int]:
    """CPU time and time spent runnable but waiting for a CPU (ns), of a thread or the
    process (Linux schedstat): the evidence of CPU contention behind a latency tail."""
    tasks = Path("/proc/self/task")
    ids = [str(thread_id)] if thread_id else [t.name for t in tasks.iterdir()] if tasks.exists() else []
    cpu = wait = 0
    for tid in ids:
        try:
            run, queued, _ = (tasks / tid / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        cpu += int(run)
        wait += int(queued)
    return {"cpu": cpu, "runqueue_wait": wait, "at": time.time_ns()}


class LatencySample:
    """The latest ``size`` latencies (ns), as ms percentiles: a ring buffer, so adding a
    run's rows is one numpy copy and the window holds every row of a benchmark.

    Meaningful when rows are stamped with the wall clock at publish (the
    synthetic feed on the system clock): then it is publish -> queryable.
    """

    def __init__(self, size: int = 4096, scale: float = 1e6):
        self.values = np.zeros(size, np.int64)
        self.size = size
        self.scale = scale  # ns -> ms by default; 1 for counts
        self.count = 0  # ever added; the buffer holds the last min(count, size)

    def add(self, ns: int | np.ndarray) -> None:
        values = np.atleast_1d(np.asarray(ns, np.int64))[-self.size:]
        start = self.count % self.size
        first = min(len(values), self.size - start)
        self.values[start:start + first] = values[:first]
        self.values[:len(values) - first] = values[first:]
        self.count += len(values)

    def percentiles(self, recent: int | None = None) -> dict[str, float] | None:
        """p50/p90/p99/max in ms over what is held, or over the last ``recent`` values only."""
        held = self.values[:min(self.count, self.size)]
        if recent is not None and len(held) > recent:
            held = self.values[(self.count - recent + np.arange(recent)) % self.size]
        if not len(held):
            return None
        p50, p90, p99, top = (round(float(v), 3) for v in np.percentile(held, [50, 90, 99, 100]) / self.scale)
        return {"p50": p50, "p90": p90, "p99": p99, "max": top, "n": int(len(held))}

    def reset(self) -> None:
        self.count = 0


class Stages:
    """Where a row's publish -> visible time goes, measured by the worker itself.

    Per row (wall clock against the row's time stamp): ``fetched`` is publish ->
    the reader holds it (producer, broker, fetch); ``applied`` the reader holds it
    -> committed to the shard (queued behind other runs of the read, decoded,
    Arrow, RocksDB), ``visible`` the whole. Per read: the milliseconds spent
    decoding, building Arrow, writing RocksDB or the shard's tail, and the
    messages in it; ``flush`` a tail written to RocksDB (merges included).
    ``stall`` times the event-loop housekeeping that competes with the reader
    for the GIL.
    """

    NAMES = ("visible", "fetched", "applied", "read_decode", "read_arrow", "read_write", "read_total",
             "read_messages", "flush", "stall")

    def __init__(self) -> None:
        per_row = ("visible", "fetched", "applied")  # a benchmark's every row; the rest are per read
        self.samples = {name: LatencySample(1 << 17 if name in per_row else 1 << 14,
                                            scale=1 if name == "read_messages" else 1e6)
                        for name in self.NAMES}
        self.read_started = 0  # ns: when the current read's first message was in hand

    def report(self) -> dict[str, Any]:
        return {name: sample.percentiles() for name, sample in self.samples.items()}

    def reset(self) -> None:
        for sample in self.samples.values():
            sample.reset()


class RdbWorker:
    """One RDB worker: a Faust app, its shards, the day state and its metadata.

    ``replica``: the workers of one replica share the partitions among them
    (one consumer group); two replicas each hold everything, independently
    (hot-hot: the gateway fails over from one to the other). Forwarding a query
    stays inside the replica.
    """

    def __init__(self, settings: Settings, node_id: str, port: int, memory_budget: int = 1 << 30,
                 replica: str = DEFAULT_REPLICA):
        self.settings = settings
        self.node_id = node_id
        self.port = port
        self.memory_budget = memory_budget
        self.instance_id = instance_id(settings.instance_id)  # the scaler's handle on this node's host
        self.leaving = False
        self.url = settings.node_url(port)  # what the metadata announces: reachable from other hosts
        self.catalog = SchemaCatalog.load(settings.schemas_dir)
        self.replica = check_replica(replica, self.catalog.names)
        self.inflight = 0  # queries being answered now: the load figure the gateway balances on
        self.queries = 0
        self.names = TopicNames(settings.topic_prefix)
        self.decoder = make_decoder(settings, self.catalog)
        self.intake = Intake(settings, self.catalog, self.decoder, DeadLetters(settings, f"rdb:{node_id}"),
                             seq=True)  # rows keep their place in the log: ingest.seq
        # RocksDB gets a quarter of the budget, the resident rows (the day decoded, as kdb+
        # holds it) another; Python, Arrow, the query engine and Kafka buffers the rest
        self.resources = Resources(cache_bytes=memory_budget // 8, write_buffer_bytes=memory_budget // 8,
                                   resident_bytes=memory_budget // 4)
        self.shards: dict[tuple[str, int], Shard] = {}
        self._opening = threading.Lock()
        self._assign_lock = threading.RLock()  # the reader applies, rebalances (re)assign: one at a time
        self._reassign = False
        self._locked: dict[tuple[str, int], float] = {}  # assigned, but another process held the shard
        # shards read up to the log's end since they were assigned here: routed to only then
        self.caught_up: set[tuple[str, int]] = set()
        self._catch_targets: dict[tuple[str, int], int] = {}  # the log end each is reading up to
        self._next_catch_check = 0.0
        self._next_lock_try = 0.0
        self._halt = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="rdb-reader", daemon=True)
        self.assigned: set[tuple[str, int]] = set()
        self.days = read_day_state(settings)
        self.rows_applied = 0
        self.messages = 0
        self.batches = 0
        self.stages = Stages()
        self.latency = self.stages.samples["visible"]
        self._decode_ns = self._arrow_ns = self._write_ns = 0
        self.metadata = MetadataPublisher(settings, node_id)
        self.peers: dict[str, RdbRecord] = {}
        # metrics (tickplant/metrics.py): rows counted per read, state read at scrape time
        self.log_ends = metrics.LogEnds()  # noted by the reader, read by a scrape
        self._rows_in = {t: metrics.ROWS_IN.labels("rdb", t) for t in self.catalog.names}
        self._apply_seconds = metrics.APPLY_SECONDS.labels("rdb")
        self._query_seconds = {v: metrics.QUERY_SECONDS.labels("rdb", v) for v in ("rows", "last", "partial", "count")}
        metrics.add_source(self.metric_samples)
        self.app = self._make_app()
        self._last_assignment = Path(self.app.conf.datadir) / "assignment.json"
        self._serve_from_disk()

    # -- the Faust app --------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        app = membership_app(
            s, group_id(s, self.replica), self.names.rdb_assignment,
            replica_dir(s, self.replica) / "workers" / self.node_id, self.port, s.partitions,
            self._on_revoked, self._on_assigned, self._refresh, self._on_shutdown,
        )
        self._routes(app)
        add_metrics_page(app)
        return app

    def metric_samples(self) -> Any:
        """The figures read at scrape time (streams/observed.py)."""
        return rdb_samples(self)

    def _tps(self, tps: set[TP]) -> set[tuple[str, int]]:
        """(table, partition) pairs an assignment of the assignment topic stands for."""
        parts = {tp.partition for tp in tps if tp.topic == self.names.rdb_assignment}
        return {(t.name, p) for t in self.catalog for p in parts}

    async def _on_revoked(self, app: faust.App, revoked: set[TP], **_: Any) -> None:
        """Stop applying the revoked partitions before the group moves on: once this
        returns, the reader thread skips them and their shards are closed."""
        with self._assign_lock:
            for key in self._tps(revoked):
                self.assigned.discard(key)
                self.caught_up.discard(key)  # if it comes back, it is behind until read up again
                self._catch_targets.pop(key, None)
                shard = self.shards.pop(key, None)
                if shard is not None:
                    shard.close()  # releases the RocksDB lock for the next owner
            self._reassign = True

    async def _on_assigned(self, app: faust.App, assigned: set[TP], **_: Any) -> None:
        """Open the new partitions' shards now, so they serve before any new message arrives."""
        loop = asyncio.get_running_loop()
        with self._assign_lock:
            self.assigned = self._tps(assigned)
            for key in [k for k in self.shards if k not in self.assigned]:
                self.shards.pop(key).close()  # held from disk at start, but now another worker's
            self._locked.clear()
            for table, partition in sorted(self.assigned):
                await loop.run_in_executor(None, self._try_open, table, partition)
            self._reassign = True
        self._last_assignment.write_text(json.dumps(sorted(self.assigned)))
        if not self._reader.is_alive():
            self._reader.start()

    def _try_open(self, table: str, partition: int) -> bool:
        """Open an assigned shard unless another process still holds its lock (a worker that
        served it from disk at its start and has not yet heard of the rebalance): waiting for
        that here would hold up the rebalance that tells it. Such a shard is opened later by
        the reader (``_open_locked``), not read nor served until then."""
        try:
            self.shard(table, partition, open_timeout=LOCK_TRY_SECONDS)
        except ShardError as exc:
            if "lock" not in str(exc).lower():
                raise
            self._locked[(table, partition)] = time.monotonic()
            log.warning("%s[%d]: its shard is still held by another process; opened when released", table, partition)
            return False
        self._locked.pop((table, partition), None)
        return True

    def _open_locked(self) -> None:
        """Try again the assigned shards another process held (the reader's thread, between reads)."""
        now = time.monotonic()
        if not self._locked or now < self._next_lock_try:
            return
        with self._assign_lock:
            opened = [key for key in sorted(self._locked) if key in self.assigned and self._try_open(*key)]
            for key in [k for k in self._locked if k not in self.assigned]:
                del self._locked[key]
        if opened:
            self._reassign = True
        self._next_lock_try = now + LOCK_RETRY_SECONDS

    def _check_caught_up(self, consumer: Any) -> None:
        """Note the assigned shards whose reader has reached the end the log had when they were
        assigned here (the reader's thread, between reads). Until all have, the worker's
        metadata says it is not serving, so the gateway routes elsewhere or answers 503 rather
        than read a copy still catching up (answers would go backwards)."""
        now = time.monotonic()
        if now < self._next_catch_check:
            return
        self._next_catch_check = now + CATCH_UP_CHECK_SECONDS
        with self._assign_lock:
            self.caught_up &= self.assigned
            behind = sorted(k for k in self.assigned if k not in self.caught_up and k in self.shards)
            for key in [k for k in self._catch_targets if k not in behind]:
                del self._catch_targets[key]
        if not behind:
            return
        for key in [k for k in behind if k not in self._catch_targets]:
            # the end of the log when catching up began (asked of the broker once a shard, outside
            # the lock the rebalance takes): a fixed mark, so a busy partition is caught up too
            try:
                _, end = consumer.get_watermark_offsets(TopicPartition(self.names.table(key[0]), key[1]),
                                                        timeout=1.0, cached=False)
            except KafkaException:
                return  # the broker away: asked again at the next look
            self._catch_targets[key] = end
        with self._assign_lock:
            behind = [k for k in behind if k in self.assigned and k in self.shards and k in self._catch_targets]
            tps = consumer.position([TopicPartition(self.names.table(t), p) for t, p in behind])
            for key, tp in zip(behind, tps, strict=True):
                position = tp.offset if tp.offset >= 0 else self.shards[key].applied + 1
                if position >= self._catch_targets[key]:
                    self.caught_up.add(key)
                    del self._catch_targets[key]

    def _start_offset(self, table: str, partition: int) -> int:
        """Where the reader starts a shard: past what it applied, and never before the earliest
        day the HDB has not published. A partition with no local copy (a worker on a host of
        its own) is so rebuilt from the log from the real-time days' fences, not from the
        retained log's first offset."""
        return max(self.shards[(table, partition)].applied + 1, self.days.first_unpublished_offset(table, partition))

    def _read_loop(self) -> None:
        """The data path: the assigned table partitions, read in bulk from each shard's offset.

        A Faust event per Kafka message would cap a worker at a few thousand
        messages a second (zero-latency mode sends a message per row); a plain
        consumer hands over thousands at once, and each partition's run is one
        shard write. The group (above) decides who reads what.
        """
        consumer = make_tail_consumer(self.settings, **{
            "socket.nagle.disable": True,
            # what waits in librdkafka's queue counts against the worker's memory budget
            "queued.max.messages.kbytes": 32 * 1024, "fetch.max.bytes": 16 << 20,
            "max.partition.fetch.bytes": 4 << 20,
        })
        topics = {self.names.table(t.name): t.name for t in self.catalog}
        try:
            while not self._halt.is_set():
                if self._reassign:
                    with self._assign_lock:
                        self._reassign = False
                        consumer.assign([
                            TopicPartition(self.names.table(t), p, self._start_offset(t, p))
                            for t, p in sorted(self.assigned) if (t, p) in self.shards
                        ])
                self._open_locked()
                self._check_caught_up(consumer)
                self.log_ends.note(consumer, self._reading)
                if not self.assigned:
                    self._halt.wait(0.05)
                    continue
                # wait for the first message only, then take what is already fetched: no
                # batching delay added to a quiet stream, whole batches from a busy one
                first = consumer.poll(0.05)
                if first is None:
                    self._flush_tails()
                    continue
                started = self.stages.read_started = time.time_ns()
                self._decode_ns = self._arrow_ns = self._write_ns = 0
                messages, size = [first], len(first.value() or b"")
                while size < READ_BYTES and len(messages) < READ_MESSAGES:
                    more = consumer.consume(min(64, READ_MESSAGES - len(messages)), timeout=0)
                    if not more:
                        break
                    messages.extend(more)
                    size += sum(len(m.value() or b"") for m in more)
                by_table: dict[str, list[tuple[int, int, bytes | None, Any]]] = {}
                for msg in messages:
                    if msg.error() is None:
                        by_table.setdefault(topics[msg.topic()], []).append(
                            (msg.partition(), msg.offset(), msg.value(), msg.headers()))
                    else:  # librdkafka retries on its own; say so rather than drop it unseen
                        log.warning("reading %s[%s]: %s", msg.topic(), msg.partition(), msg.error())
                with self._assign_lock:
                    for table, batch in by_table.items():
                        self.apply(table, [m for m in batch
                                           if (table, m[0]) in self.assigned and (table, m[0]) in self.shards])
                samples = self.stages.samples
                elapsed = time.time_ns() - started
                samples["read_total"].add(elapsed)
                self._apply_seconds.observe(elapsed / 1e9)
                self._flush_tails()
                samples["read_decode"].add(self._decode_ns)
                samples["read_arrow"].add(self._arrow_ns)
                samples["read_write"].add(self._write_ns)
                samples["read_messages"].add(len(messages))
        except Exception:  # a crash here must end the worker, not leave it serving stale data
            log.exception("the RDB reader failed; stopping the worker")
            os._exit(70)
        finally:
            consumer.close()

    def _reading(self) -> list[tuple[str, int]]:
        """The (topic, partition)s the reader reads now."""
        with self._assign_lock:
            return [(self.names.table(t), p) for t, p in sorted(self.assigned) if (t, p) in self.shards]

    def _flush_tails(self) -> None:
        """Write the shards' tails that are big or old enough (the reader's thread, between reads)."""
        now = time.monotonic()
        with self._assign_lock:
            for key, shard in list(self.shards.items()):
                if key in self.assigned and shard.tail_due(now):
                    began = time.perf_counter_ns()
                    shard.flush()
                    self.stages.samples["flush"].add(time.perf_counter_ns() - began)

    def _serve_from_disk(self) -> None:
        """At start, open the shards this node held last time: it serves them at once,
        before the group assigns anything (after a kill -9 that takes a session timeout)."""
        try:
            held = json.loads(self._last_assignment.read_text())
        except (FileNotFoundError, ValueError):
            return
        for table, partition in held:
            if table in self.catalog.tables and shard_path(self.settings, table, partition, self.replica).exists():
                try:
                    self.shards[(table, partition)] = Shard(shard_path(self.settings, table, partition, self.replica),
                                                            self.resources, open_timeout=0.5)
                    self.assigned.add((table, partition))
                except ShardError:
                    pass  # another live worker has it now

    async def _on_shutdown(self, app: faust.App, **_: Any) -> None:
        self._halt.set()
        if self._reader.is_alive():
            self._reader.join(timeout=30)
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()
        self.metadata.goodbye()

    # -- ingest ---------------------------------------------------------------

    def shard(self, table: str, partition: int, open_timeout: float = 60.0) -> Shard:
        """The open shard of (table, partition), opening it once even when the rebalance
        handler (in a thread) and the agent (on the loop) ask at the same time."""
        key = (table, partition)
        shard = self.shards.get(key)
        if shard is None:
            with self._opening:
                shard = self.shards.get(key)
                if shard is None:
                    shard = self.shards[key] = Shard(shard_path(self.settings, table, partition, self.replica),
                                                     self.resources, open_timeout=open_timeout)
        return shard

    def apply(self, table: str, messages: list[tuple[int, int, bytes | None, Any]]) -> None:
        """Apply (partition, offset, value, headers) messages, each partition's in log order.

        A run of data messages of one partition and one day goes to the shard
        as one write carrying the run's last offset; the runs of a read share
        one Arrow conversion (its cost is mostly per call, and a zero-latency
        read is a few rows in each partition).
        """
        self.batches += 1
        self.messages += len(messages)
        by_partition: dict[int, list[tuple[int, bytes | None, Any]]] = {}
        for partition, offset, value, headers in messages:
            by_partition.setdefault(partition, []).append((offset, value, headers))
        rows = Gathered(self.catalog[table])
        runs: list[tuple[Shard, int, dt.date | None, int]] = []  # shard, last offset, date, rows end
        for partition, items in by_partition.items():
            shard = self.shard(table, partition)
            run_date: dt.date | None = None
            run_end = -1
            for offset, value, headers in items:
                if offset <= shard.applied or offset <= run_end:
                    continue  # already in the shard: a replay after restart or rebalance
                control = control_of(list(headers) if headers else None)
                date = None if control else self.days.date_of(table, partition, offset)
                if run_end >= 0 and (control or date != run_date):
                    runs.append((shard, run_end, run_date, len(rows)))
                    run_end = -1
                if control is not None:
                    self._apply_runs(table, runs, rows)  # the day's rows before its fence
                    runs, rows = [], Gathered(self.catalog[table])
                    self._on_fence(shard, table, partition, offset, control)
                    continue
                run_date, run_end = date, offset
                if date is None or date in self.days.published.get(table, ()):
                    continue  # an old day the HDB already holds: only the offset advances
                began = time.perf_counter_ns()
                rows.add(self.intake.arrow(table, partition, offset, value, date))
                self._decode_ns += time.perf_counter_ns() - began
            if run_end >= 0:
                runs.append((shard, run_end, run_date, len(rows)))
        self._apply_runs(table, runs, rows)

    def _apply_runs(self, table: str, runs: list[tuple[Shard, int, dt.date | None, int]],
                    rows: Gathered) -> None:
        """Put the runs' rows in one Arrow table (blocks come as columns, ``Intake.arrow``; the
        other rows are converted together), then hand each run's slice to its shard (what the
        intake refused is dead-lettered first: the offsets move past it here)."""
        self.intake.flush()
        if not runs:
            return
        began = time.perf_counter_ns()
        arrow = rows.table()
        self._arrow_ns += time.perf_counter_ns() - began
        self._rows_in[table].inc(len(rows))
        start = 0
        for shard, offset, date, end in runs:
            if end == start or date is None:
                shard.apply(offset, "", None, defer=True)  # only the offset advances
                start = end
                continue
            run = arrow.slice(start, end - start)  # type: ignore[union-attr]
            start = end
            written = time.perf_counter_ns()
            shard.apply(offset, date.isoformat(), run, defer=True)
            self._write_ns += time.perf_counter_ns() - written
            self.rows_applied += run.num_rows
            # every row of the run became queryable now: one latency per row, not per run
            visible = time.time_ns()
            times = run.column("time").combine_chunks().cast(pa.int64()).to_numpy()
            samples = self.stages.samples
            samples["visible"].add(visible - times)
            samples["fetched"].add(self.stages.read_started - times)
            samples["applied"].add(np.full(len(times), visible - self.stages.read_started))

    def _on_fence(self, shard: Shard, table: str, partition: int, offset: int, control: str) -> None:
        """A fence closes the partition's day once the committed marker confirms it."""
        date, self.days = confirmed_fence_date(self.settings, self.days, table, partition, offset,
                                               FENCE_WAIT_SECONDS)
        if date is None:
            log.warning("fence %s at %s[%d]@%d has no committed marker (aborted roll?): ignored",
                        control, table, partition, offset)
        else:
            shard.mark_day(date.isoformat(), "closed")
        shard.apply(offset, "", None)

    # -- housekeeping: day state, dropping published days, metadata -----------------

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self.days = await loop.run_in_executor(None, read_day_state, self.settings)
        for (table, _), shard in list(self.shards.items()):
            published = self.days.published.get(table, ())
            for date in [d for d, _ in shard.day_statuses() if d and dt.date.fromisoformat(d) in published]:
                shard.drop_day(date)
        began = time.perf_counter_ns()
        self.metadata.publish(node_from_fields(self.node_id, {"version": NODE_VERSION, **self.holdings()}, "this RDB's holdings"))
        self.stages.samples["stall"].add(time.perf_counter_ns() - began)
        try:
            nodes = await loop.run_in_executor(None, read_metadata, self.settings)
            self.peers = self.replica_peers(nodes)
        except Exception as exc:  # noqa: BLE001 - routing keeps the last view
            log.warning("could not read metadata: %s", exc)

    def replica_peers(self, nodes: dict[str, NodeRecord]) -> dict[str, RdbRecord]:
        """The RDB nodes of this worker's replica: the only ones it forwards to."""
        return {node: record for node, record in nodes.items()
                if isinstance(record, RdbRecord) and (record.replica or DEFAULT_REPLICA) == self.replica}

    def holdings(self, detail: bool = False) -> dict[str, Any]:
        """What this worker holds (the metadata record); ``detail`` adds the latency stages
        and scheduler figures (the status view: percentiles over every row are not free)."""
        tables: dict[str, Any] = {}
        for (table, partition) in sorted(self.assigned):
            shard = self.shards.get((table, partition))
            entry = tables.setdefault(table, {"partitions": [], "dates": {}})
            entry["partitions"].append(partition)
            if shard is None:
                continue
            entry.setdefault("applied", {})[str(partition)] = shard.applied
            for date, status in shard.day_statuses():
                if not date:
                    continue
                stats = shard.sym_stats(date).values()
                day = entry["dates"].setdefault(date, {"rows": 0, "first": None, "last": None,
                                                       "status": status})
                day["rows"] += sum(s.rows for s in stats)
                firsts = [s.first for s in stats if s.rows]
                lasts = [s.last for s in stats if s.rows]
                if firsts:
                    day["first"] = min([f for f in (day["first"], *firsts) if f is not None])
                    day["last"] = max([v for v in (day["last"], *lasts) if v is not None])
        return {
            "kind": "rdb", "replica": self.replica, "url": self.url, "pid": os.getpid(), "rss": rss_bytes(),
            "memory_budget": self.memory_budget, "cpu_s": time.process_time(),
            "instance_id": self.instance_id, "leaving": self.leaving,
            "load": {"inflight_queries": self.inflight, "queries": self.queries},
            "open_date": self.days.open_date.isoformat() if self.days.open_date else None,
            "serving": bool(self.assigned) and all(key in self.shards and key in self.caught_up
                                                   for key in self.assigned),
            "catching_up": [f"{t}[{p}]" for t, p in sorted(self.assigned - self.caught_up)],
            "rows_applied": self.rows_applied, "messages": self.messages, "batches": self.batches,
            "refused": {"messages": self.intake.refused_messages, "rows": self.intake.refused_rows},
            "tables": tables,
            "visible_latency_ms": self.latency.percentiles(None if detail else 4096),
            **({"stages_ms": self.stages.report(),
                "sched_ns": {"process": sched_ns(),
                             "reader": sched_ns(self._reader.native_id) if self._reader.native_id else None},
                "loadavg": os.getloadavg()} if detail else {}),
        }

    # -- queries --------------------------------------------------------------

    def _owners(self, table: str, syms: list[str]) -> dict[str | None, list[str]]:
        """syms grouped by the node that holds them (None: this worker)."""
        parts = self.settings.partitions
        topic_parts = {p for (t, p) in self.assigned if t == table}
        by_partition_owner: dict[int, str] = {}
        for node, record in self.peers.items():
            if node == self.node_id:
                continue
            for p in (record.tables.get(table) or TableHeld()).partitions:
                by_partition_owner[p] = record.url
        out: dict[str | None, list[str]] = {}
        for sym in syms:
            p = partition_for(sym, parts)
            owner = None if p in topic_parts else by_partition_owner.get(p)
            if p not in topic_parts and owner is None:
                raise QueryError(f"no RDB worker holds {table} partition {p} (sym {sym}) right now")
            out.setdefault(owner, []).append(sym)
        return out

    def _parse(self, table: str, request: Any) -> RowsQuery:
        if table not in self.catalog.tables:
            raise QueryError(f"unknown table {table!r}; tables: {', '.join(self.catalog.names)}")
        q = request.query
        syms = [s for s in q.get("syms", "").split(",") if s] or None
        # seq (ingest.seq) only when asked for, as the gateway's ``SELECT *`` leaves it out
        columns = [c for c in q.get("columns", "").split(",") if c] or self.catalog[table].columns
        date = q.get("date") or (self.days.open_date.isoformat() if self.days.open_date else "")
        try:
            start = int(q["start"]) if q.get("start") else None
            end = int(q["end"]) if q.get("end") else None
            if date:
                dt.date.fromisoformat(date)
        except ValueError as exc:
            raise QueryError(f"bad parameter: {exc}") from None
        return RowsQuery(table, date, syms, start, end, columns)

    async def _gather(self, kind: str, table: str, request: Any) -> pa.Table:
        query = self._parse(table, request)
        schema = self.catalog[table].stored_schema  # with seq
        local_only = request.query.get("local") == "1"
        if query.syms is None:
            groups: dict[str | None, list[str] | None] = {None: None}
            if not local_only:
                for record in self.peers.values():
                    if record.node != self.node_id and table in record.tables:
                        groups[record.url] = None
        else:
            groups = {None: query.syms} if local_only else dict(self._owners(table, query.syms))
        loop = asyncio.get_running_loop()
        parts: list[pa.Table] = []
        remote = {url: syms for url, syms in groups.items() if url is not None}
        if None in groups:
            shards = [s for (t, _), s in self.shards.items() if t == table]
            local = RowsQuery(table, query.date, groups[None], query.start, query.end, query.columns)
            reader = read_rows if kind == "rows" else read_last
            parts.append(await loop.run_in_executor(None, reader, shards, local, schema))
        if remote:
            parts.extend(await asyncio.gather(*(
                self._forward(url, kind, table, request, syms) for url, syms in remote.items()
            )))
        return pa.concat_tables(parts, promote_options="default") if parts else schema.empty_table()

    def _held(self, table: str, asked: str | None) -> list[Shard]:
        """This worker's shards of ``table``: those of the partitions the gateway routed here
        (``asked``), refused (``NotHeld``) if one is not held now: answering for more (a
        partition moving in) would double rows, for fewer (one moved out) lose them, silently."""
        held = {p: s for (t, p), s in self.shards.items() if t == table}
        if asked:
            try:
                wanted = {int(p) for p in asked.split(",")}
            except ValueError:
                raise QueryError(f"bad parameter: partitions={asked!r} is not a list of numbers") from None
            missing = sorted(wanted - held.keys())
            if missing:
                raise NotHeld(f"{self.node_id} does not hold {table} partition(s) "
                              f"{', '.join(map(str, missing))} now (a rebalance moved them); ask its new owner")
            held = {p: s for p, s in held.items() if p in wanted}
        return list(held.values())

    async def _local_ipc(self, kind: str, table: str, request: Any) -> bytearray:
        """This worker's own rows (``local=1``: the gateway routes) as an Arrow stream, read
        and serialised in one executor call: a thread hand-off each cost ~0.5 ms under load."""
        query = self._parse(table, request)
        schema = self.catalog[table].stored_schema  # with seq
        shards = self._held(table, request.query.get("partitions"))
        reader = read_rows if kind == "rows" else read_last
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: to_ipc(reader(shards, query, schema)))

    async def _partial(self, request: Any, body: Any) -> bytearray:
        """A gateway's split statement (streams/partial.py): its partial over this worker's
        rows of exactly the routed partitions of each table it reads (one, or two joined on
        sym: partition p of every table is this worker's together)."""
        sources = body.get("sources") if isinstance(body, dict) else None
        if not isinstance(body.get("sql") if isinstance(body, dict) else None, str) or not isinstance(sources, list) \
                or not sources or not all(isinstance(x, dict) for x in sources):
            raise QueryError("the body must be JSON with 'sql' and a list of 'sources'")
        try:
            timeout = float(request.query.get("timeout") or self.settings.gateway_timeout_s)
            day = dt.date.fromisoformat(request.query.get("date") or "")
        except ValueError as exc:
            raise QueryError(f"bad parameter: {exc}") from None
        deadline = time.monotonic() + timeout
        asked = request.query.get("partitions")
        reads = []
        for source in sources:
            table = source.get("table")
            if table not in self.catalog.tables:
                raise QueryError(f"unknown table {table!r}")
            columns = source.get("columns") or self.catalog[table].columns
            query = RowsQuery(table, day.isoformat(), source.get("syms"), None, None, columns)
            reads.append((str(source.get("source")), self._held(table, asked), query, self.catalog[table].stored_schema))

        def run() -> bytearray:
            inputs = [(placeholder, read_rows(shards, query, schema), schema)
                      for placeholder, shards, query, schema in reads]
            return to_ipc(run_partial(body["sql"], inputs, day, deadline, self.settings.gateway_max_memory_mb))

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def _forward(self, url: str, kind: str, table: str, request: Any, syms: list[str] | None) -> pa.Table:
        params = {k: v for k, v in request.query.items() if k not in ("syms", "format")}
        params["local"] = "1"
        if syms is not None:
            params["syms"] = ",".join(syms)
        async with aiohttp.ClientSession(headers=internal.headers(self.settings)) as session:
            async with session.get(f"{url}/rdb/v1/{table}/{kind}", params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise QueryError(f"{url} answered {resp.status}: {body[:300]!r}")
        return pa.ipc.open_stream(body).read_all()

    async def _respond(self, view: Any, request: Any, table: pa.Table) -> Any:
        if request.query.get("format") == "json":
            rows = table.to_pylist()
            for row in rows:
                if "time" in row and row["time"] is not None:
                    row["time"] = int(row["time"].value) if hasattr(row["time"], "value") else row["time"]
            return view.json({"rows": rows, "count": len(rows)})
        # a big answer is serialised off the event loop (which meanwhile serves the other
        # requests, a gateway's quotes next to its trades); a small one costs less than the hop
        body = (await asyncio.get_running_loop().run_in_executor(None, to_ipc, table)
                if table.num_rows > OFF_LOOP_ROWS else to_ipc(table))
        return view.bytes(body, content_type="application/vnd.apache.arrow.stream")

    def _routes(self, app: faust.App) -> None:
        worker = self

        def rows_view(kind: str) -> type[View]:
            """``rows`` and ``last``: the same gathering and answer, a different reader."""
            class Rows(View):
                async def get(self, request: Any, table: str) -> Any:
                    worker.inflight += 1
                    worker.queries += 1
                    started = time.perf_counter()
                    try:
                        if request.query.get("local") == "1" and request.query.get("format") != "json":
                            # a gateway's fetch: read and serialise in one hop off the loop
                            body = await worker._local_ipc(kind, table, request)
                            return self.bytes(body, content_type="application/vnd.apache.arrow.stream")
                        return await worker._respond(self, request, await worker._gather(kind, table, request))
                    except NotHeld as exc:
                        return self.error(MISDIRECTED, str(exc))
                    except QueryError as exc:
                        return self.error(400, str(exc))
                    finally:
                        worker.inflight -= 1
                        worker._query_seconds[kind].observe(time.perf_counter() - started)

            Rows.__name__ = f"Rdb{kind.title()}"
            return Rows

        for kind in ("rows", "last"):
            app.page(f"/rdb/v1/{{table}}/{kind}")(rows_view(kind))

        @app.page("/rdb/v1/partial")
        class Partial(View):
            async def post(self, request: Any) -> Any:
                """A gateway's split statement: its partial over exactly the routed partitions."""
                worker.inflight += 1
                worker.queries += 1
                started = time.perf_counter()
                try:
                    data = await worker._partial(request, await request.json())
                    return self.bytes(data, content_type="application/vnd.apache.arrow.stream")
                except NotHeld as exc:
                    return self.error(MISDIRECTED, str(exc))
                except (QueryError, ValueError) as exc:
                    return self.error(400, str(exc).split("\n")[0][:500])
                except Exception as exc:  # noqa: BLE001 - the engine's refusal, told to the gateway
                    return self.error(422, str(exc).split("\n")[0][:2000])
                finally:
                    worker.inflight -= 1
                    worker._query_seconds["partial"].observe(time.perf_counter() - started)

        @app.page("/rdb/v1/{table}/count")
        class Count(View):
            async def get(self, request: Any, table: str) -> Any:
                with Timed(worker._query_seconds["count"]):
                    return await self._count(request, table)

            async def _count(self, request: Any, table: str) -> Any:
                try:
                    query = worker._parse(table, request)
                except QueryError as exc:
                    return self.error(400, str(exc))
                shards = [s for (t, _), s in worker.shards.items() if t == table]
                local = counts(shards, query.date, query.syms)
                if request.query.get("local") != "1":
                    for record in worker.peers.values():
                        if record.node != worker.node_id and table in record.tables:
                            async with aiohttp.ClientSession(
                                    headers=internal.headers(worker.settings)) as session:
                                params = {k: v for k, v in request.query.items()}
                                params["local"] = "1"
                                async with session.get(f"{record.url}/rdb/v1/{table}/count",
                                                       params=params) as resp:
                                    local.update((await resp.json())["counts"])
                return self.json({"date": query.date, "counts": local})

        @app.page("/rdb/v1/status")
        class Status(View):
            async def get(self, request: Any) -> Any:
                return self.json({"node": worker.node_id, **worker.holdings(detail=True)})

        @app.page("/rdb/v1/leave")
        class Leave(View):
            async def post(self, request: Any) -> Any:
                """Leave the group for good (the scaler's scale-in): the worker stops as on SIGTERM,
                its partitions go to the others, which rebuild them; its host is then terminated."""
                log.warning("%s: leaving the group at the scaler's request", worker.node_id)
                worker.leaving = True
                asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
                return self.json({"node": worker.node_id, "leaving": True})

        @app.page("/rdb/v1/stages/reset")
        class ResetStages(View):
            async def post(self, request: Any) -> Any:
                """Forget the latency samples so far (a benchmark's warm-up)."""
                worker.stages.reset()
                return self.json({"reset": True})


def run_worker(settings: Settings, node_id: str, port: int, memory_budget: int = 1 << 30,
               replica: str = DEFAULT_REPLICA) -> None:
    """Run one RDB worker until SIGTERM/SIGINT (``tickplant rdb worker``)."""
    # The reader thread shares the GIL with Faust's loop and its executor threads; by
    # default a thread waiting for the GIL waits up to 5 ms for the holder to yield,
    # a direct addition to publish -> visible. A shorter interval bounds that wait.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    observe_role(settings, "rdb", node_id, budget_bytes=memory_budget, replica=replica, level=logging.WARNING)
    worker = RdbWorker(settings, node_id, port, memory_budget, replica)
    run_worker_app(worker.app)

