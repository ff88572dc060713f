"""The real-time engine (kdb+ RTE / CEP): per-sym analytics and OHLCV bars from the log.

Like the RDB (``streams.rdb``), the workers of one engine form a Faust
consumer group on a membership topic (``_tp.cep.<engine>.assignment``):
partition p of it stands for partition p of the trade and quote topics, a
set of syms. Faust keeps the group, rebalances, the web views and the
timers; the rows are read in bulk by a plain consumer thread, assigned
those partitions from the offsets stored with the state (a Faust event per
message would cap a worker at a few thousand messages a second).

Per partition (``engine.PartitionEngine``): analytics of the registry
(``streams.cep.analytics``: last trade, last quote with spread and mid, the
day's open/high/low/close, volume, notional, trades, VWAP) and bars
(``streams.cep.bars``: width ``bar_seconds``, closed by the trade
partition's event-time watermark, by the sym's next bar, at end of day, or
by the idle timer when the partition is quiet on the live day). Each read's
effects go to the partition's RocksDB store in one write with the input
offsets and the numbered outputs; the outputs are then committed to
``rte.bars`` / ``rte.analytics`` in a Kafka transaction (``outbox``: why
that is exactly-once across kill -9 and rebalances) by the partition's
committer thread, while the reader goes on with the next read.

Latency (tick -> analytic committed): the reader takes what the consumer
has, groups each partition's messages into runs of one table and day,
decodes a run at once (``Decoder.decode_many``) and hands it to the engine
as one message; the commit round trip overlaps the next read's work instead
of adding to it. A record waits for at most one commit in flight: at the
live end of the log, while every committer is busy the reader lets ticks
gather (one apply and one transaction for all of them), and a partition
read while its commit is in flight updates its state without analytics
records; when its committer is free, one record per sym changed meanwhile
goes out (``engine``: conflation; bars are never held). So the CPU and
broker work per tick fall as the load rises instead of growing with the
number of reads. The status reports ``offsets`` whose outputs are committed
(``applied_offsets``: in the state), the reader's CPU time per read and the
tick -> committed latency. Records are Avro with
the plant's framing (``schemas/rte/*.avsc``, registered on the schemas
topic, so ``make_decoder`` reads them anywhere), keyed by sym.

End of day: the fence of a table in a partition (confirmed by the committed
marker) closes that table's day there: open bars close (``eod``) and the
table's analytics restart; the closed day's bars stay queryable one more day.

Views (``http://<node_host>:<port>``, announced at ``advertise_host``; the syms this worker holds):
  GET /cep/v1/analytics?syms=A,B  -> {"analytics": {sym: record}, "elsewhere": {sym: owner url|null},
                                      "unknown": [syms of this worker's partitions with no ticks yet]}
  GET /cep/v1/bars?syms=A&start=NS&end=NS&date=D
      -> {"bars": [closed bars with start <= time < end, then the open one with "is_open": true]}
  GET /cep/v1/live?output=analytics|bars&syms=A,B
      -> newline-delimited JSON: each read's changes as soon as they are in the store (``live``)
  GET /cep/v1/status              -> partitions, offsets, watermarks, late trades, latency
The worker's metadata record (kind ``cep``) on ``_tp.metadata`` carries its
URL, engine, partitions and output topics, for the gateway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import TopicPartition
from faust.types import TP
from faust.web import View

from ingest.deadletter import DeadLetters
from ingest.eod import TradingCalendar, confirmed_fence_date, read_day_state
from ingest.framing import control_of
from ingest.intake import Intake
from ingest.logread import make_tail_consumer
from ingest.metadata import MetadataPublisher, read_metadata
from ingest.node_record import CepRecord, NodeRecord, node_fields
from ingest.schema_topic import SchemaTopic, make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_for
from streams.cep.analytics import check_schema, instances
from streams.cep.engine import Message, PartitionEngine
from streams.cep.live import LiveFeed, LiveFeedError
from streams.cep.outbox import PartitionPublisher
from streams.cep.store import PartitionStore
from streams.cep.topics import DEFAULT_ENGINE, CepTopics
from streams.group import membership_app, run_worker_app
from streams.observed import add_metrics_page, cep_samples
from streams.rdb import LatencySample, rss_bytes
from tickplant import metrics
from tickplant.config import Settings
from tickplant.kafka.message import position
from tickplant.observe import observe_role

log = logging.getLogger("tickplant.cep")
FENCE_WAIT_SECONDS = 30.0
READ_MESSAGES = 20_000
READ_BYTES = 8 << 20
# a read this small means the reader is at the live end of the log: it then waits for a free
# committer rather than applying a few messages at a time that could not go out anyway
SMALL_READ = 1000
COMMITTER_WAIT_SECONDS = 0.005
GIL_SWITCH_SECONDS = 0.0005  # see run_worker
# while the live feed has listeners (they get every change at once), a partition commits at most
# this often: fewer, bigger transactions leave the CPU and the broker to the live path (a
# transaction a second costs the broker ~1.2% of a core here: 4 partitions at 0.1 s took ~45%)
LIVE_COMMIT_SECONDS = 0.5
TABLES = ("trade", "quote")


class CepError(ValueError):
    """A request or a setting the engine cannot take; the message says which and why."""


def state_path(settings: Settings, engine: str, partition: int) -> Path:
    return Path(settings.data_dir).resolve() / "cep" / engine / f"p{partition:03d}"


class CepWorker:
    """One worker of a CEP engine: a Faust app, its partitions' engines and publishers."""

    def __init__(self, settings: Settings, node_id: str, port: int, engine: str = DEFAULT_ENGINE,
                 bar_seconds: float = 60.0, grace_seconds: float = 1.0, idle_seconds: float | None = None):
        if bar_seconds <= 0 or grace_seconds < 0:
            raise CepError(f"bar width must be > 0 and grace >= 0 (got {bar_seconds}, {grace_seconds})")
        self.settings = settings
        self.node_id = node_id
        self.port = port
        self.url = settings.node_url(port)  # what the metadata announces: reachable from other hosts
        self.engine_name = engine
        self.width_ns = int(bar_seconds * 1e9)
        self.grace_ns = int(grace_seconds * 1e9)
        self.idle_ns = int((grace_seconds if idle_seconds is None else idle_seconds) * 1e9)
        self.catalog = SchemaCatalog.load(settings.schemas_dir)
        self.tables = [t for t in TABLES if t in self.catalog.tables]
        if "trade" not in self.tables:
            raise CepError(f"the CEP needs a 'trade' table; {settings.schemas_dir} has {', '.join(self.catalog.names)}")
        rte_dir = Path(settings.schemas_dir) / "rte"
        self.rte = SchemaCatalog.load(rte_dir)
        check_schema(self.rte["analytics"].avro, str(rte_dir / "analytics.avsc"))
        self.analytics = instances(set(self.tables))
        self.topics = CepTopics(settings, engine)
        self.partitions = self.topics.ensure(settings, self.catalog)
        SchemaTopic(settings).register(self.rte)
        self.names = TopicNames(settings.topic_prefix)
        self.decoder = make_decoder(settings, self.catalog)
        self.intake = Intake(settings, self.catalog, self.decoder, DeadLetters(settings, f"cep:{node_id}"))
        self.calendar = TradingCalendar.from_settings(settings)
        self.days = read_day_state(settings)
        self.engines: dict[int, PartitionEngine] = {}
        self.publishers: dict[int, PartitionPublisher] = {}
        self.assigned: set[int] = set()
        self._lock = threading.RLock()  # the reader applies, rebalances (re)assign, views read
        self._reassign = False
        self._halt = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="cep-reader", daemon=True)
        self.last_seen: dict[int, float] = {}  # partition -> monotonic time of its last trade message
        self.unsent: dict[int, int] = {}  # partition -> newest tick time whose analytics wait (conflated)
        self._free = threading.Event()  # set by a committer that has nothing left to commit
        self.latency = LatencySample()
        self._latency_lock = threading.Lock()  # the partitions' committer threads add to it
        self.reads = 0
        self.messages_read = 0
        self.apply_seconds = 0.0
        self.apply_cpu_seconds = 0.0  # the reader thread's CPU time: a figure a busy machine does not blur
        self.commits = 0
        self.republished = 0
        self.metadata = MetadataPublisher(settings, node_id)
        self.live = LiveFeed()
        self._live_out: dict[str, list[dict[str, Any]]] = {"analytics": [], "bars": []}  # this read's, to push
        self.peers: dict[str, NodeRecord] = {}
        # metrics (tickplant/metrics.py): rows counted per read, state read at scrape time
        self.log_ends = metrics.LogEnds()  # noted by the reader, read by a scrape
        self._rows_in = {t: metrics.ROWS_IN.labels("cep", t) for t in self.tables}
        self._apply_seconds = metrics.APPLY_SECONDS.labels("cep")
        metrics.add_source(self.metric_samples)
        self.app = self._make_app()

    # -- the Faust app ----------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        app = membership_app(
            s, self.topics.group, self.topics.assignment,
            Path(s.data_dir).resolve() / "cep" / self.engine_name / "workers" / self.node_id, self.port,
            self.partitions, self._on_revoked, self._on_assigned, self._refresh, self._on_shutdown,
        )
        self._routes(app)
        add_metrics_page(app)
        return app

    def metric_samples(self) -> Any:
        """The figures read at scrape time (streams/observed.py)."""
        return cep_samples(self)

    def _parts(self, tps: set[TP]) -> set[int]:
        return {tp.partition for tp in tps if tp.topic == self.topics.assignment}

    async def _on_revoked(self, app: faust.App, revoked: set[TP], **_: Any) -> None:
        """Stop the revoked partitions before the group moves on (the reader holds the lock
        while it applies and publishes, so none is half done)."""
        with self._lock:
            for p in self._parts(revoked):
                self._drop(p)
            self._reassign = True

    def _drop(self, p: int) -> None:
        self.assigned.discard(p)
        self.unsent.pop(p, None)
        publisher = self.publishers.pop(p, None)
        engine = self.engines.get(p)
        if publisher is not None:
            if engine is not None and engine.store.dirty:  # hand over with no analytics held back
                publisher.submit(engine.emit_pending(), dict(engine.store.offsets))
            publisher.close()
        engine = self.engines.pop(p, None)
        if engine is not None:
            engine.store.close()  # releases the RocksDB lock for the next owner

    async def _on_assigned(self, app: faust.App, assigned: set[TP], **_: Any) -> None:
        loop = asyncio.get_running_loop()
        parts = self._parts(assigned)
        with self._lock:
            for p in [p for p in self.engines if p not in parts]:
                self._drop(p)
            self.assigned = parts
        for p in sorted(parts):
            await loop.run_in_executor(None, self._open, p)
        with self._lock:
            self._reassign = True
        if not self._reader.is_alive():
            self._reader.start()

    def _open(self, p: int) -> None:
        """Open the partition's state, fence its previous owner, publish what it left unpublished."""
        with self._lock:
            if p in self.engines or p not in self.assigned:
                return
            store = PartitionStore(state_path(self.settings, self.engine_name, p))
            engine = PartitionEngine(store, self.analytics, self.rte["bars"], self.rte["analytics"],
                                     self.width_ns, self.grace_ns)
            engine.on_change = self._push_live
            publisher = PartitionPublisher(self.settings, self.topics.transactional_id(self.settings, p),
                                           self.topics.outputs, p)
            self.republished += publisher.recover(store)
            publisher.pace = lambda: LIVE_COMMIT_SECONDS if self.live.listening() else 0.0
            publisher.start(store, self._committed, self._commit_failed, self._free)
            self.engines[p], self.publishers[p] = engine, publisher
            self.last_seen[p] = time.monotonic()

    async def _on_shutdown(self, app: faust.App, **_: Any) -> None:
        self._halt.set()
        self.live.close()
        if self._reader.is_alive():
            self._reader.join(timeout=30)
        with self._lock:
            for p in list(self.engines):
                self._drop(p)
        self.metadata.goodbye()

    # -- the data path ------------------------------------------------------------

    def _read_loop(self) -> None:
        """Read the assigned partitions of the trade and quote topics in bulk, from the stored offsets."""
        consumer = make_tail_consumer(self.settings, **{
            "socket.nagle.disable": True,
            "queued.max.messages.kbytes": 32 * 1024, "fetch.max.bytes": 16 << 20,
            "max.partition.fetch.bytes": 4 << 20,
        })
        topics = {self.names.table(t): t for t in self.tables}
        next_idle_check = 0.0
        live = False  # the last read was small: at the live end of the log
        try:
            while not self._halt.is_set():
                if self._reassign:
                    with self._lock:
                        self._reassign = False
                        consumer.assign([
                            TopicPartition(self.names.table(t), p, self.engines[p].store.offset(t) + 1)
                            for p in sorted(self.engines) for t in self.tables
                        ])
                if not self.engines:
                    self._halt.wait(0.05)
                    continue
                self.log_ends.note(consumer, self._reading)
                now = time.monotonic()
                if now >= next_idle_check:
                    next_idle_check = now + 0.1
                    self._idle(now)
                waiting = self._emit_pending()
                if live and not self.live.listening() and self._all_committers_busy():
                    # what is read now could not go out before a commit ends: let it gather
                    # (one apply and one transaction for all of it, less CPU a tick); not when
                    # the live feed has listeners: they get each read's changes at once
                    self._free.wait(COMMITTER_WAIT_SECONDS)
                    self._free.clear()
                    continue
                # conflated analytics wait for a committer: look again soon, not in 50 ms
                first = consumer.poll(0.002 if waiting else 0.05)
                if first is None:
                    continue
                messages, size = [first], len(first.value() or b"")
                while size < READ_BYTES and len(messages) < READ_MESSAGES:
                    more = consumer.consume(min(512, READ_MESSAGES - len(messages)), timeout=0)
                    if not more:
                        break
                    messages.extend(more)
                    size += sum(len(m.value() or b"") for m in more)
                by_part: dict[int, dict[str, list[Any]]] = {}
                for msg in messages:
                    if msg.error() is None:
                        topic, part, _ = position(msg)
                        by_part.setdefault(part, {}).setdefault(topics[topic], []).append(msg)
                self.reads += 1
                live = len(messages) < SMALL_READ
                self._apply(by_part)
        except Exception:  # a crash here must end the worker, not leave it serving stale analytics
            log.exception("the CEP reader failed; stopping the worker")
            os._exit(70)
        finally:
            consumer.close()

    def _reading(self) -> list[tuple[str, int]]:
        """The (topic, partition)s the reader reads now."""
        with self._lock:
            return [(self.names.table(t), p) for p in sorted(self.engines) for t in self.tables]

    def _apply(self, by_part: dict[int, dict[str, list[Any]]]) -> None:
        """Apply each partition's messages (one RocksDB write each) and hand their outputs to
        the partition's committer (``outbox``), which commits them while the reader reads on."""
        started, cpu = time.perf_counter(), time.thread_time()
        with self._lock:
            for p, tables in by_part.items():
                engine = self.engines.get(p)
                if engine is None:
                    continue  # revoked meanwhile: the next owner reads it from the stored offset
                batches = {t: self._messages(t, p, msgs, engine.store.offset(t)) for t, msgs in tables.items()}
                for t, batch in batches.items():
                    self._rows_in[t].inc(sum(len(m.rows) for m in batch if m.rows))
                self.intake.flush()
                if "trade" in tables:
                    self.last_seen[p] = time.monotonic()
                publisher = self.publishers[p]
                newest = max((m.rows[-1]["time"] for ms in batches.values() for m in ms if m.rows),
                             default=self.unsent.get(p))
                emit = publisher.idle()
                outputs = engine.apply(batches, emit=emit)
                if emit or not engine.store.dirty:
                    self.unsent.pop(p, None)
                elif newest is not None:
                    self.unsent[p] = max(newest, self.unsent.get(p, newest))
                self._submit(p, outputs, newest if emit else None)
            self._flush_live()
        elapsed = time.perf_counter() - started
        self.apply_seconds += elapsed
        self._apply_seconds.observe(elapsed)
        self.apply_cpu_seconds += time.thread_time() - cpu

    def _push_live(self, engine: PartitionEngine, closed: list[dict[str, Any]], changed: set[str]) -> None:
        """After a store write (reader thread, under the lock): its closed bars and the changed
        syms' analytics, for the live feed's listeners if any (``_flush_live`` sends them)."""
        if closed and self.live.wants("bars"):
            self._live_out["bars"].extend(closed)
        if changed and self.live.wants("analytics"):
            self._live_out["analytics"].extend(
                record for sym in sorted(changed) if (record := engine.snapshot(sym)) is not None)

    def _flush_live(self) -> None:
        """One hand-over per output for a whole read (every partition's changes): waking the web
        loop is a system call, once a read rather than once a partition."""
        for output, rows in self._live_out.items():
            if rows:
                self.live.publish(output, rows)
                self._live_out[output] = []

    def _submit(self, p: int, outputs: list[Any], newest: int | None) -> None:
        """Hand outputs to the partition's committer; the offsets count as done (the status's
        ``offsets``) only once no analytics of them wait."""
        engine = self.engines[p]
        offsets = None if engine.store.dirty else dict(engine.store.offsets)
        if outputs or offsets is not None:
            self.publishers[p].submit(outputs, offsets, newest)
            self.commits += bool(outputs)
            for kind in {o.kind for o in outputs}:
                metrics.ROWS_OUT.labels("cep", kind).inc(sum(1 for o in outputs if o.kind == kind))

    def _all_committers_busy(self) -> bool:
        with self._lock:
            return bool(self.publishers) and not any(pub.idle() for pub in self.publishers.values())

    def _emit_pending(self) -> bool:
        """Emit the conflated analytics of partitions whose committer is free; whether some
        still wait for theirs."""
        waiting = False
        with self._lock:
            for p, engine in self.engines.items():
                if not engine.store.dirty:
                    continue
                if not self.publishers[p].idle():
                    waiting = True
                    continue
                self._submit(p, engine.emit_pending(), self.unsent.pop(p, None))
        return waiting

    def _messages(self, table: str, p: int, msgs: list[Any], applied: int) -> list[Message]:
        """A partition's messages of one table (log order) for the engine: each fence alone, and
        each run of data messages of one day as one message (its rows, its last offset), decoded
        at once. Messages at or below ``applied`` (already in the state) are left out."""
        out: list[Message] = []
        run: list[Any] = []
        run_date = ""
        open_start = self.days.start_of_open_day(table, p)
        open_date = self.days.open_date.isoformat() if self.days.open_date else ""
        for msg in msgs:
            offset = msg.offset()
            if offset <= applied:
                continue
            headers = msg.headers()
            control = control_of(list(headers)) if headers else None
            if control is not None:
                if run:
                    out.append(self._run(table, p, run, run_date))
                    run = []
                out.append(Message(offset, None, fence_date=self._fence_date(table, p, offset, control)))
                continue
            if open_date and offset >= open_start:
                date = open_date
            else:
                day = self.days.date_of(table, p, offset)
                date = day.isoformat() if day else ""
            if run and date != run_date:
                out.append(self._run(table, p, run, run_date))
                run = []
            run.append(msg)
            run_date = date
        if run:
            out.append(self._run(table, p, run, run_date))
        self.messages_read += len(msgs)
        return out

    def _run(self, table: str, p: int, msgs: list[Any], date: str) -> Message:
        """One run of data messages as one engine message; what the intake refuses goes to the
        dead letters (``_apply`` flushes them before the engine's state write)."""
        rows = self.intake.run(table, p, [(msg.offset(), msg.value()) for msg in msgs],
                               dt.date.fromisoformat(date) if date else None)
        return Message(msgs[-1].offset(), rows, date, count=len(msgs))

    def _committed(self, newest: int | None) -> None:
        """A committer thread committed a transaction whose newest tick is ``newest``."""
        if newest is not None:
            with self._latency_lock:
                self.latency.add(time.time_ns() - newest)

    def _commit_failed(self, exc: BaseException) -> None:
        """Outputs could not be committed: stop, as a reader failure does (the outbox keeps them)."""
        log.error("the CEP committer failed (%s); stopping the worker", exc)
        os._exit(70)

    def _fence_date(self, table: str, p: int, offset: int, control: str) -> str | None:
        """The day a fence closes, once the committed marker confirms it (as the RDB waits)."""
        date, self.days = confirmed_fence_date(self.settings, self.days, table, p, offset, FENCE_WAIT_SECONDS)
        if date is None:
            log.warning("fence %s at %s[%d]@%d has no committed marker (aborted roll?): ignored",
                        control, table, p, offset)
            return None
        return date.isoformat()

    def _idle(self, now: float) -> None:
        """Close the bars of quiet partitions on the wall clock, on the live day only."""
        open_date = self.days.open_date
        wall = time.time_ns()
        if open_date is None or self.calendar.trading_date(wall) != open_date:
            return
        for p in list(self.engines):
            if now - self.last_seen.get(p, now) < self.idle_ns / 1e9:
                continue
            with self._lock:
                engine = self.engines.get(p)
                if engine is None or engine.store.days.get("trade", open_date.isoformat()) != open_date.isoformat():
                    continue
                outputs = engine.advance(wall - self.grace_ns)
                if outputs:
                    self._submit(p, outputs, None)
                self._flush_live()

    # -- housekeeping --------------------------------------------------------------

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self.days = await loop.run_in_executor(None, read_day_state, self.settings)
        self.metadata.publish(self.record())
        try:
            self.peers = await loop.run_in_executor(None, read_metadata, self.settings)
        except Exception as exc:  # noqa: BLE001 - routing keeps the last view
            log.warning("could not read metadata: %s", exc)

    def record(self) -> CepRecord:
        """The metadata record: where this worker answers and what it computes."""
        return CepRecord(
            node=self.node_id, url=self.url, engine=self.engine_name, pid=os.getpid(), rss=rss_bytes(),
            partitions=tuple(sorted(self.assigned)), serving=bool(self.assigned) and set(self.engines) == self.assigned,
            outputs=dict(self.topics.outputs), inputs=tuple(self.names.table(t) for t in self.tables),
            bar_seconds=self.width_ns / 1e9, analytics=tuple(a.name for a in self.analytics),
            open_date=self.days.open_date.isoformat() if self.days.open_date else None,
            live_listeners=self.live.listener_count(),
            # the last input offset in each partition's state, per table: its lag in tickplant status
            applied={t: {p: engine.store.offset(t) for p, engine in list(self.engines.items())}
                     for t in self.tables},
        )

    def holdings(self) -> dict[str, Any]:
        """The metadata record as its JSON object (the status page's first fields)."""
        return node_fields(self.record())

    def status(self) -> dict[str, Any]:
        with self._lock:
            parts = {}
            for p, engine in sorted(self.engines.items()):
                c = engine.counters
                publisher = self.publishers[p]
                parts[str(p)] = {
                    # offsets whose outputs are committed to Kafka; applied_offsets: in the state
                    "offsets": dict(publisher.offsets), "applied_offsets": dict(engine.store.offsets),
                    "pending_outputs": publisher.pending(), "conflated_syms": len(engine.store.dirty),
                    "days": dict(engine.store.days),
                    "watermark": engine.book.wm, "open_bars": len(engine.book.open), "syms": len(engine.store.syms),
                    "late_trades": dict(engine.book.late), "rows": c.rows, "messages": c.messages,
                    "bars_closed": c.bars, "analytics_published": c.analytics, "fences": c.fences,
                    "next_seq": engine.store.next_seq, "transactions": publisher.commits,
                    "commit_ms_avg": round(1000 * publisher.commit_seconds / max(1, publisher.commits), 2),
                }
        return {"node": self.node_id, **self.holdings(), "reads": self.reads, "commits": self.commits,
                "messages_read": self.messages_read,
                "refused": {"messages": self.intake.refused_messages, "rows": self.intake.refused_rows},
                "apply_ms_avg": round(1000 * self.apply_seconds / max(1, self.reads), 2),
                "apply_cpu_ms_avg": round(1000 * self.apply_cpu_seconds / max(1, self.reads), 3),
                "apply_cpu_us_per_message": round(1e6 * self.apply_cpu_seconds / max(1, self.messages_read), 2),
                "republished_after_restart": self.republished,
                "live": {"listeners": self.live.listener_count(), "rows_pushed": self.live.pushed_rows,
                         "dropped": self.live.dropped},
                "rows": sum(v["rows"] for v in parts.values()), "partition_state": parts,
                "visible_latency_ms": self._latency()}

    def _latency(self) -> dict[str, float] | None:
        with self._latency_lock:
            return self.latency.percentiles()

    # -- queries --------------------------------------------------------------------

    def _syms(self, request: Any) -> tuple[dict[int, list[str]], dict[str, str | None]]:
        """The asked syms by local partition, and those held elsewhere (owner URL or None)."""
        raw = request.query.get("syms", "")
        syms = [s for s in raw.split(",") if s]
        local: dict[int, list[str]] = {}
        elsewhere: dict[str, str | None] = {}
        if not syms:
            with self._lock:
                for p, engine in self.engines.items():
                    local[p] = sorted(engine.store.syms)
            return local, elsewhere
        for sym in syms:
            p = partition_for(sym, self.partitions)
            if p in self.engines:
                local.setdefault(p, []).append(sym)
            else:
                elsewhere[sym] = next((r.url for r in self.peers.values()
                                       if isinstance(r, CepRecord) and r.engine == self.engine_name
                                       and p in r.partitions), None)
        return local, elsewhere

    def analytics_view(self, request: Any) -> dict[str, Any]:
        local, elsewhere = self._syms(request)
        out: dict[str, Any] = {}
        unknown: list[str] = []
        with self._lock:
            for p, syms in local.items():
                engine = self.engines.get(p)
                for sym in syms:
                    record = engine.snapshot(sym) if engine else None
                    if record is None:
                        unknown.append(sym)
                    else:
                        out[sym] = record
        return {"engine": self.engine_name, "analytics": out, "elsewhere": elsewhere, "unknown": sorted(unknown)}

    def bars_view(self, request: Any) -> dict[str, Any]:
        q = request.query
        bounds: dict[str, int | None] = {}
        for name in ("start", "end"):
            try:
                bounds[name] = int(q[name]) if q.get(name) else None
            except ValueError:
                raise CepError(f"{name}={q[name]!r} is not an integer (ns since the epoch)") from None
        start, end = bounds["start"], bounds["end"]
        date = q.get("date") or None
        if date:
            try:
                dt.date.fromisoformat(date)
            except ValueError:
                raise CepError(f"date={date!r} is not YYYY-MM-DD") from None
        local, elsewhere = self._syms(request)
        bars: list[dict[str, Any]] = []
        with self._lock:
            for p, syms in sorted(local.items()):
                engine = self.engines.get(p)
                if engine is None:
                    continue
                day = date or engine.store.days.get("trade", "")
                for sym in sorted(syms):
                    bars.extend({**b, "is_open": False} for b in engine.store.closed_bars(day, sym, start, end))
                    bar = engine.book.open_bar(sym, day) if day == engine.store.days.get("trade", "") else None
                    if bar is not None and (start is None or bar["time"] >= start) \
                            and (end is None or bar["time"] < end):
                        bars.append({**bar, "is_open": True})
        return {"engine": self.engine_name, "bar_seconds": self.width_ns / 1e9, "bars": bars, "elsewhere": elsewhere}

    def _routes(self, app: faust.App) -> None:
        worker = self

        @app.page("/cep/v1/analytics")
        class Analytics(View):
            async def get(self, request: Any) -> Any:
                return self.json(worker.analytics_view(request))

        @app.page("/cep/v1/bars")
        class Bars(View):
            async def get(self, request: Any) -> Any:
                try:
                    return self.json(worker.bars_view(request))
                except CepError as exc:
                    return self.error(400, str(exc))

        @app.page("/cep/v1/live")
        class Live(View):
            async def get(self, request: Any) -> Any:
                try:
                    output, syms = worker.live.parse(request.query)
                except LiveFeedError as exc:
                    return self.error(400, str(exc))
                hello = {"node": worker.node_id, "engine": worker.engine_name, "topic": worker.topics.outputs[output]}
                return await worker.live.stream(request, output, syms, hello)

        @app.page("/cep/v1/status")
        class Status(View):
            async def get(self, request: Any) -> Any:
                return self.json(worker.status())


def run_worker(settings: Settings, node_id: str, port: int, **options: Any) -> None:
    """Run one CEP worker until SIGTERM/SIGINT (``tickplant cep run``)."""
    # the committer threads wake from a broker round trip needing the GIL, which the reader holds
    # while it applies: by default they could wait up to 5 ms each time (as the RDB's reader does)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    observe_role(settings, "cep", node_id, level=logging.WARNING)
    worker = CepWorker(settings, node_id, port, **options)
    run_worker_app(worker.app)

