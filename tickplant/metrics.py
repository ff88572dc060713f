"""The plant's Prometheus metrics: every name, in one place, for every role.

Each process (RDB and CEP workers, the gateway, the PDB, the end-of-day timer,
the feed and the tickerplant's own process) exports the same families with the
``tickplant_`` prefix, told apart by a ``role`` label and Prometheus's own
``job``/``instance``; ``tickplant_node_info`` maps an instance to its node id.

Two kinds of figure, so that the data path pays almost nothing:

- events (rows taken in, latencies, dead letters, end-of-day rolls) are
  counted where they happen, once per block, read or request, never per row,
  by the module-level instruments below;
- state (consumer lag, caught-up, memory, RocksDB sizes, subscribers) is read
  at scrape time from what a role already keeps (the RDB's status figures),
  by a *source*: a function a role registers with ``add_source`` that yields
  ``(name, labels, value)`` for the families declared in ``STATE``.

Processes with an HTTP server (RDB, CEP, gateway) answer ``GET /metrics``
(``exposition()``); the others start a small listener with ``serve`` on the
``metrics_port`` setting (0: none).
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "tickplant_"
disable_created_metrics()  # no *_created series: a counter's start is its reset, as Prometheus sees it
CONTENT_TYPE = CONTENT_TYPE_LATEST
log = logging.getLogger("tickplant.metrics")

# latency buckets in seconds: from a zero-latency apply (sub-millisecond) to a slow HDB query
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# -- events: counted where they happen ------------------------------------------------------

ROWS_IN = Counter(f"{PREFIX}rows_in", "Rows a role took in from the log (RDB, CEP, PDB), counted per read",
                  ["role", "table"])
ROWS_OUT = Counter(f"{PREFIX}rows_out", "Rows a role sent on: published and acknowledged (feed), written to "
                   "the HDB (pdb), answered (gateway), engine outputs committed (cep)", ["role", "table"])
PUBLISH_ERRORS = Counter(f"{PREFIX}publish_errors", "Rows Kafka did not acknowledge", ["role", "table"])
DEAD_LETTERS = Counter(f"{PREFIX}dead_letters", "Records this process wrote to the dead-letter topic",
                       ["role", "table"])
APPLY_SECONDS = Histogram(f"{PREFIX}apply_seconds", "Time to apply one read of the log to a role's state",
                          ["role"], buckets=FAST_BUCKETS)
QUERY_SECONDS = Histogram(f"{PREFIX}query_seconds", "Time a node's query view took to answer",
                          ["role", "view"], buckets=FAST_BUCKETS)
GATEWAY_REQUESTS = Counter(f"{PREFIX}gateway_requests", "Gateway HTTP requests by route, status and user",
                           ["route", "status", "user"])
GATEWAY_SECONDS = Histogram(f"{PREFIX}gateway_request_seconds", "Gateway request latency, to the answer's end",
                            ["route"], buckets=FAST_BUCKETS)
EOD_ROLLS = Counter(f"{PREFIX}eod_rolls", "End-of-day rolls by outcome (ok, failed)", ["outcome"])
EOD_SECONDS = Histogram(f"{PREFIX}eod_roll_seconds", "Time to roll the day (fences and marker)",
                        buckets=FAST_BUCKETS)
WRITEDOWNS = Counter(f"{PREFIX}writedowns", "Write-downs of a day to the HDB by table and outcome (ok, failed)",
                     ["table", "outcome"])
SCALER_DECISIONS = Counter(f"{PREFIX}scaler_decisions", "The RDB scaler's decisions by action (out, in, hold)",
                           ["action"])
SCALER_DESIRED = Gauge(f"{PREFIX}scaler_desired_capacity",
                       "The RDB Auto Scaling group's desired capacity after the scaler's last decision")
WRITEDOWN_SECONDS = Histogram(f"{PREFIX}writedown_seconds", "Time to write a day of a table to the HDB",
                              ["table"], buckets=SLOW_BUCKETS)

# -- state: read at scrape time from what the roles keep -----------------------------------

STATE: dict[str, tuple[str, str, tuple[str, ...]]] = {
    f"{PREFIX}node_info": ("gauge", "This process's node id and role (always 1)", ("role", "node", "replica")),
    f"{PREFIX}memory_rss_bytes": ("gauge", "Resident memory of the process", ("role",)),
    f"{PREFIX}memory_budget_bytes": ("gauge", "The process's memory budget (rdb_memory_mb, pdb_memory_mb)",
                                     ("role",)),
    f"{PREFIX}consumer_lag_messages": ("gauge", "Offsets between the log's end and what the role has read, "
                                                "per table partition", ("role", "table", "partition")),
    f"{PREFIX}caught_up": ("gauge", "1 once the role has read a partition it was given up to the log's end "
                                    "(the RDB is routed to only then)", ("role", "table", "partition")),
    f"{PREFIX}serving": ("gauge", "1 when the node answers queries for everything it holds", ("role",)),
    f"{PREFIX}rocksdb_bytes": ("gauge", "Size on disk of a RocksDB shard", ("role", "table", "partition")),
    f"{PREFIX}resident_bytes": ("gauge", "Decoded rows held in memory for queries", ("role",)),
    f"{PREFIX}rows_held": ("gauge", "Rows of a day the node holds", ("role", "table", "date")),
    f"{PREFIX}queries_inflight": ("gauge", "Queries being answered now", ("role",)),
    f"{PREFIX}live_subscribers": ("gauge", "Live subscribers connected (gateway clients, engine listeners)",
                                  ("role",)),
    f"{PREFIX}refused_messages": ("counter", "Log messages the role's intake refused (each reader counts its own)",
                                  ("role",)),
    f"{PREFIX}eod_next_roll_timestamp_seconds": ("gauge", "When the open day is due to roll (Unix time), "
                                                          "as the end-of-day timer sees it", ()),
    f"{PREFIX}eod_last_success_timestamp_seconds": ("gauge", "When the timer last rolled a day (Unix time; "
                                                             "0: not since it started)", ()),
    f"{PREFIX}rows_published": ("counter", "Rows the tickerplant had acknowledged by Kafka", ("role", "table")),
    f"{PREFIX}rows_rejected": ("counter", "Rows the tickerplant refused (schema) and dead-lettered", ("role",)),
}

Sample = tuple[str, dict[str, str], float]
Source = Callable[[], Iterable[Sample]]


class _StateCollector(Collector):
    """Gathers the sources' samples into the families of ``STATE`` at each scrape. A source
    that fails is logged and skipped: the rest of the scrape still answers."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Source | None]] = []
        self._lock = threading.Lock()

    def add(self, source: Source) -> None:
        ref: Callable[[], Source | None]
        try:
            ref = weakref.WeakMethod(source)  # a bound method: dies with its object
        except TypeError:
            ref = lambda: source  # noqa: E731 - a plain function lives as long as the process
        with self._lock:  # the sources of objects gone are dropped here too (a test makes thousands)
            self._sources = [r for r in self._sources if r() is not None]
            self._sources.append(ref)

    def describe(self) -> list[Metric]:
        return []  # families are made at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        values: dict[str, dict[tuple[str, ...], float]] = {}
        with self._lock:
            self._sources = [ref for ref in self._sources if ref() is not None]
            sources = [ref() for ref in self._sources]
        for source in sources:
            if source is None:
                continue
            try:
                samples = list(source())
            except Exception as exc:  # noqa: BLE001 - one role's figure must not fail the scrape
                log.warning("metrics source %s failed: %s: %s", getattr(source, "__qualname__", source),
                            type(exc).__name__, exc)
                continue
            for name, labels, value in samples:
                key = tuple(str(labels.get(n, "")) for n in STATE[name][2])
                family = values.setdefault(name, {})
                # two sources of one series (two publishers in one process): their sum
                family[key] = family.get(key, 0.0) + float(value)
        for name, series in values.items():
            kind, doc, names = STATE[name]
            make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            metric = make(name, doc, labels=list(names))
            for key, value in series.items():
                metric.add_metric(list(key), value)
            yield metric


_STATE = _StateCollector()
REGISTRY.register(_STATE)


def add_source(source: Source) -> None:
    """Register a function yielding ``(name, labels, value)`` for ``STATE`` families, called
    at each scrape (a bound method is held weakly: it goes with its object)."""
    _STATE.add(source)


def rss_bytes() -> int:
    """Resident memory now (from /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_source(role: str, node: str, replica: str = "", budget_bytes: int = 0) -> Source:
    """The figures every role has: who it is, its memory and, where it has one, its budget."""
    def samples() -> Iterator[Sample]:
        yield f"{PREFIX}node_info", {"role": role, "node": node, "replica": replica}, 1
        yield f"{PREFIX}memory_rss_bytes", {"role": role}, rss_bytes()
        if budget_bytes:
            yield f"{PREFIX}memory_budget_bytes", {"role": role}, budget_bytes

    return samples


def init_labels(counter: Counter, *label_sets: dict[str, str]) -> None:
    """Make series exist at 0 before their first event, so that rates and alerts on them
    (a failed roll, a write-down) have a series to evaluate from the start."""
    for labels in label_sets:
        counter.labels(**labels)


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus's text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE


def dir_bytes(path: Any) -> int:
    """Bytes in a directory's files (a RocksDB shard: a few dozen files), 0 if it is gone."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    except OSError:
        return 0
    return total


class LogEnds:
    """Where a reader is in the log and where the log ends, per (topic, partition), noted by
    the reader's own thread between reads (at most every ``every`` seconds; no broker call:
    the high watermark its consumer last fetched). A scrape reads what was noted and never
    calls the consumer itself: a librdkafka consumer called from the event loop while its
    reader thread polls can block both."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self.ends: dict[tuple[str, int], int] = {}
        self.positions: dict[tuple[str, int], int] = {}
        self._due = 0.0

    def note(self, consumer: Any, partitions: Callable[[], list[tuple[str, int]]]) -> None:
        """In the reader's thread: ``partitions()`` (topic, partition) it reads, when due."""
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every
        from confluent_kafka import KafkaException, TopicPartition

        wanted = partitions()
        ends = {}
        try:
            for topic, partition in wanted:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                if high is not None and high >= 0:
                    ends[(topic, partition)] = high
            read = {(tp.topic, tp.partition): tp.offset
                    for tp in consumer.position([TopicPartition(t, p) for t, p in wanted])}
        except KafkaException:
            return  # noted again at the next look
        self.ends, self.positions = ends, read  # replaced whole: a scrape sees one or the other

    def lag(self, role: str, applied: dict[tuple[str, str, int], int]) -> Iterator[Sample]:
        """``consumer_lag_messages`` for each (table, topic, partition) -> the next offset the
        state will apply: the log's end minus the further of that and the consumer's position
        (which passes transaction markers the state never sees)."""
        ends, positions = self.ends, self.positions
        for (table, topic, partition), next_offset in applied.items():
            end = ends.get((topic, partition))
            if end is None:
                continue  # nothing fetched from it yet
            at = max(next_offset, positions.get((topic, partition), -1))
            yield (f"{PREFIX}consumer_lag_messages", {"role": role, "table": table, "partition": str(partition)},
                   max(0, end - at))


class MetricsServer:
    """The small HTTP listener of a process without a server of its own (PDB, EOD timer, feed)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        from prometheus_client import start_http_server

        try:
            self.server, self.thread = start_http_server(port, addr=host)
        except OSError as exc:
            raise OSError(f"the metrics listener cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.port = self.server.server_address[1]
        self.host = host

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(port: int, host: str = "127.0.0.1") -> MetricsServer | None:
    """Start the listener on ``port`` (the ``metrics_port`` setting); 0: none."""
    if not port:
        return None
    server = MetricsServer(port, host)
    log.info("metrics at http://%s:%d/metrics", host, server.port)
    return server
