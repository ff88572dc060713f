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

End of day: a fence in a partition closes that partition's day (confirmed by
the committed marker on the control topic); rows after it go to the new day.
The closed day stays queryable until the control topic says the HDB has
published it, then it is dropped.

Views (each worker, ``http://127.0.0.1:<port>``):
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
import resource
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import faust
import pyarrow as pa
from confluent_kafka import TopicPartition
from faust.types import TP
from faust.web import View

from ingest.deadletter import DeadLetters
from ingest.eod import read_day_state
from ingest.framing import DecodeError, control_of
from ingest.logread import make_consumer
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_for
from streams.metadata import MetadataPublisher, read_metadata
from streams.query import QueryError, RowsQuery, counts, read_last, read_rows, to_ipc
from streams.shard import Resources, Shard, ShardError
from tickplant.config import Settings

log = logging.getLogger("tickplant.rdb")
FENCE_WAIT_SECONDS = 30.0
# one read of the reader thread: at most this many messages or bytes (a block is
# thousands of rows; decoded rows are Python objects until they are Arrow)
READ_MESSAGES = 10_000
READ_BYTES = 4 << 20


def group_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}tickplant-rdb"


def shard_path(settings: Settings, table: str, partition: int) -> Path:
    return Path(settings.data_dir).resolve() / "rdb" / table / f"p{partition:03d}"


def rss_bytes() -> int:
    """Resident memory now (from /proc), for status and the memory budget."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class LatencySample:
    """Row time -> visible in the shard, for the last few thousand messages (ms percentiles).

    Meaningful when rows are stamped with the wall clock at publish (the
    synthetic feed on the system clock): then it is publish -> queryable.
    """

    def __init__(self, size: int = 4096):
        self.values: list[int] = []
        self.size = size

    def add(self, ns: int) -> None:
        self.values.append(ns)
        if len(self.values) > self.size:
            del self.values[: len(self.values) - self.size]

    def percentiles(self) -> dict[str, float] | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)  # noqa: E731
        return {"p50": pick(0.5), "p99": pick(0.99), "n": len(ordered)}


class RdbWorker:
    """One RDB worker: a Faust app, its shards, the day state and its metadata."""

    def __init__(self, settings: Settings, node_id: str, port: int, memory_budget: int = 1 << 30):
        self.settings = settings
        self.node_id = node_id
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.catalog = SchemaCatalog.load(settings.schemas_dir)
        self.names = TopicNames(settings.topic_prefix)
        self.decoder = make_decoder(settings, self.catalog)
        self.deadletters = DeadLetters(settings, f"rdb:{node_id}")
        # RocksDB gets a quarter of the budget; Python, Arrow and Kafka buffers the rest
        self.resources = Resources(cache_bytes=memory_budget // 8, write_buffer_bytes=memory_budget // 8)
        self.shards: dict[tuple[str, int], Shard] = {}
        self._opening = threading.Lock()
        self._assign_lock = threading.RLock()  # the reader applies, rebalances (re)assign: one at a time
        self._reassign = False
        self._halt = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="rdb-reader", daemon=True)
        self.assigned: set[tuple[str, int]] = set()
        self.days = read_day_state(settings)
        self.rows_applied = 0
        self.messages = 0
        self.batches = 0
        self.latency = LatencySample()
        self.metadata = MetadataPublisher(settings, node_id)
        self.peers: dict[str, dict[str, Any]] = {}
        self.app = self._make_app()
        self._last_assignment = Path(self.app.conf.datadir) / "assignment.json"
        self._serve_from_disk()

    # -- the Faust app --------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        datadir = Path(s.data_dir).resolve() / "rdb" / "workers" / self.node_id
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            group_id(s),
            broker=[f"kafka://{b}" for b in s.bootstrap.split(",")],
            datadir=str(datadir),
            web_enabled=True,
            web_port=self.port,
            web_bind="127.0.0.1",
            web_host="127.0.0.1",
            topic_partitions=s.partitions,
            topic_allow_declare=False,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw",
            value_serializer="raw",
            broker_commit_interval=1.0,
            broker_session_timeout=6.0,  # the broker's minimum: a dead worker's partitions move soon
            broker_heartbeat_interval=1.0,
            stream_wait_empty=False,
            web_access_log=None,
        )
        # The group is formed on the assignment topic (no messages): Faust assigns its
        # partitions, and partition p of it stands for partition p of every table topic.
        assignment = app.topic(self.names.rdb_assignment, key_serializer="raw", value_serializer="raw")

        async def members(stream: faust.StreamT) -> None:
            async for _ in stream:  # nothing is ever published here
                pass

        app.agent(assignment, name="rdb-assignment")(members)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)

        async def refresh() -> None:
            await self._refresh()

        app.timer(2.0)(refresh)
        app.on_before_shutdown.connect(self._on_shutdown)
        self._routes(app)
        return app

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
            for table, partition in sorted(self.assigned):
                await loop.run_in_executor(None, self.shard, table, partition)
            self._reassign = True
        self._last_assignment.write_text(json.dumps(sorted(self.assigned)))
        if not self._reader.is_alive():
            self._reader.start()

    def _read_loop(self) -> None:
        """The data path: the assigned table partitions, read in bulk from each shard's offset.

        A Faust event per Kafka message would cap a worker at a few thousand
        messages a second (zero-latency mode sends a message per row); a plain
        consumer hands over thousands at once, and each partition's run is one
        shard write. The group (above) decides who reads what.
        """
        consumer = make_consumer(self.settings, **{
            "enable.partition.eof": False, "fetch.wait.max.ms": 5,
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
                            TopicPartition(self.names.table(t), p, self.shard(t, p).applied + 1)
                            for t, p in sorted(self.assigned)
                        ])
                if not self.assigned:
                    self._halt.wait(0.05)
                    continue
                # wait for the first message only, then take what is already fetched: no
                # batching delay added to a quiet stream, whole batches from a busy one
                first = consumer.poll(0.05)
                if first is None:
                    continue
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
                with self._assign_lock:
                    for table, batch in by_table.items():
                        self.apply(table, [m for m in batch if (table, m[0]) in self.assigned])
        except Exception:  # a crash here must end the worker, not leave it serving stale data
            log.exception("the RDB reader failed; stopping the worker")
            os._exit(70)
        finally:
            consumer.close()

    def _serve_from_disk(self) -> None:
        """At start, open the shards this node held last time: it serves them at once,
        before the group assigns anything (after a kill -9 that takes a session timeout)."""
        try:
            held = json.loads(self._last_assignment.read_text())
        except (FileNotFoundError, ValueError):
            return
        for table, partition in held:
            if table in self.catalog.tables and shard_path(self.settings, table, partition).exists():
                try:
                    self.shards[(table, partition)] = Shard(shard_path(self.settings, table, partition),
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

    def shard(self, table: str, partition: int) -> Shard:
        """The open shard of (table, partition), opening it once even when the rebalance
        handler (in a thread) and the agent (on the loop) ask at the same time."""
        key = (table, partition)
        shard = self.shards.get(key)
        if shard is None:
            with self._opening:
                shard = self.shards.get(key)
                if shard is None:
                    shard = self.shards[key] = Shard(shard_path(self.settings, table, partition), self.resources)
        return shard

    def apply(self, table: str, messages: list[tuple[int, int, bytes | None, Any]]) -> None:
        """Apply (partition, offset, value, headers) messages, each partition's in log order.

        A run of data messages of one partition and one day goes to the shard
        as one write (one Arrow conversion, one RocksDB batch) carrying the
        run's last offset: batching is what makes zero-latency input cheap.
        """
        self.batches += 1
        self.messages += len(messages)
        by_partition: dict[int, list[tuple[int, bytes | None, Any]]] = {}
        for partition, offset, value, headers in messages:
            by_partition.setdefault(partition, []).append((offset, value, headers))
        for partition, items in by_partition.items():
            shard = self.shard(table, partition)
            run: list[dict[str, Any]] = []
            run_date: dt.date | None = None
            run_end = -1
            for offset, value, headers in items:
                if offset <= shard.applied or offset <= run_end:
                    continue  # already in the shard: a replay after restart or rebalance
                control = control_of(list(headers) if headers else None)
                date = None if control else self.days.date_of(table, partition, offset)
                if run_end >= 0 and (control or date != run_date):
                    self._apply_run(shard, table, run_end, run_date, run)
                    run, run_end = [], -1
                if control is not None:
                    self._on_fence(shard, table, partition, offset, control)
                    continue
                run_date, run_end = date, offset
                if date is None or date in self.days.published.get(table, ()):
                    continue  # an old day the HDB already holds: only the offset advances
                try:
                    run.extend(self.decoder.decode(value)[1])
                except DecodeError as exc:
                    where = f"{self.names.table(table)}[{partition}]@{offset}"
                    self.deadletters.send(table, str(exc), value or b"", where=where)
            if run_end >= 0:
                self._apply_run(shard, table, run_end, run_date, run)

    def _apply_run(self, shard: Shard, table: str, offset: int, date: dt.date | None,
                   rows: list[dict[str, Any]]) -> None:
        if not rows or date is None:
            shard.apply(offset, "", None)
            return
        shard.apply(offset, date.isoformat(), self.catalog[table].to_arrow(rows))
        self.rows_applied += len(rows)
        self.latency.add(time.time_ns() - rows[-1]["time"])

    def _on_fence(self, shard: Shard, table: str, partition: int, offset: int, control: str) -> None:
        """A fence closes the partition's day once the committed marker confirms it."""
        deadline = time.monotonic() + FENCE_WAIT_SECONDS
        date = self.days.fence_date(table, partition, offset)
        while date is None and time.monotonic() < deadline:
            self.days = read_day_state(self.settings)
            date = self.days.fence_date(table, partition, offset)
            if date is None:
                time.sleep(0.2)
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
            for date in [d for d in shard.days if d and dt.date.fromisoformat(d) in self.days.published.get(table, ())]:
                shard.drop_day(date)
        self.metadata.publish(self.holdings())
        try:
            self.peers = await loop.run_in_executor(None, read_metadata, self.settings)
        except Exception as exc:  # noqa: BLE001 - routing keeps the last view
            log.warning("could not read metadata: %s", exc)

    def holdings(self) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for (table, partition) in sorted(self.assigned):
            shard = self.shards.get((table, partition))
            entry = tables.setdefault(table, {"partitions": [], "dates": {}})
            entry["partitions"].append(partition)
            if shard is None:
                continue
            entry.setdefault("applied", {})[str(partition)] = shard.applied
            for date in shard.days:
                if not date:
                    continue
                stats = shard.sym_stats(date).values()
                day = entry["dates"].setdefault(date, {"rows": 0, "first": None, "last": None,
                                                       "status": shard.days[date]})
                day["rows"] += sum(s.rows for s in stats)
                firsts = [s.first for s in stats if s.rows]
                lasts = [s.last for s in stats if s.rows]
                if firsts:
                    day["first"] = min([f for f in (day["first"], *firsts) if f is not None])
                    day["last"] = max([v for v in (day["last"], *lasts) if v is not None])
        return {
            "kind": "rdb", "url": self.url, "pid": os.getpid(), "rss": rss_bytes(),
            "open_date": self.days.open_date.isoformat() if self.days.open_date else None,
            "serving": bool(self.assigned) and all(key in self.shards for key in self.assigned),
            "rows_applied": self.rows_applied, "messages": self.messages, "batches": self.batches,
            "tables": tables,
            "visible_latency_ms": self.latency.percentiles(),
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
            for p in record.get("tables", {}).get(table, {}).get("partitions", []):
                by_partition_owner[p] = record["url"]
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
        columns = [c for c in q.get("columns", "").split(",") if c] or None
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
        schema = self.catalog[table].arrow_schema
        local_only = request.query.get("local") == "1"
        if query.syms is None:
            groups: dict[str | None, list[str] | None] = {None: None}
            if not local_only:
                for record in self.peers.values():
                    if record["node"] != self.node_id and table in record.get("tables", {}):
                        groups[record["url"]] = None
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

    async def _forward(self, url: str, kind: str, table: str, request: Any, syms: list[str] | None) -> pa.Table:
        params = {k: v for k, v in request.query.items() if k not in ("syms", "format")}
        params["local"] = "1"
        if syms is not None:
            params["syms"] = ",".join(syms)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/rdb/v1/{table}/{kind}", params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise QueryError(f"{url} answered {resp.status}: {body[:300]!r}")
        return pa.ipc.open_stream(body).read_all()

    def _respond(self, view: Any, request: Any, table: pa.Table) -> Any:
        if request.query.get("format") == "json":
            rows = table.to_pylist()
            for row in rows:
                if "time" in row and row["time"] is not None:
                    row["time"] = int(row["time"].value) if hasattr(row["time"], "value") else row["time"]
            return view.json({"rows": rows, "count": len(rows)})
        return view.bytes(to_ipc(table), content_type="application/vnd.apache.arrow.stream")

    def _routes(self, app: faust.App) -> None:
        worker = self

        def rows_view(kind: str) -> type[View]:
            """``rows`` and ``last``: the same gathering and answer, a different reader."""
            class Rows(View):
                async def get(self, request: Any, table: str) -> Any:
                    try:
                        return worker._respond(self, request, await worker._gather(kind, table, request))
                    except QueryError as exc:
                        return self.error(400, str(exc))

            Rows.__name__ = f"Rdb{kind.title()}"
            return Rows

        for kind in ("rows", "last"):
            app.page(f"/rdb/v1/{{table}}/{kind}")(rows_view(kind))

        @app.page("/rdb/v1/{table}/count")
        class Count(View):
            async def get(self, request: Any, table: str) -> Any:
                try:
                    query = worker._parse(table, request)
                except QueryError as exc:
                    return self.error(400, str(exc))
                shards = [s for (t, _), s in worker.shards.items() if t == table]
                local = counts(shards, query.date, query.syms)
                if request.query.get("local") != "1":
                    for record in worker.peers.values():
                        if record["node"] != worker.node_id and table in record.get("tables", {}):
                            async with aiohttp.ClientSession() as session:
                                params = {k: v for k, v in request.query.items()}
                                params["local"] = "1"
                                async with session.get(f"{record['url']}/rdb/v1/{table}/count",
                                                       params=params) as resp:
                                    local.update((await resp.json())["counts"])
                return self.json({"date": query.date, "counts": local})

        @app.page("/rdb/v1/status")
        class Status(View):
            async def get(self, request: Any) -> Any:
                return self.json({"node": worker.node_id, **worker.holdings()})


def run_worker(settings: Settings, node_id: str, port: int, memory_budget: int = 1 << 30) -> None:
    """Run one RDB worker until SIGTERM/SIGINT (``tickplant rdb worker``)."""
    worker = RdbWorker(settings, node_id, port, memory_budget)
    faust.Worker(worker.app, loglevel="WARNING", quiet=True).execute_from_commandline()


