"""The RDB nodes' figures, from what the plant already says about itself.

Every RDB worker publishes its record on the metadata topic (ingest/metadata.py):
partitions held and the offset applied in each, rows per date, RSS, memory
budget, CPU seconds, whether each shard has caught up, and its EC2 instance. With
the log's end offsets that gives each node's lag; with the previous record, its
CPU use. These are what the CloudWatch publisher sends and the scaler reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ingest.logread import make_consumer, watermarks
from ingest.metadata import read_metadata
from ingest.node_record import RdbRecord
from ingest.topics import TopicNames
from tickplant.config import Settings


def role_of(replica: str) -> str:
    """The CloudWatch Role of a replica's RDB nodes: ``rdb`` for the default one, ``rdb-b``, ..."""
    return "rdb" if replica in ("", "a") else f"rdb-{replica}"


@dataclass(frozen=True)
class NodeFigures:
    """One RDB node at one moment."""

    node: str
    replica: str
    instance_id: str
    url: str
    serving: bool
    leaving: bool
    rows: int  # rows held, every table and unpublished date
    partitions: tuple[int, ...]
    catching_up: tuple[str, ...]
    lag: int  # messages in the log past what it applied, over its partitions
    memory_used: int  # bytes (RSS)
    memory_budget: int  # bytes (rdb_memory_mb)
    cpu_s: float | None  # process CPU seconds so far
    updated: float  # when the node wrote the record
    cpu_pct: float | None = None  # of one core, since the previous record (None: no previous one)
    # (table, partition, date) it holds rows of, with the day's status: what protection looks at
    days: tuple[tuple[str, int, str, str, int], ...] = field(default=())

    @property
    def role(self) -> str:
        return role_of(self.replica)

    @property
    def memory_pct(self) -> float | None:
        return 100.0 * self.memory_used / self.memory_budget if self.memory_budget else None


def log_ends(settings: Settings, tables: set[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of these tables."""
    names = TopicNames(settings.topic_prefix)
    consumer = make_consumer(settings)
    try:
        return {(t, p): watermarks(consumer, names.table(t), p)[1]
                for t in sorted(tables) for p in range(settings.partitions)}
    finally:
        consumer.close()


def node_figures(record: RdbRecord, ends: dict[tuple[str, int], int],
                 previous: NodeFigures | None = None) -> NodeFigures:
    """One RDB node's record as figures; ``previous`` (the same node's last figures) gives CPU use."""
    rows, lag = 0, 0
    partitions: set[int] = set()
    days: list[Any] = []
    for table, held in record.tables.items():
        for p in held.partitions:
            partitions.add(p)
            lag += max(0, ends.get((table, p), 0) - 1 - held.applied.get(p, -1))
        for date, day in held.dates.items():
            rows += day.rows
            # a record says rows per table and date, not per partition: every partition held
            # counts as holding the day (the safe side for protection)
            days.extend((table, p, date, day.status, day.rows) for p in held.partitions)
    cpu = record.cpu_s
    cpu_pct = None
    if previous is not None and previous.cpu_s is not None and cpu is not None:
        elapsed = record.updated - previous.updated
        if elapsed > 0 and cpu >= previous.cpu_s:  # not a restarted process
            cpu_pct = 100.0 * (cpu - previous.cpu_s) / elapsed
    return NodeFigures(
        node=record.node, replica=record.replica, instance_id=record.instance_id,
        url=record.url, serving=record.serving, leaving=record.leaving,
        rows=rows, partitions=tuple(sorted(partitions)), catching_up=record.catching_up,
        lag=lag, memory_used=record.rss, memory_budget=record.memory_budget, cpu_s=cpu,
        updated=record.updated, cpu_pct=cpu_pct, days=tuple(days),
    )


class FigureReader:
    """Reads the RDB nodes' figures again and again, remembering each node's last for CPU use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.last: dict[str, NodeFigures] = {}

    def read(self) -> list[NodeFigures]:
        records = [r for r in read_metadata(self.settings).values() if isinstance(r, RdbRecord)]
        tables = {t for r in records for t in r.tables}
        ends = log_ends(self.settings, tables) if tables else {}
        figures = []
        for record in records:
            previous = self.last.get(record.node)
            if previous is not None and previous.updated == record.updated:
                # the node has not written since: its CPU figure stands
                figures.append(replace(node_figures(record, ends), cpu_pct=previous.cpu_pct))
            else:
                figures.append(node_figures(record, ends, previous))
        self.last = {f.node: f for f in figures}
        return sorted(figures, key=lambda f: f.node)
