"""Replay (kdb+'s ``-11!``): read back a retained day, or an offset range, of a table.

The day's bounds come from the control topic's EOD markers (``ingest.eod``);
the open day runs to the log's end as of the call. Rows come out partition by
partition, each in log order, so two replays of the same range are identical.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from ingest.deadletter import DeadLetters
from ingest.decoder import Decoder
from ingest.eod import DayState, read_day_state
from ingest.framing import control_of
from ingest.gather import Gathered
from ingest.intake import Intake
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts
from tickplant.config import Settings
from tickplant.kafka.message import position


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


@dataclass(frozen=True)
class LogMessage:
    """One message of a table's log as a reader gets it: from Kafka, or from the log's archive
    (``sinks.archive``), which keeps all of it so that the log can be written again."""

    partition: int
    offset: int
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    key: bytes | None = None
    timestamp_ms: int = 0
    timestamp_type: int = 0


class MessageSource(Protocol):
    """Where a replay's messages come from, with what decodes them and the day of each."""

    def messages(self, table: str, ranges: dict[int, tuple[int, int]]) -> Iterator[LogMessage]:
        """Each message in the ranges, partition by partition (sorted), in log order."""
        ...

    def decoder(self, catalog: SchemaCatalog) -> Decoder: ...

    def date_of(self, table: str, partition: int, offset: int) -> dt.date | None: ...


class LogSource:
    """The retained log in Kafka (read_committed); the days from the control topic."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = DayState()

    def decoder(self, catalog: SchemaCatalog) -> Decoder:
        return make_decoder(self.settings, catalog)

    def date_of(self, table: str, partition: int, offset: int) -> dt.date | None:
        return self.state.date_of(table, partition, offset)

    def messages(self, table: str, ranges: dict[int, tuple[int, int]]) -> Iterator[LogMessage]:
        self.state = read_day_state(self.settings)
        topic = TopicNames(self.settings.topic_prefix).table(table)
        consumer = make_consumer(self.settings)
        try:
            for part in sorted(ranges):
                start, end = ranges[part]
                end = min(end, watermarks(consumer, topic, part)[1])  # a range past the log's end stops at it
                for msg in read_ranges(consumer, topic, {part: (start, end)}):
                    kind, ts = msg.timestamp()
                    raw = msg.headers() or []
                    pairs = raw.items() if isinstance(raw, dict) else raw
                    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
                    yield LogMessage(part, position(msg)[2], msg.value(), headers, msg.key(), ts, kind)
        finally:
            consumer.close()


def unretained(settings: Settings, table: str, ranges: dict[int, tuple[int, int]]) -> tuple[int, int, int] | None:
    """The first partition of ``ranges`` whose day Kafka has begun to delete (retention): (partition,
    the log's first offset there, the day's start); None while the log holds all of it."""
    topic = TopicNames(settings.topic_prefix).table(table)
    consumer = make_consumer(settings)
    try:
        for part, (start, end) in sorted(ranges.items()):
            low, _ = watermarks(consumer, topic, part)
            if end > start and low > start:
                return part, low, start
    finally:
        consumer.close()
    return None


def replay_messages(
    settings: Settings,
    table: str,
    ranges: dict[int, tuple[int, int]],
    catalog: SchemaCatalog | None = None,
    source: str = "replay",
    seq: bool = False,
    columns: bool = False,
    origin: MessageSource | None = None,
) -> Iterator[tuple[LogPosition, Any]]:
    """Each data message in the ranges, decoded: (position, rows). Fences are skipped; so are
    the rows every consumer refuses (``ingest.intake``: dead-lettered once, if not already).
    ``seq``: each row with its place in the log (``ingest.seq``), as the RDB and HDB keep it.
    ``columns``: a block's rows come as an Arrow table (``Intake.arrow``), not dicts.
    ``origin``: where the messages come from (default: the log in Kafka; ``sinks.archive``
    gives a day's archive, which yields the same rows)."""
    catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
    origin = origin or LogSource(settings)
    intake = Intake(settings, catalog, origin.decoder(catalog), DeadLetters(settings, source), seq=seq)
    for msg in origin.messages(table, ranges):
        if control_of(msg.headers):
            continue
        part, offset = msg.partition, msg.offset
        refused = intake.refused_messages
        take = intake.arrow if columns else intake.rows
        rows = take(table, part, offset, msg.value, origin.date_of(table, part, offset))
        if intake.pending:
            intake.flush()
        if intake.refused_messages == refused or len(rows):
            yield LogPosition(part, offset), rows


def replay_rows(
    settings: Settings,
    table: str,
    date: dt.date | None = None,
    ranges: dict[int, tuple[int, int]] | None = None,
    catalog: SchemaCatalog | None = None,
    seq: bool = False,
    origin: MessageSource | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows of a day (default: the open day so far) or of explicit offset ranges
    (``seq``: with their place in the log, ``ingest.seq``)."""
    if ranges is None:
        ranges = day_ranges(settings, table, date)
    for _, rows in replay_messages(settings, table, ranges, catalog, seq=seq, origin=origin):
        yield from rows


def replay_arrow(
    settings: Settings,
    table: str,
    date: dt.date | None = None,
    ranges: dict[int, tuple[int, int]] | None = None,
    catalog: SchemaCatalog | None = None,
    seq: bool = False,
    origin: MessageSource | None = None,
) -> pa.Table:
    """``replay_rows`` as one Arrow table (blocks read straight into columns: ``ingest.blocks``)."""
    catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
    if ranges is None:
        ranges = day_ranges(settings, table, date)
    gathered = Gathered(catalog[table], seq=seq)
    for _, rows in replay_messages(settings, table, ranges, catalog, seq=seq, columns=True, origin=origin):
        gathered.add(rows)
    got = gathered.table()
    return got if got is not None else catalog[table].to_arrow([], seq=seq)
