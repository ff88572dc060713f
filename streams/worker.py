"""What the RDB and the CEP workers share: a group kept by Faust, a reader thread, the day.

A Faust event per Kafka message costs more than a zero-latency stream (a message
per row) leaves, so a worker's rows are read by a plain consumer thread that takes
at once whatever is fetched; Faust keeps the group on a membership topic, its
rebalances, the HTTP views and the timers (streams/group.py). A role says what a
partition of the group holds, where its reader starts and what it does with a read;
the rest is done here the same way for both: who holds what, the read loop, the
fences' days, the housekeeping timer and the metadata record it publishes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Consumer, Message, TopicPartition
from faust.types import TP

from ingest.blocks import preload as preload_block_decoder
from ingest.deadletter import DeadLetters
from ingest.eod import DayState, confirmed_fence_date, newer_day_state, read_day_state
from ingest.intake import Intake
from ingest.logread import make_tail_consumer
from ingest.metadata import MetadataPublisher, read_metadata
from ingest.node_record import NODE_VERSION, NodeRecord, node_from_fields
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from streams.group import membership_app, run_worker_app
from streams.observed import add_metrics_page
from tickplant import metrics
from tickplant.config import Settings
from tickplant.metrics import rss_bytes
from tickplant.observe import observe_role

FENCE_WAIT_SECONDS = 30.0
# The reader thread shares the GIL with Faust's loop and its executor threads (and the CEP's
# committers); by default a thread waiting for the GIL waits up to 5 ms for the holder to
# yield, a direct addition to publish -> visible. A shorter interval bounds that wait.
GIL_SWITCH_SECONDS = 0.0005
IDLE_WAIT_SECONDS = 0.05  # the reader's look again when nothing is assigned
# the reader's consumer: what waits in librdkafka's queue counts against the worker's memory
READER_CONSUMER = {"socket.nagle.disable": True, "queued.max.messages.kbytes": 32 * 1024,
                   "fetch.max.bytes": 16 << 20, "max.partition.fetch.bytes": 4 << 20}


class GroupWorker:
    """One worker of a role: its Faust group, its reader thread, the day state, its metadata.

    A subclass sets ``ROLE`` and the size of a read, and gives what is its own:
    ``_release`` / ``_take_over`` (a rebalance), ``_positions`` (where the reader
    starts), ``_between_reads`` and ``_read`` (the data path), ``_close_all``,
    ``holdings`` (its metadata record), ``metric_samples`` and ``_routes``.
    """

    ROLE = ""  # "rdb" | "cep": the metadata's kind, the metrics' role, the logger
    READ_MESSAGES = 10_000  # one read: at most this many messages or bytes
    READ_BYTES = 4 << 20
    CONSUME_STEP = 64  # messages asked of the consumer at a time while a read fills
    app: faust.App  # built by the role once its own state is set up (``_group_app``)

    def __init__(self, settings: Settings, node_id: str, port: int, catalog: SchemaCatalog,
                 tables: list[str], seq: bool = False):
        self.settings = settings
        self.node_id = node_id
        self.port = port
        self.url = settings.node_url(port)  # what the metadata announces: reachable from other hosts
        self.catalog = catalog
        self.tables = tables  # the tables read
        self.names = TopicNames(settings.topic_prefix)
        self.decoder = make_decoder(settings, catalog)
        self.intake = Intake(settings, catalog, self.decoder, DeadLetters(settings, f"{self.ROLE}:{node_id}"), seq=seq)
        self.days = read_day_state(settings)
        self._days_lock = threading.Lock()
        self.log = logging.getLogger(f"tickplant.{self.ROLE}")
        self.lock = threading.RLock()  # the reader applies, rebalances (re)assign, views read: one at a time
        self._reassign = False  # set when the reader must assign its consumer again
        self._halt = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name=f"{self.ROLE}-reader", daemon=True)
        self.metadata = MetadataPublisher(settings, node_id)
        self.peers: dict[str, NodeRecord] = {}  # the other nodes' metadata records
        self.membership = ""  # the membership topic, set by ``_group_app``
        # metrics (tickplant/metrics.py): rows counted per read, state read at scrape time
        self.log_ends = metrics.LogEnds()  # noted by the reader, read by a scrape
        self._rows_in = {t: metrics.ROWS_IN.labels(self.ROLE, t) for t in tables}
        self._apply_seconds = metrics.APPLY_SECONDS.labels(self.ROLE)
        metrics.add_source(self.metric_samples)

    # -- the Faust app: the group, its rebalances, the timer, the views -----------------

    def _group_app(self, group: str, membership: str, datadir: Path, partitions: int) -> faust.App:
        self.membership = membership
        app = membership_app(self.settings, group, membership, datadir, self.port, partitions,
                             self._on_revoked, self._on_assigned, self._refresh, self._on_shutdown)
        self._routes(app)
        add_metrics_page(app)
        return app

    def _parts(self, tps: set[TP]) -> set[int]:
        """The membership topic's partitions among ``tps``: partition p stands for partition p
        of every input topic."""
        return {tp.partition for tp in tps if tp.topic == self.membership}

    async def _on_revoked(self, app: faust.App, revoked: set[TP], **_: Any) -> None:
        """Stop the revoked partitions before the group moves on: the reader holds the lock
        while it applies, so none is half done, and once this returns it skips them."""
        with self.lock:
            self._release(self._parts(revoked))
            self._reassign = True

    async def _on_assigned(self, app: faust.App, assigned: set[TP], **_: Any) -> None:
        """Open the new partitions' state now, so they serve before any new message arrives."""
        await self._take_over(self._parts(assigned))
        with self.lock:
            self._reassign = True
        if not self._reader.is_alive():
            self._reader.start()

    async def _on_shutdown(self, app: faust.App, **_: Any) -> None:
        self._halt.set()
        if self._reader.is_alive():
            self._reader.join(timeout=30)
        self._close_all()
        self.metadata.goodbye()

    # -- the data path ------------------------------------------------------------------

    def _read_loop(self) -> None:
        """The assigned partitions of the input topics, read in bulk from the role's positions:
        wait for the first message only, then take what is already fetched (no batching delay
        added to a quiet stream, whole batches from a busy one)."""
        preload_block_decoder()
        consumer = make_tail_consumer(self.settings, **READER_CONSUMER)
        try:
            while not self._halt.is_set():
                if self._reassign:
                    with self.lock:
                        self._reassign = False
                        consumer.assign(self._positions())
                timeout = self._between_reads(consumer)
                if timeout is None:
                    continue
                first = consumer.poll(timeout)
                if first is None:
                    self._quiet()
                    continue
                began = time.time_ns()
                self._read(self._fill(consumer, first), began)
        except Exception:  # a crash here must end the worker, not leave it serving stale data
            self.log.exception("the %s reader failed; stopping the worker", self.ROLE.upper())
            os._exit(70)
        finally:
            consumer.close()

    def _fill(self, consumer: Consumer, first: Message) -> list[Message]:
        """``first`` and what the consumer holds already, up to a read's size; a message with
        an error is said in the log (librdkafka retries on its own), not dropped unseen."""
        messages, size = [first], len(first.value() or b"")
        while size < self.READ_BYTES and len(messages) < self.READ_MESSAGES:
            more = consumer.consume(min(self.CONSUME_STEP, self.READ_MESSAGES - len(messages)), timeout=0)
            if not more:
                break
            messages.extend(more)
            size += sum(len(m.value() or b"") for m in more)
        good = []
        for msg in messages:
            if msg.error() is None:
                good.append(msg)
            else:
                self.log.warning("reading %s[%s]: %s", msg.topic(), msg.partition(), msg.error())
        return good

    def _idle_wait(self) -> None:
        """Nothing to read (nothing assigned): look again shortly."""
        self._halt.wait(IDLE_WAIT_SECONDS)

    def _fence_date(self, table: str, partition: int, offset: int, control: str) -> dt.date | None:
        """The day a fence closes, once the committed marker confirms it; None (and said) for
        a fence with no committed marker, as an aborted roll leaves."""
        date, state = confirmed_fence_date(self.settings, self.days, table, partition, offset,
                                           FENCE_WAIT_SECONDS)
        self._adopt_days(state)
        if date is None:
            self.log.warning("fence %s at %s[%d]@%d has no committed marker (aborted roll?): ignored",
                             control, table, partition, offset)
        return date

    # -- housekeeping: the day state, the metadata record, the peers ----------------------

    def _adopt_days(self, state: DayState) -> None:
        """Take a read of the control topic unless the one held is newer: the reader thread
        (a fence confirmed) and the housekeeping (a periodic read, slow while the broker is
        away) both read it, and the slower read must not undo the faster one."""
        with self._days_lock:
            self.days = newer_day_state(self.days, state)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self._adopt_days(await loop.run_in_executor(None, read_day_state, self.settings))
        self._on_day_state()
        self._announce()
        try:
            nodes = await loop.run_in_executor(None, read_metadata, self.settings)
            self.peers = self._peers_of(nodes)
        except Exception as exc:  # noqa: BLE001 - routing keeps the last view
            self.log.warning("could not read metadata: %s", exc)

    def _announce(self) -> None:
        self.metadata.publish(node_from_fields(self.node_id, {"version": NODE_VERSION, **self.holdings()},
                                               "this node's holdings"))

    @property
    def reader_id(self) -> int | None:
        """The reader thread's native id (its scheduler figures), once it runs."""
        return self._reader.native_id

    def identity(self) -> dict[str, Any]:
        """What every worker's metadata record starts with."""
        return {"kind": self.ROLE, "url": self.url, "pid": os.getpid(), "rss": rss_bytes(),
                "open_date": self.days.open_date.isoformat() if self.days.open_date else None}

    # -- what each role gives --------------------------------------------------------------

    def _release(self, parts: set[int]) -> None:
        """Drop the revoked partitions' state (called under the lock)."""
        raise NotImplementedError

    async def _take_over(self, parts: set[int]) -> None:
        """Hold exactly ``parts`` from now: open what is new, drop what is not."""
        raise NotImplementedError

    def _positions(self) -> list[TopicPartition]:
        """Where the reader reads from, for every partition held (called under the lock)."""
        raise NotImplementedError

    def _between_reads(self, consumer: Consumer) -> float | None:
        """The reader's housekeeping before a read; the poll's timeout, or None to look again."""
        raise NotImplementedError

    def _quiet(self) -> None:
        """The poll found nothing."""

    def _read(self, messages: list[Message], began: int) -> None:
        """Apply one read (``began``: ns, when its first message was in hand)."""
        raise NotImplementedError

    def _close_all(self) -> None:
        """Close the state held (at shutdown, the reader stopped)."""
        raise NotImplementedError

    def _on_day_state(self) -> None:
        """The day state was read again."""

    def _peers_of(self, nodes: dict[str, NodeRecord]) -> dict[str, NodeRecord]:
        """The nodes this worker routes or forwards to."""
        return nodes

    def holdings(self) -> dict[str, Any]:
        """The metadata record: where this worker answers and what it holds."""
        raise NotImplementedError

    def metric_samples(self) -> Any:
        """The figures read at scrape time (streams/observed.py)."""
        raise NotImplementedError

    def _routes(self, app: faust.App) -> None:
        raise NotImplementedError


def serve(settings: Settings, node_id: str, make: Callable[[], GroupWorker], role: str, **observe: Any) -> None:
    """Run a worker until SIGTERM/SIGINT: ``make`` builds it once the role's logging is set up."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    observe_role(settings, role, node_id, level=logging.WARNING, **observe)
    run_worker_app(make().app)
