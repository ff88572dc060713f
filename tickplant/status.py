"""The plant as ``tickplant status`` shows it: the log, then each announced node, with lags.

Read from the log itself (end offsets, the day's fences) and from the nodes'
records on the metadata topic; one typed line per node and table, so that the
status command, the soak run and any other reader agree on what a lag is:
messages in the log past what the node has applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from ingest.eod import read_day_state
from ingest.logread import make_consumer, watermarks
from ingest.metadata import read_metadata
from ingest.node_record import CepRecord, GatewayRecord, NodeRecord, PdbRecord, RdbRecord
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts
from tickplant.config import Settings

LogEnds = dict[tuple[str, int], int]  # (table, partition) -> the log's end offset


@dataclass(frozen=True)
class TableLog:
    table: str
    partitions: int
    messages_today: int
    log_end: int  # summed over partitions


@dataclass(frozen=True)
class RdbLine:
    node: str
    live: bool
    url: str | None
    table: str
    partitions: list[int]
    rows_today: int
    lag: int
    behind: list[int]  # partitions still catching up
    rss_mib: int


@dataclass(frozen=True)
class CepLine:
    node: str
    live: bool
    url: str | None
    engine: str | None
    partitions: list[int]
    lag: int
    serving: bool
    live_listeners: int
    rss_mib: int


@dataclass(frozen=True)
class PdbLine:
    node: str
    live: bool
    host: str | None
    partitions: list[str]
    lag: int
    rows_captured: int
    writing: str | None
    queued: int


@dataclass(frozen=True)
class GatewayLine:
    node: str
    live: bool
    url: str | None
    pid: int | None


def table_logs(settings: Settings) -> tuple[list[TableLog], LogEnds]:
    """Each table's log: partitions, messages since the open day's fence, end offsets."""
    catalog = SchemaCatalog.load(settings.schemas_dir)
    names = TopicNames(settings.topic_prefix)
    topics = {t: names.table(t) for t in catalog.names}
    counts = partition_counts(settings, list(topics.values()))
    state = read_day_state(settings)
    consumer = make_consumer(settings)
    out = []
    all_ends: LogEnds = {}
    try:
        for table, topic in topics.items():
            if topic not in counts:
                out.append(TableLog(table, 0, 0, 0))
                continue
            ends = {p: watermarks(consumer, topic, p)[1] for p in range(counts[topic])}
            all_ends.update({(table, p): end for p, end in ends.items()})
            today = sum(max(0, end - state.start_of_open_day(table, p)) for p, end in ends.items())
            out.append(TableLog(table, counts[topic], today, sum(ends.values())))
    finally:
        consumer.close()
    return out, all_ends


R = TypeVar("R", bound=NodeRecord)


def _records(settings: Settings, kind: type[R]) -> list[tuple[str, R]]:
    return [(node, r) for node, r in sorted(read_metadata(settings, include_stale=True).items())
            if isinstance(r, kind)]


def rdb_lines(settings: Settings, ends: LogEnds) -> list[RdbLine]:
    """A line per RDB worker and table: partitions, rows of the open day, lag in messages."""
    out = []
    for node, record in _records(settings, RdbRecord):
        for table, held in sorted(record.tables.items()):
            lag = sum(max(0, ends.get((table, p), 0) - 1 - held.applied.get(p, -1)) for p in held.partitions)
            behind = sorted(int(c.split("[")[1].rstrip("]")) for c in record.catching_up
                            if c.startswith(f"{table}["))
            today = held.dates.get(record.open_date or "")
            out.append(RdbLine(node, not record.stale, record.url or None, table, list(held.partitions),
                               today.rows if today else 0, lag, behind, round(record.rss / 2**20)))
    return out


def cep_lines(settings: Settings, ends: LogEnds) -> list[CepLine]:
    """A line per CEP worker: where, what it computes, its lag in messages over its inputs."""
    out = []
    for node, r in _records(settings, CepRecord):
        lag = sum(max(0, ends.get((t, p), 0) - 1 - offset)
                  for t, parts in r.applied.items() for p, offset in parts.items())
        out.append(CepLine(node, not r.stale, r.url or None, r.engine or None, list(r.partitions), lag,
                           r.serving, r.live_listeners, round(r.rss / 2**20)))
    return out


def pdb_lines(settings: Settings, ends: LogEnds) -> list[PdbLine]:
    """A line per PDB: where it runs, what it captures, its lag in messages, what it writes."""
    out = []
    for node, r in _records(settings, PdbRecord):
        lag = 0
        for key, nxt in r.next.items():
            table, _, part = key.rstrip("]").partition("[")
            lag += max(0, ends.get((table, int(part)), 0) - nxt)
        out.append(PdbLine(node, not r.stale, r.host or None, list(r.partitions), lag,
                           r.rows_captured, r.writing, r.queued))
    return out


def gateway_lines(settings: Settings) -> list[GatewayLine]:
    """A line per gateway that announced itself (``tickplant gateway run``)."""
    return [GatewayLine(node, not r.stale, r.url or None, r.pid or None) for node, r in _records(settings, GatewayRecord)]


def rdb_lag(settings: Settings) -> int:
    """Messages the live RDB workers have yet to apply, over every table partition."""
    _, ends = table_logs(settings)
    return sum(line.lag for line in rdb_lines(settings, ends) if line.live)
