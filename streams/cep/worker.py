"""The real-time engine (kdb+ RTE / CEP): per-sym analytics and OHLCV bars from the log.

The workers of one engine form a group (streams/worker.py) on
``_tp.cep.<engine>.assignment``: partition p of it stands for partition p of the
trade and quote topics, a set of syms; the reader starts each from the offsets
stored with the partition's state.

Per partition (``engine.PartitionEngine``): the registry's analytics
(``streams.cep.analytics``) and bars (``streams.cep.bars``: closed by the trade
partition's event-time watermark, by the sym's next bar, at end of day, or by
the idle timer when the partition is quiet on the live day). Each read's effects
go to the partition's RocksDB store in one write with the input offsets and the
numbered outputs; the partition's committer thread then commits the outputs to
``rte.bars`` / ``rte.analytics`` in a Kafka transaction (``outbox``: why that is
exactly-once across kill -9 and rebalances) while the reader goes on.

A record waits for at most one commit in flight: at the live end of the log,
while every committer is busy, the reader lets ticks gather (one apply and one
transaction for all of them), and a partition read while its commit is in flight
updates its state without analytics records; once its committer is free, one
record per sym changed meanwhile goes out (``engine``: conflation; bars are never
held). So the CPU and broker work per tick fall as the load rises instead of
growing with the number of reads. The views are in ``streams.cep.views``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Message as KafkaMessage

from ingest.eod import TradingCalendar
from ingest.framing import control_of
from ingest.schema_topic import SchemaTopic
from ingest.schemas import SchemaCatalog
from streams.cep.analytics import check_schema, instances
from streams.cep.engine import Message, PartitionEngine
from streams.cep.live import LiveFeed
from streams.cep.outbox import PartitionPublisher
from streams.cep.store import PartitionStore
from streams.cep.topics import DEFAULT_ENGINE, CepTopics
from streams.cep.views import CepError, CepViews
from streams.latency import LatencySample
from streams.observed import cep_samples
from streams.reopen import Reopen
from streams.worker import GroupWorker, serve
from tickplant import metrics
from tickplant.config import Settings
from tickplant.kafka.message import position

# a read this small means the reader is at the live end of the log: it then waits for a free
# committer rather than applying a few messages at a time that could not go out anyway
SMALL_READ = 1000
COMMITTER_WAIT_SECONDS = 0.005
# while the live feed has listeners (they get every change at once), a partition commits at most
# this often: fewer, bigger transactions leave the CPU and the broker to the live path (a
# transaction a second costs the broker ~1.2% of a core here: 4 partitions at 0.1 s took ~45%)
LIVE_COMMIT_SECONDS = 0.5
IDLE_CHECK_SECONDS = 0.1
# a partition whose open failed (the broker away at a takeover) is tried again this often at
# first, doubling up to the max: it is neither read nor served until then
OPEN_RETRY_SECONDS = 1.0
OPEN_RETRY_MAX_SECONDS = 15.0
OPEN_LOCK_WAIT_SECONDS = 1.0  # a state still locked by its previous owner (a worker on this host) is waited for this long
TABLES = ("trade", "quote")


def state_path(settings: Settings, engine: str, partition: int) -> Path:
    return Path(settings.data_dir).resolve() / "cep" / engine / f"p{partition:03d}"


class CepWorker(GroupWorker):
    """One worker of a CEP engine: its partitions' engines and publishers."""

    ROLE = "cep"
    READ_MESSAGES = 20_000
    READ_BYTES = 8 << 20
    CONSUME_STEP = 512

    def __init__(self, settings: Settings, node_id: str, port: int, engine: str = DEFAULT_ENGINE,
                 bar_seconds: float = 60.0, grace_seconds: float = 1.0, idle_seconds: float | None = None):
        if bar_seconds <= 0 or grace_seconds < 0:
            raise CepError(f"bar width must be > 0 and grace >= 0 (got {bar_seconds}, {grace_seconds})")
        self.engine_name = engine
        self.width_ns = int(bar_seconds * 1e9)
        self.grace_ns = int(grace_seconds * 1e9)
        self.idle_ns = int((grace_seconds if idle_seconds is None else idle_seconds) * 1e9)
        catalog = SchemaCatalog.load(settings.schemas_dir)
        tables = [t for t in TABLES if t in catalog.tables]
        if "trade" not in tables:
            raise CepError(f"the CEP needs a 'trade' table; {settings.schemas_dir} has {', '.join(catalog.names)}")
        rte_dir = Path(settings.schemas_dir) / "rte"
        self.rte = SchemaCatalog.load(rte_dir)
        check_schema(self.rte["analytics"].avro, str(rte_dir / "analytics.avsc"))
        self.analytics = instances(set(tables))
        self.topics = CepTopics(settings, engine)
        self.partitions = self.topics.ensure(settings, catalog)
        SchemaTopic(settings).register(self.rte)
        super().__init__(settings, node_id, port, catalog, tables)
        self.calendar = TradingCalendar.from_settings(settings)
        self.engines: dict[int, PartitionEngine] = {}
        self.publishers: dict[int, PartitionPublisher] = {}
        self.assigned: set[int] = set()
        self.unopened: Reopen[int] = Reopen(OPEN_RETRY_SECONDS, OPEN_RETRY_MAX_SECONDS)
        self._topics = {self.names.table(t): t for t in tables}
        self.last_seen: dict[int, float] = {}  # partition -> monotonic time of its last trade message
        self.unsent: dict[int, int] = {}  # partition -> newest tick time whose analytics wait (conflated)
        self._free = threading.Event()  # set by a committer that has nothing left to commit
        self._live_end = False  # the last read was small: at the live end of the log
        self._next_idle_check = 0.0
        self.latency = LatencySample()
        self._latency_lock = threading.Lock()  # the partitions' committer threads add to it
        self.reads = 0
        self.messages_read = 0
        self.apply_seconds = 0.0
        self.apply_cpu_seconds = 0.0  # the reader thread's CPU time: a figure a busy machine does not blur
        self.commits = 0
        self.republished = 0
        self.live = LiveFeed()
        self._live_out: dict[str, list[dict[str, Any]]] = {"analytics": [], "bars": []}  # this read's, to push
        self.views = CepViews(self)
        self.app = self._group_app(self.topics.group, self.topics.assignment,
                                   Path(settings.data_dir).resolve() / "cep" / engine / "workers" / node_id,
                                   self.partitions)

    def metric_samples(self) -> Any:
        return cep_samples(self)

    def _routes(self, app: Any) -> None:
        self.views.routes(app)

    # -- who holds what ---------------------------------------------------------

    def _release(self, parts: set[int]) -> None:
        for p in parts:
            self._drop(p)

    def _drop(self, p: int) -> None:
        self.assigned.discard(p)
        self.unopened.opened(p)
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

    async def _take_over(self, parts: set[int]) -> None:
        loop = asyncio.get_running_loop()
        with self.lock:
            for p in [p for p in self.engines if p not in parts]:
                self._drop(p)
            self.assigned = parts
            self.unopened.keep(parts)
        for p in sorted(parts):
            await loop.run_in_executor(None, self._try_open, p)

    def _try_open(self, p: int) -> bool:
        """Open a partition, or leave it to the reader to try again (streams/reopen.py; a
        takeover often follows a broker's death, and the broker is only away for a while)."""
        try:
            self._open(p)
        except Exception as exc:  # noqa: BLE001 - said, kept, and tried again; never a crash
            with self.lock:
                if p in self.assigned:
                    self.unopened.failed(p, f"{type(exc).__name__}: {exc}")
            self.log.warning("partition %d: not opened (%s: %s); tried again shortly", p, type(exc).__name__, exc)
            return False
        with self.lock:
            self.unopened.opened(p)
        return True

    def _open_unopened(self) -> None:
        """Try again the partitions whose open failed (the reader's thread, between reads)."""
        due = self.unopened.due()
        if not due:
            return
        opened = [p for p in due if self._try_open(p)]
        if opened:
            self.log.info("partitions %s opened after an earlier failure", opened)
            with self.lock:
                self._reassign = True  # the reader reads them from their stored offsets
        self.unopened.tried()

    def _open(self, p: int) -> None:
        """Open the partition's state, fence its previous owner, publish what it left unpublished."""
        with self.lock:
            if p in self.engines or p not in self.assigned:
                return
            store = PartitionStore(state_path(self.settings, self.engine_name, p), open_timeout=OPEN_LOCK_WAIT_SECONDS)
            publisher = None
            try:
                engine = PartitionEngine(store, self.analytics, self.rte["bars"], self.rte["analytics"],
                                         self.width_ns, self.grace_ns)
                engine.on_change = self._push_live
                publisher = PartitionPublisher(self.settings, self.topics.transactional_id(self.settings, p),
                                               self.topics.outputs, p)
                self.republished += publisher.recover(store)
            except BaseException:
                if publisher is not None:
                    publisher.close()
                store.close()  # releases the RocksDB lock for the next try
                raise
            publisher.pace = lambda: LIVE_COMMIT_SECONDS if self.live.listening() else 0.0
            publisher.start(store, self._committed, self._commit_failed, self._free)
            self.engines[p], self.publishers[p] = engine, publisher
            self.last_seen[p] = time.monotonic()

    async def _on_shutdown(self, app: Any, **kwargs: Any) -> None:
        self.live.close()
        await super()._on_shutdown(app, **kwargs)

    def _close_all(self) -> None:
        with self.lock:
            for p in list(self.engines):
                self._drop(p)

    # -- the data path ------------------------------------------------------------

    def _positions(self) -> list[TopicPartition]:
        return [TopicPartition(self.names.table(t), p, self.engines[p].store.offset(t) + 1)
                for p in sorted(self.engines) for t in self.tables]

    def _between_reads(self, consumer: Consumer) -> float | None:
        self._open_unopened()
        if not self.engines:
            self._idle_wait()
            return None
        self.log_ends.note(consumer, self._reading)
        now = time.monotonic()
        if now >= self._next_idle_check:
            self._next_idle_check = now + IDLE_CHECK_SECONDS
            self._idle(now)
        waiting = self._emit_pending()
        if self._live_end and not self.live.listening() and self._all_committers_busy():
            # what is read now could not go out before a commit ends: let it gather (one apply
            # and one transaction for all of it, less CPU a tick); not when the live feed has
            # listeners: they get each read's changes at once
            self._free.wait(COMMITTER_WAIT_SECONDS)
            self._free.clear()
            return None
        # conflated analytics wait for a committer: look again soon, not in 50 ms
        return 0.002 if waiting else 0.05

    def _read(self, messages: list[KafkaMessage], began: int) -> None:
        by_part: dict[int, dict[str, list[Any]]] = {}
        for msg in messages:
            topic, part, _ = position(msg)
            by_part.setdefault(part, {}).setdefault(self._topics[topic], []).append(msg)
        self.reads += 1
        self._live_end = len(messages) < SMALL_READ
        self._apply(by_part)

    def _reading(self) -> list[tuple[str, int]]:
        """The (topic, partition)s the reader reads now."""
        with self.lock:
            return [(self.names.table(t), p) for p in sorted(self.engines) for t in self.tables]

    def _apply(self, by_part: dict[int, dict[str, list[Any]]]) -> None:
        """Apply each partition's messages (one RocksDB write each) and hand their outputs to
        the partition's committer (``outbox``), which commits them while the reader reads on."""
        started, cpu = time.perf_counter(), time.thread_time()
        with self.lock:
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
        with self.lock:
            return bool(self.publishers) and not any(pub.idle() for pub in self.publishers.values())

    def _emit_pending(self) -> bool:
        """Emit the conflated analytics of partitions whose committer is free; whether some
        still wait for theirs."""
        waiting = False
        with self.lock:
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
                out.append(Message(offset, None, fence_date=self._fence_day(table, p, offset, control)))
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

    def latency_ms(self) -> dict[str, float] | None:
        """Tick -> committed, as percentiles (the committer threads add to it)."""
        with self._latency_lock:
            return self.latency.percentiles()

    def _commit_failed(self, exc: BaseException) -> None:
        """Outputs could not be committed: stop, as a reader failure does (the outbox keeps them)."""
        self.log.error("the CEP committer failed (%s); stopping the worker", exc)
        os._exit(70)

    def _fence_day(self, table: str, p: int, offset: int, control: str) -> str | None:
        """The day a fence closes, once the committed marker confirms it (as the RDB waits)."""
        date = self._fence_date(table, p, offset, control)
        return date.isoformat() if date is not None else None

    def _idle(self, now: float) -> None:
        """Close the bars of quiet partitions on the wall clock, on the live day only."""
        open_date = self.days.open_date
        wall = time.time_ns()
        if open_date is None or self.calendar.trading_date(wall) != open_date:
            return
        for p in list(self.engines):
            if now - self.last_seen.get(p, now) < self.idle_ns / 1e9:
                continue
            with self.lock:
                engine = self.engines.get(p)
                if engine is None or engine.store.days.get("trade", open_date.isoformat()) != open_date.isoformat():
                    continue
                outputs = engine.advance(wall - self.grace_ns)
                if outputs:
                    self._submit(p, outputs, None)
                self._flush_live()

    # -- housekeeping --------------------------------------------------------------

    def holdings(self) -> dict[str, Any]:
        """The metadata record: where this worker answers and what it computes."""
        return {
            **self.identity(), "engine": self.engine_name,
            "partitions": sorted(self.assigned), "serving": bool(self.assigned) and set(self.engines) == self.assigned,
            "unopened": {str(p): why for p, why in sorted(self.unopened.why.items())},
            "outputs": self.topics.outputs, "inputs": [self.names.table(t) for t in self.tables],
            "bar_seconds": self.width_ns / 1e9, "analytics": [a.name for a in self.analytics],
            "live_listeners": self.live.listener_count(),
            # the last input offset in each partition's state, per table: its lag in tickplant status
            "applied": {t: {str(p): engine.store.offset(t) for p, engine in list(self.engines.items())}
                        for t in self.tables},
        }


def run_worker(settings: Settings, node_id: str, port: int, **options: Any) -> None:
    """Run one CEP worker until SIGTERM/SIGINT (``tickplant cep run``)."""
    serve(settings, node_id, lambda: CepWorker(settings, node_id, port, **options), "cep")
