"""Replay (kdb+'s ``-11!``): read back a retained day, or an offset range, of a table.

The day's bounds come from the control topic's EOD markers (``ingest.eod``);
the open day runs to the log's end as of the call. Rows come out partition by
partition, each in log order, so two replays of the same range are identical.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ingest.deadletter import DeadLetters
from ingest.eod import DayState, read_day_state
from ingest.framing import control_of
from ingest.gather import Gathered
from ingest.intake import Intake
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts
from tickplant.config import Settings


class ReplayError(ValueError):
    """The day or range asked for is not in the log."""


@dataclass(frozen=True)
class LogPosition:
    """Where a row sits in the log."""

    partition: int
    offset: int


def day_ranges(settings: Settings, table: str, date: dt.date | None = None,
               state: DayState | None = None) -> dict[int, tuple[int, int]]:
    """{partition: (start, end)} of ``table`` on ``date`` (None: the open day, to now)."""
    state = state or read_day_state(settings)
    topic = TopicNames(settings.topic_prefix).table(table)
    counts = partition_counts(settings, [topic])
    if topic not in counts:
        raise ReplayError(f"table {table!r} has no topic {topic!r}")
    if date is not None and date != state.open_date:
        if date not in state.closed:
            known = ", ".join(d.isoformat() for d in sorted(state.closed)) or "none"
            raise ReplayError(
                f"no closed day {date.isoformat()} in the log (closed days: {known}; open day: {state.open_date})"
            )
        return dict(state.closed[date].get(table, {}))
    consumer = make_consumer(settings)
    try:
        return {p: (state.start_of_open_day(table, p), watermarks(consumer, topic, p)[1]) for p in range(counts[topic])}
    finally:
        consumer.close()


def replay_messages(
    settings: Settings,
    table: str,
    ranges: dict[int, tuple[int, int]],
    catalog: SchemaCatalog | None = None,
    source: str = "replay",
    seq: bool = False,
    columns: bool = False,
) -> Iterator[tuple[LogPosition, Any]]:
    """Each data message in the ranges, decoded: (position, rows). Fences are skipped; so are
    the rows every consumer refuses (``ingest.intake``: dead-lettered once, if not already).
    ``seq``: each row with its place in the log (``ingest.seq``), as the RDB and HDB keep it.
    ``columns``: a block's rows come as an Arrow table (``Intake.arrow``), not dicts."""
    catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
    state = read_day_state(settings)
    intake = Intake(settings, catalog, make_decoder(settings, catalog), DeadLetters(settings, source), seq=seq)
    topic = TopicNames(settings.topic_prefix).table(table)
    consumer = make_consumer(settings)
    try:
        for part in sorted(ranges):
            start, end = ranges[part]
            end = min(end, watermarks(consumer, topic, part)[1])  # a range past the log's end stops at it
            for msg in read_ranges(consumer, topic, {part: (start, end)}):
                if control_of(msg.headers()):
                    continue
                offset = msg.offset()
                refused = intake.refused_messages
                take = intake.arrow if columns else intake.rows
                rows = take(table, part, offset, msg.value(), state.date_of(table, part, offset))
                if intake.pending:
                    intake.flush()
                if intake.refused_messages == refused or len(rows):
                    yield LogPosition(part, offset), rows
    finally:
        consumer.close()


def replay_rows(
    settings: Settings,
    table: str,
    date: dt.date | None = None,
    ranges: dict[int, tuple[int, int]] | None = None,
    catalog: SchemaCatalog | None = None,
    seq: bool = False,
) -> Iterator[dict[str, Any]]:
    """The rows of a day (default: the open day so far) or of explicit offset ranges
    (``seq``: with their place in the log, ``ingest.seq``)."""
    if ranges is None:
        ranges = day_ranges(settings, table, date)
    for _, rows in replay_messages(settings, table, ranges, catalog, seq=seq):
        yield from rows


def replay_arrow(
    settings: Settings,
    table: str,
    date: dt.date | None = None,
    ranges: dict[int, tuple[int, int]] | None = None,
    catalog: SchemaCatalog | None = None,
    seq: bool = False,
) -> pa.Table:
    """``replay_rows`` as one Arrow table (blocks read straight into columns: ``ingest.blocks``)."""
    catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
    if ranges is None:
        ranges = day_ranges(settings, table, date)
    gathered = Gathered(catalog[table], seq=seq)
    for _, rows in replay_messages(settings, table, ranges, catalog, seq=seq, columns=True):
        gathered.add(rows)
    got = gathered.table()
    return got if got is not None else catalog[table].to_arrow([], seq=seq)
