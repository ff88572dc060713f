"""Which data node answers for which partitions: the gateway's view of the metadata topic.

Every RDB worker publishes, every few seconds, a record on the compacted
``_tp.metadata`` topic (ingest/metadata.py): its URL, replica group, the
table partitions it holds and the days in them. A thread here tails that
topic, so routing costs nothing per query and a node that stops refreshing
(killed) or says goodbye (a tombstone) leaves the view on its own.

A replica group is one complete copy of the real-time data (one Faust consumer
group: each partition has exactly one owner in it). A query for some
partitions goes to one group: the least busy of those that hold every needed
partition, busy meaning queries this gateway has in flight there plus what the
node reports. A node that fails a request is benched for a few seconds and the
request is retried on another group (or the same group once it has
rebalanced), so the client sees no error while any copy is alive.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ingest.eod import CONTROL_KEY, DayState
from ingest.logread import make_consumer
from ingest.metadata import STALE_SECONDS
from ingest.node_record import (
    CepRecord,
    GatewayRecord,
    NodeRecord,
    RdbRecord,
    TableHeld,
    decode_node,
)
from ingest.records import RecordError
from ingest.topics import TopicNames, partition_counts
from tickplant.config import Settings

log = logging.getLogger(__name__)
BENCH_SECONDS = 5.0


class NoReplica(RuntimeError):
    """No live node holds the partitions asked for: the request can be retried later."""


@dataclass
class Node:
    node: str
    url: str
    replica: str
    record: NodeRecord
    seen: float

    def held(self, table: str) -> TableHeld:
        """What an RDB node holds of ``table`` (nothing, for a node of another kind)."""
        tables = self.record.tables if isinstance(self.record, RdbRecord) else {}
        return tables.get(table) or TableHeld()

    def partitions(self, table: str) -> set[int]:
        return set(self.held(table).partitions)

    def dates(self, table: str) -> set[str]:
        return set(self.held(table).dates)

    @property
    def catching_up(self) -> tuple[str, ...]:
        return self.record.catching_up if isinstance(self.record, RdbRecord) else ()

    @property
    def serving(self) -> bool:
        return not isinstance(self.record, RdbRecord | CepRecord) or self.record.serving

    @property
    def reported_load(self) -> float:
        """Queries the node said it had in flight at its last refresh."""
        if isinstance(self.record, RdbRecord):
            return self.record.inflight_queries
        if isinstance(self.record, GatewayRecord):
            return float(self.record.load.get("inflight_queries", 0))
        return 0.0


@dataclass
class Route:
    """One group's nodes for one request: node URL -> the partitions it answers for."""

    replica: str
    nodes: dict[str, set[int]] = field(default_factory=dict)


class Routing:
    """The live data nodes, kept fresh by a thread tailing the metadata topic."""

    def __init__(self, settings: Settings, stale_seconds: float = STALE_SECONDS):
        self.settings = settings
        names = TopicNames(settings.topic_prefix)
        self.topic = names.metadata
        self.control_topic = names.control
        self.day = DayState()  # the control topic's story: open day, closed and published days
        self.stale_seconds = stale_seconds
        self._records: dict[str, NodeRecord] = {}
        self._lock = threading.Lock()
        self._inflight: dict[str, int] = {}
        self._benched: dict[str, float] = {}
        self._partition_counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._eof: set[str] = set()
        self._control_messages = 0
        self._thread = threading.Thread(target=self._tail, name="gateway-metadata", daemon=True)

    def start(self, wait: float = 10.0) -> Routing:
        self._thread.start()
        self._caught_up.wait(wait)
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _tail(self) -> None:
        consumer = make_consumer(self.settings, **{"enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(self.topic, 0, 0), TopicPartition(self.control_topic, 0, 0)])
            while not self._stop.is_set():
                for msg in consumer.consume(500, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        topic = msg.topic() or ""  # an error event may name no topic
                        if err.code() == KafkaError._PARTITION_EOF:
                            self._eof.add(topic)
                            if len(self._eof) == 2:
                                self._caught_up.set()
                        elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                            self._eof.add(topic)  # a plant never started: nothing to wait for
                        continue
                    raw_key, value = msg.key(), msg.value()
                    if msg.topic() == self.control_topic:
                        if raw_key == CONTROL_KEY and value:
                            with self._lock:
                                if self.day.apply_message(value, f"{self.control_topic}@{msg.offset()}"):
                                    self._control_messages += 1
                        continue
                    if raw_key is None:
                        log.warning("skipped: %s@%s: a node record without a key", self.topic, msg.offset())
                        continue
                    key = raw_key.decode()
                    record = None
                    if value is not None:
                        try:
                            record = decode_node(key, value, f"{self.topic}@{msg.offset()}")
                        except RecordError as exc:
                            log.warning("skipped: %s", exc)
                    with self._lock:
                        if record is None:
                            self._records.pop(key, None)
                        else:
                            self._records[key] = record
        finally:
            consumer.close()

    # -- the view -------------------------------------------------------------------

    def nodes(self, kind: str = "rdb") -> list[Node]:
        """Live nodes of ``kind``: refreshed recently, not benched after a failure."""
        now = time.time()
        out = []
        with self._lock:
            records = list(self._records.values())
            benched = {u for u, until in self._benched.items() if until > now}
        for r in records:
            if r.kind != kind or not r.url:
                continue
            if now - r.updated > self.stale_seconds or r.url in benched:
                continue
            replica = r.replica if isinstance(r, RdbRecord) else "a"
            out.append(Node(r.node, r.url, replica, r, r.updated))
        return sorted(out, key=lambda n: n.node)

    def announced(self, kind: str) -> list[NodeRecord]:
        """Live records of ``kind``, with or without a URL (a PDB answers no queries)."""
        now = time.time()
        with self._lock:
            return [r for r in self._records.values()
                    if r.kind == kind and now - r.updated <= self.stale_seconds]

    def realtime_dates(self, table: str) -> set[dt.date]:
        """Days whose rows are the RDB's to serve: the open day and the closed days the
        HDB has not published yet (from the control topic, so no refresh lag)."""
        with self._lock:
            day = self.day
            published = set(day.published.get(table, set()))
            out = {d for d in day.closed if d not in published}
            if day.open_date is not None:
                out.add(day.open_date)
        return out

    def realtime_rows(self, table: str) -> int:
        """Rows of ``table`` the RDB holds (its real-time days), as its nodes last said: the
        largest replica group's sum."""
        by_replica: dict[str, int] = {}
        for node in self.nodes():
            held = sum(day.rows for day in node.held(table).dates.values())
            by_replica[node.replica] = by_replica.get(node.replica, 0) + held
        return max(by_replica.values(), default=0)

    def published_version(self) -> int:
        """Changes whenever the control topic says something (a day closed or published)."""
        return self._control_messages

    def open_date(self) -> dt.date | None:
        with self._lock:
            return self.day.open_date

    def partition_count(self, table: str) -> int:
        if table not in self._partition_counts:
            topic = TopicNames(self.settings.topic_prefix).table(table)
            self._partition_counts[table] = partition_counts(self.settings, [topic])[topic]
        return self._partition_counts[table]

    def route(self, table: str, partitions: Iterable[int], exclude: Iterable[str] = ()) -> Route:
        """The least busy replica group holding every one of ``partitions`` of ``table``."""
        wanted = set(partitions)
        skip = set(exclude)
        groups: dict[str, list[Node]] = {}
        for node in self.nodes("rdb"):
            if node.serving and node.url not in skip:
                groups.setdefault(node.replica, []).append(node)
        best: tuple[float, Route] | None = None
        for replica, members in sorted(groups.items()):
            route = Route(replica)
            for p in sorted(wanted):
                owner = next((n for n in members if p in n.partitions(table)), None)
                if owner is None:
                    break
                route.nodes.setdefault(owner.url, set()).add(p)
            else:
                with self._lock:
                    load: float = sum(self._inflight.get(url, 0) for url in route.nodes)
                load += sum(n.reported_load for n in members if n.url in route.nodes)
                if best is None or load < best[0]:
                    best = (load, route)
        if best is None:
            held = {r: sorted(set().union(*(n.partitions(table) for n in m))) for r, m in groups.items()}
            raise NoReplica(
                f"no live RDB replica holds {table} partitions {sorted(wanted)} "
                f"(replicas seen: {held or 'none'}); retry shortly"
            )
        return best[1]

    def coverage(self, tables: Iterable[str]) -> tuple[list[str], list[str]]:
        """What the plant cannot answer now (problems) and what it could lose (warnings).

        A problem: a partition of the open day that no caught-up RDB node serves, so a
        query needing it is a 503. A warning: a replica group that lacks partitions
        another group holds (its copy is gone or still catching up), or a role the
        plant runs that nobody announces (no PDB: the day never reaches the HDB).
        """
        problems: list[str] = []
        warnings: list[str] = []
        rdb = self.nodes("rdb")
        if self.open_date() is None:
            return problems, warnings
        for table in tables:
            try:
                wanted = set(range(self.partition_count(table)))
            except (KafkaException, KeyError) as exc:
                problems.append(f"{table}: the log does not say how many partitions it has ({exc})")
                continue
            by_replica: dict[str, set[int]] = {}
            for node in rdb:
                behind = set(node.catching_up)
                served = {p for p in node.partitions(table) if f"{table}[{p}]" not in behind}
                by_replica.setdefault(node.replica, set()).update(served)
            missing = wanted - set().union(*by_replica.values()) if by_replica else wanted
            if missing:
                catching = sorted({n.node for n in rdb if n.catching_up})
                problems.append(f"{table} partitions {sorted(missing)}: no caught-up RDB node serves them"
                                + (f" (catching up: {', '.join(catching)})" if catching else ""))
            for replica, held in sorted(by_replica.items()):
                if held != wanted and not missing:
                    warnings.append(f"replica {replica} serves {table} partitions {sorted(held)} of "
                                    f"{len(wanted)}: one copy fewer for the others")
        if not self.announced("pdb"):
            warnings.append("no PDB announced: the open day will not reach the HDB at its end")
        return problems, warnings

    # -- load and failures --------------------------------------------------------------

    def begin(self, url: str) -> None:
        with self._lock:
            self._inflight[url] = self._inflight.get(url, 0) + 1

    def end(self, url: str) -> None:
        with self._lock:
            self._inflight[url] = max(0, self._inflight.get(url, 0) - 1)

    def bench(self, url: str, seconds: float = BENCH_SECONDS) -> None:
        """Stop routing to ``url`` for a while: it failed a request."""
        with self._lock:
            self._benched[url] = time.time() + seconds
