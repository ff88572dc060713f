"""The real-time database: workers that keep today's ticks in RocksDB shards.

The workers form one group (streams/worker.py) on ``_tp.rdb.assignment``, whose
partition p stands for partition p of every table: since the key is the sym,
N workers are N sym shards. Each run of messages of one partition is decoded
and applied with its last offset to the partition's shard in one RocksDB write
(streams/shard.py): a message read again after a crash or a rebalance is
skipped, so state is exactly-once. A revoked partition is dropped by the reader
before the rebalance completes.

Shards live under ``<data_dir>/rdb/<table>/p<partition>`` (streams/replicas.py),
shared by the workers of one machine: a partition handed to another local worker
is opened where it is, with no replay. A restarted worker serves at once from
the shards it held and catches up from their offsets, so time to serving does
not grow with the day; it says it is serving only once every shard assigned to
it has read up to the log's end, so answers never go backwards.

End of day: a fence closes the partition's day (confirmed by the committed
marker); the closed day stays queryable until the control topic says the HDB
has published it, then it is dropped. The views are in streams/rdb_views.py,
the metadata record in streams/rdb_status.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from ingest.eod import read_day_state_patiently
from ingest.framing import control_of
from ingest.gather import Gathered
from ingest.node_record import NodeRecord, RdbRecord
from ingest.schemas import SchemaCatalog
from streams.latency import Stages
from streams.observed import rdb_samples
from streams.partial import run_partial
from streams.rdb_status import record
from streams.rdb_views import RdbViews
from streams.reopen import Reopen
from streams.replicas import (
    DEFAULT_REPLICA,
    check_replica,
    group_id,
    replica_dir,
    replica_peers,
    shard_path,
)
from streams.shard import Resources, Shard, ShardError
from streams.worker import GroupWorker, serve
from tickplant.config import Settings
from tickplant.ec2 import instance_id
from tickplant.kafka.message import position

LOCK_TRY_SECONDS = 1.0  # an assigned shard's lock held by another process: waited for this long at the rebalance,
LOCK_RETRY_SECONDS = 0.5  # then tried again this often by the reader
CATCH_UP_CHECK_SECONDS = 0.2  # how often the reader looks whether newly assigned shards have caught up
POLL_SECONDS = 0.05

Key = tuple[str, int]  # (table, partition): one shard
Run = tuple[Shard, int, dt.date | None, int]  # a shard, its run's last offset, the run's day, where its rows end


class RdbWorker(GroupWorker):
    """One RDB worker: its shards, the day state and its metadata.

    ``replica``: the workers of one replica share the partitions among them
    (one consumer group); two replicas each hold everything, independently
    (hot-hot: the gateway fails over from one to the other). Forwarding a query
    stays inside the replica.
    """

    ROLE = "rdb"

    def __init__(self, settings: Settings, node_id: str, port: int, memory_budget: int = 1 << 30,
                 replica: str = DEFAULT_REPLICA):
        catalog = SchemaCatalog.load(settings.schemas_dir)
        self.replica = check_replica(replica, catalog.names)
        # rows keep their place in the log: ingest.seq
        super().__init__(settings, node_id, port, catalog, list(catalog.names), seq=True)
        self.memory_budget = memory_budget
        self.instance_id = instance_id(settings.instance_id)  # the scaler's handle on this node's host
        self.leaving = False
        self.inflight = 0  # queries being answered now: the load figure the gateway balances on
        self.queries = 0
        # RocksDB gets a quarter of the budget, the resident rows (the day decoded, as kdb+
        # holds it) another; Python, Arrow, the query engine and Kafka buffers the rest
        self.resources = Resources(cache_bytes=memory_budget // 8, write_buffer_bytes=memory_budget // 8,
                                   resident_bytes=memory_budget // 4)
        self.shards: dict[Key, Shard] = {}
        self.assigned: set[Key] = set()
        self._opening = threading.Lock()
        self._locked: Reopen[Key] = Reopen(LOCK_RETRY_SECONDS, LOCK_RETRY_SECONDS)  # another process held the shard
        # shards read up to the log's end since they were assigned here: routed to only then
        self.caught_up: set[Key] = set()
        self._catch_targets: dict[Key, int] = {}  # the log end each is reading up to
        self._next_catch_check = 0.0
        self._engine_warmed = False
        self._topics = {self.names.table(t): t for t in self.tables}
        self.rows_applied = 0
        self.messages = 0
        self.batches = 0
        self.stages = Stages()
        self.latency = self.stages.samples["visible"]
        self._decode_ns = self._arrow_ns = self._write_ns = 0
        self.views = RdbViews(self)
        self.app = self._group_app(group_id(settings, self.replica), self.names.rdb_assignment,
                                   replica_dir(settings, self.replica) / "workers" / node_id, settings.partitions)
        self._last_assignment = Path(self.app.conf.datadir) / "assignment.json"
        self._serve_from_disk()

    def metric_samples(self) -> Any:
        return rdb_samples(self)

    def _routes(self, app: Any) -> None:
        self.views.routes(app)

    # -- who holds what -------------------------------------------------------

    def _keys(self, parts: set[int]) -> set[Key]:
        """The shards partitions of the membership topic stand for."""
        return {(t, p) for t in self.tables for p in parts}

    def _release(self, parts: set[int]) -> None:
        for key in self._keys(parts):
            self.assigned.discard(key)
            self.caught_up.discard(key)  # if it comes back, it is behind until read up again
            self._catch_targets.pop(key, None)
            shard = self.shards.pop(key, None)
            if shard is not None:
                shard.close()  # releases the RocksDB lock for the next owner

    async def _take_over(self, parts: set[int]) -> None:
        loop = asyncio.get_running_loop()
        with self.lock:
            self.assigned = self._keys(parts)
            for key in [k for k in self.shards if k not in self.assigned]:
                self.shards.pop(key).close()  # held from disk at start, but now another worker's
            self._locked.keep(())
            for table, partition in sorted(self.assigned):
                await loop.run_in_executor(None, self._try_open, table, partition)
        self._last_assignment.write_text(json.dumps(sorted(self.assigned)))

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
            self._locked.failed((table, partition), str(exc))
            self.log.warning("%s[%d]: its shard is still held by another process; opened when released",
                             table, partition)
            return False
        self._locked.opened((table, partition))
        return True

    def _open_locked(self) -> None:
        """Try again the assigned shards another process held (the reader's thread, between reads)."""
        due = self._locked.due()
        if not due:
            return
        with self.lock:
            self._locked.keep(self.assigned)
            opened = [key for key in due if key in self.assigned and self._try_open(*key)]
        if opened:
            self._reassign = True
        self._locked.tried()

    def _check_caught_up(self, consumer: Consumer) -> None:
        """Note the assigned shards whose reader has reached the end the log had when they were
        assigned here (the reader's thread, between reads). Until all have, the worker's
        metadata says it is not serving, so the gateway routes elsewhere or answers 503 rather
        than read a copy still catching up (answers would go backwards)."""
        now = time.monotonic()
        if now < self._next_catch_check:
            return
        self._next_catch_check = now + CATCH_UP_CHECK_SECONDS
        with self.lock:
            self.caught_up &= self.assigned
            behind = sorted(k for k in self.assigned if k not in self.caught_up and k in self.shards)
            for key in [k for k in self._catch_targets if k not in behind]:
                del self._catch_targets[key]
        if not behind:
            if self.assigned and not self._engine_warmed:
                self._engine_warmed = True
                threading.Thread(target=self._warm_engine, name="rdb-engine-warm", daemon=True).start()
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
        with self.lock:
            behind = [k for k in behind if k in self.assigned and k in self.shards and k in self._catch_targets]
            tps = consumer.position([TopicPartition(self.names.table(t), p) for t, p in behind])
            for key, tp in zip(behind, tps, strict=True):
                at = tp.offset if tp.offset >= 0 else self.shards[key].applied + 1
                if at >= self._catch_targets[key]:
                    self.caught_up.add(key)
                    del self._catch_targets[key]

    def _warm_engine(self) -> None:
        """Load the embedded engine that runs the gateway's split statements here (chDB: a
        second or so to load and run its first statement) once this worker first serves, so
        that the first query routed here does not pay for it. Not at start: a restarted
        worker's catch-up would pay for it instead."""
        table = sorted(self.catalog.tables)[0]
        schema = self.catalog[table].stored_schema
        try:
            run_partial("SELECT count() FROM __warm__", [("__warm__", schema.empty_table(), schema)],
                        dt.date.today(), None, self.settings.gateway_max_memory_mb)
        except Exception:  # a query would say the same, to whoever asked
            self.log.exception("%s: loading the embedded query engine failed", self.node_id)

    def _serve_from_disk(self) -> None:
        """At start, open the shards this node held last time: it serves them at once,
        before the group assigns anything (after a kill -9 that takes a session timeout)."""
        try:
            held = json.loads(self._last_assignment.read_text())
        except (FileNotFoundError, ValueError):
            return
        for table, partition in held:
            path = shard_path(self.settings, table, partition, self.replica)
            if table in self.catalog.tables and path.exists():
                try:
                    self.shards[(table, partition)] = Shard(path, self.resources, open_timeout=0.5)
                    self.assigned.add((table, partition))
                except ShardError:
                    pass  # another live worker has it now

    def _close_all(self) -> None:
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()

    def shard(self, table: str, partition: int, open_timeout: float = 60.0) -> Shard:
        """The open shard of (table, partition), opening it once even when the rebalance
        handler (in a thread) and the reader ask at the same time."""
        key = (table, partition)
        shard = self.shards.get(key)
        if shard is None:
            with self._opening:
                shard = self.shards.get(key)
                if shard is None:
                    shard = self.shards[key] = Shard(shard_path(self.settings, table, partition, self.replica),
                                                     self.resources, open_timeout=open_timeout)
        return shard

    # -- the data path --------------------------------------------------------

    def _start_offset(self, table: str, partition: int) -> int:
        """Where the reader starts a shard: past what it applied, and never before the earliest
        day the HDB has not published. A partition with no local copy (a worker on a host of
        its own) is so rebuilt from the log from the real-time days' fences, not from the
        retained log's first offset."""
        return max(self.shards[(table, partition)].applied + 1, self.days.first_unpublished_offset(table, partition))

    def _positions(self) -> list[TopicPartition]:
        return [TopicPartition(self.names.table(t), p, self._start_offset(t, p))
                for t, p in sorted(self.assigned) if (t, p) in self.shards]

    def _reading(self) -> list[tuple[str, int]]:
        """The (topic, partition)s the reader reads now."""
        with self.lock:
            return [(self.names.table(t), p) for t, p in sorted(self.assigned) if (t, p) in self.shards]

    def _between_reads(self, consumer: Consumer) -> float | None:
        self._open_locked()
        self._check_caught_up(consumer)
        self.log_ends.note(consumer, self._reading)
        if not self.assigned:
            self._idle_wait()
            return None
        return POLL_SECONDS

    def _quiet(self) -> None:
        self._flush_tails()

    def _read(self, messages: list[Message], began: int) -> None:
        """One read: each table's messages applied under the lock, then the latency figures."""
        self.stages.read_started = began
        self._decode_ns = self._arrow_ns = self._write_ns = 0
        by_table: dict[str, list[tuple[int, int, bytes | None, Any]]] = {}
        for msg in messages:
            topic, partition, offset = position(msg)
            by_table.setdefault(self._topics[topic], []).append((partition, offset, msg.value(), msg.headers()))
        with self.lock:
            for table, batch in by_table.items():
                self.apply(table, [m for m in batch
                                   if (table, m[0]) in self.assigned and (table, m[0]) in self.shards])
        samples = self.stages.samples
        elapsed = time.time_ns() - began
        samples["read_total"].add(elapsed)
        self._apply_seconds.observe(elapsed / 1e9)
        self._flush_tails()
        samples["read_decode"].add(self._decode_ns)
        samples["read_arrow"].add(self._arrow_ns)
        samples["read_write"].add(self._write_ns)
        samples["read_messages"].add(len(messages))

    def _flush_tails(self) -> None:
        """Write the shards' tails that are big or old enough (the reader's thread, between reads)."""
        now = time.monotonic()
        with self.lock:
            for key, shard in list(self.shards.items()):
                if key in self.assigned and shard.tail_due(now):
                    began = time.perf_counter_ns()
                    shard.flush()
                    self.stages.samples["flush"].add(time.perf_counter_ns() - began)

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
        runs: list[Run] = []
        for partition, items in by_partition.items():
            shard = self.shard(table, partition)
            self._days_current_for(shard, table, partition)
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

    def _apply_runs(self, table: str, runs: list[Run], rows: Gathered) -> None:
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
            if end == start or date is None or arrow is None:
                shard.apply(offset, "", None, defer=True)  # only the offset advances
                start = end
                continue
            run = arrow.slice(start, end - start)
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

    def _days_current_for(self, shard: Shard, table: str, partition: int) -> None:
        """A shard taken over from another worker of this host (they share the shard
        directory) may be past a fence this worker never read, while its day state, read
        before that roll, still calls the closed day open: the next rows would be dated to
        it, and dropped with it once the HDB has it. Read the control topic again first."""
        open_date = self.days.open_date
        if open_date is not None and shard.days.get(open_date.isoformat()) == "closed":
            self.log.info("%s[%d]: its shard has closed %s; reading the day state again", table, partition, open_date)
            self._adopt_days(read_day_state_patiently(self.settings, f"{self.node_id} {table}[{partition}]"))

    def _on_fence(self, shard: Shard, table: str, partition: int, offset: int, control: str) -> None:
        """A fence closes the partition's day once the committed marker confirms it."""
        date = self._fence_date(table, partition, offset, control)
        if date is not None:
            shard.mark_day(date.isoformat(), "closed")
        shard.apply(offset, "", None)

    # -- housekeeping: dropping published days, the metadata record -----------------

    def _on_day_state(self) -> None:
        for (table, _), shard in list(self.shards.items()):
            published = self.days.published.get(table, ())
            for date in [d for d, _ in shard.day_statuses() if d and dt.date.fromisoformat(d) in published]:
                shard.drop_day(date)

    def _announce(self) -> None:
        """Publish the metadata record, timed: the event loop's housekeeping competes with the
        reader for the GIL (``stall`` in the stages)."""
        began = time.perf_counter_ns()
        super()._announce()
        self.stages.samples["stall"].add(time.perf_counter_ns() - began)

    def _peers_of(self, nodes: dict[str, NodeRecord]) -> dict[str, RdbRecord]:  # type: ignore[override]
        return replica_peers(nodes, self.replica)

    def holdings(self, detail: bool = False) -> dict[str, Any]:
        """What this worker holds (the metadata record); ``detail`` adds the latency stages
        and scheduler figures (the status view: percentiles over every row are not free)."""
        return record(self, detail)


def run_worker(settings: Settings, node_id: str, port: int, memory_budget: int = 1 << 30,
               replica: str = DEFAULT_REPLICA) -> None:
    """Run one RDB worker until SIGTERM/SIGINT (``tickplant rdb worker``)."""
    serve(settings, node_id, lambda: RdbWorker(settings, node_id, port, memory_budget, replica), "rdb",
          budget_bytes=memory_budget, replica=replica)
