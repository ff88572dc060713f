"""End of day (kdb+'s ``.u.endofday``): where one day's log ends and the next begins.

The day a row belongs to is decided by the log, not by its timestamp: at
rollover the roller writes a *fence* message into every partition of every
table topic and, in the same Kafka transaction, a marker on the control topic
recording each fence's offset. In partition p of table t, the closing day
holds exactly the rows with ``start <= offset < end`` where ``end`` is the
fence's offset and ``start`` the previous fence's offset + 1 (or 0). A row
racing the rollover lands either before the fence or after it: never both,
never neither, the same for every reader. Rows whose ``time`` falls on the
previous day but land after the fence belong to the new day (late rows).

Control topic records (JSON, one partition, key ``b"day"``)::

  {"kind": "open", "date": "2026-11-22", "at": ns}
  {"kind": "eod",  "date": "2026-11-22", "next": "2026-11-23", "at": ns,
   "tables": {"trade": {"0": [start, end], ...}, ...}}
  {"kind": "published", "table": "trade", "date": "2026-11-22", ...}   (by the HDB writer)

A fixed transactional id fences concurrent rollers, and each re-reads the
control topic inside its transaction, so a day is closed once.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from ingest.framing import CONTROL_HEADER
from ingest.logread import LogReadError, make_consumer, read_ranges, watermarks
from ingest.records import EodMarker, Marker, OpenMarker, encode_marker, read_marker
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, ensure_topics, partition_counts
from tickplant import metrics
from tickplant.clock import Clock, SystemClock
from tickplant.config import Settings

log = logging.getLogger("tickplant.eod")

CONTROL_KEY = b"day"


class EodError(RuntimeError):
    """A rollover could not complete; nothing of it is visible (the transaction aborted)."""


class TradingCalendar:
    """Which trading date an instant belongs to, and when a trading date closes.

    With rollover at 00:00, date D is [D 00:00, D+1 00:00) local time; with a
    later rollover R (FX's 17:00 New York), date D is [D-1 R, D R).
    """

    def __init__(self, rollover: str = "00:00", timezone: str = "UTC"):
        try:
            self.rollover = dt.time.fromisoformat(rollover)
        except ValueError as exc:
            raise ValueError(f"eod_time {rollover!r} is not HH:MM") from exc
        try:
            self.tz = zoneinfo.ZoneInfo(timezone)
        except zoneinfo.ZoneInfoNotFoundError as exc:
            raise ValueError(f"eod_timezone {timezone!r} is not a known time zone") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> TradingCalendar:
        return cls(settings.eod_time, settings.eod_timezone)

    def trading_date(self, t_ns: int) -> dt.date:
        local = dt.datetime.fromtimestamp(t_ns / 1e9, self.tz)
        if self.rollover == dt.time(0) or local.time() < self.rollover:
            return local.date()
        return local.date() + dt.timedelta(days=1)

    def close_ns(self, date: dt.date) -> int:
        """The instant trading date ``date`` ends."""
        day = date + dt.timedelta(days=1) if self.rollover == dt.time(0) else date
        local = dt.datetime.combine(day, self.rollover, self.tz)
        return int(local.timestamp()) * 1_000_000_000


@dataclass
class DayState:
    """What the control topic says: the open day and every closed day's ranges."""

    open_date: dt.date | None = None
    open_starts: dict[str, dict[int, int]] = field(default_factory=dict)
    closed: dict[dt.date, dict[str, dict[int, tuple[int, int]]]] = field(default_factory=dict)
    published: dict[str, set[dt.date]] = field(default_factory=dict)  # table -> dates in the HDB
    markers: list[Marker] = field(default_factory=list)

    def apply(self, marker: Marker) -> None:
        self.markers.append(marker)
        if isinstance(marker, OpenMarker):
            if self.open_date is None:
                self.open_date = marker.date
        elif isinstance(marker, EodMarker):
            self.closed[marker.date] = marker.tables
            self.open_date = marker.next
            self.open_starts = {t: {p: end + 1 for p, (_, end) in parts.items()} for t, parts in marker.tables.items()}
        else:
            self.published.setdefault(marker.table, set()).add(marker.date)

    def apply_message(self, value: bytes, where: str) -> bool:
        """Apply the marker in a control message (a malformed or newer one is logged and
        skipped); whether one was applied."""
        marker = read_marker(value, where)
        if marker is not None:
            self.apply(marker)
        return marker is not None

    def date_of(self, table: str, partition: int, offset: int) -> dt.date | None:
        """The trading date a log position belongs to (None: before every known day)."""
        if offset >= self.start_of_open_day(table, partition):
            return self.open_date
        for date, tables in self.closed.items():
            start, end = tables.get(table, {}).get(partition, (0, 0))
            if start <= offset < end:
                return date
        return None

    def fence_date(self, table: str, partition: int, offset: int) -> dt.date | None:
        """The day a fence at this position closed, if a committed marker says so."""
        for date, tables in self.closed.items():
            if tables.get(table, {}).get(partition, (0, -1))[1] == offset:
                return date
        return None

    def start_of_open_day(self, table: str, partition: int) -> int:
        return self.open_starts.get(table, {}).get(partition, 0)

    def first_unpublished_offset(self, table: str, partition: int) -> int:
        """Where the real-time days of a partition begin in the log: the start of the earliest
        closed day the HDB has not published, else the open day's. What came before is
        history, in the HDB: a copy of the RDB built from the log starts here, not at the
        retained log's first offset."""
        published = self.published.get(table, set())
        for date in sorted(d for d in self.closed if d not in published):
            if partition in self.closed[date].get(table, {}):
                return self.closed[date][table][partition][0]
        return self.start_of_open_day(table, partition)


def newer_day_state(held: DayState, fresh: DayState) -> DayState:
    """The later of two reads of the control topic, which only grows: the one that has
    applied more markers. A read can start before a roll's marker is committed and end
    after another thread has seen that roll confirmed; taking it then would date the new
    day's first rows to the day just closed (and drop them with it once the HDB has it)."""
    return fresh if len(fresh.markers) >= len(held.markers) else held


def read_day_state(settings: Settings) -> DayState:
    """The control topic's story so far (empty if the plant was never started)."""
    topic = TopicNames(settings.topic_prefix).control
    state = DayState()
    if topic not in partition_counts(settings, [topic]):
        return state
    consumer = make_consumer(settings)
    try:
        _, high = watermarks(consumer, topic, 0)
        for msg in read_ranges(consumer, topic, {0: (0, high)}):
            value = msg.value()
            if msg.key() == CONTROL_KEY and value:
                state.apply_message(value, f"{topic}@{msg.offset()}")
    finally:
        consumer.close()
    return state


def read_day_state_patiently(settings: Settings, where: str) -> DayState:
    """``read_day_state``, waiting out a broker that is away (said in the log, with ``where``):
    for a reader that cannot date its rows without it."""
    delay = 0.5
    while True:
        try:
            return read_day_state(settings)
        except (KafkaException, LogReadError) as exc:
            log.warning("%s: control topic unreadable (%s); again in %.1f s", where, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def control_in_flight(settings: Settings) -> bool:
    """Whether a transaction is open on the control topic: its committed end (the last stable
    offset, what a read_committed reader is told) is short of its end."""
    topic = TopicNames(settings.topic_prefix).control
    committed = make_consumer(settings)
    uncommitted = make_consumer(settings, **{"isolation.level": "read_uncommitted"})
    try:
        return watermarks(committed, topic, 0)[1] < watermarks(uncommitted, topic, 0)[1]
    finally:
        committed.close()
        uncommitted.close()


def confirmed_fence_date(settings: Settings, state: DayState, table: str, partition: int, offset: int,
                         wait: float) -> tuple[dt.date | None, DayState]:
    """The day a fence at ``offset`` closes, once the committed marker confirms it.

    A roll commits its fences and its marker in one transaction, but a reader can
    see the fence before the marker's commit reaches the control topic; it
    re-reads the control topic while a transaction is open there, for up to
    ``wait`` seconds. None means no committed marker names this fence: an
    aborted roll, or a fence header on a message no roll wrote, answered at
    once rather than after ``wait`` (a stream of such messages would stall the
    reader that long each). Returns the newer state too.
    """
    deadline = time.monotonic() + wait
    date = state.fence_date(table, partition, offset)
    delay = 0.5
    while date is None:
        try:
            in_flight = control_in_flight(settings)  # first: a marker committed before this is read below
            state = read_day_state(settings)
        except (KafkaException, LogReadError) as exc:
            # the broker is away: the day a fence closes cannot be known without it
            log.warning("fence at %s[%d]@%d: control topic unreadable (%s); again in %.1f s",
                        table, partition, offset, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            deadline = time.monotonic() + wait
            continue
        date = state.fence_date(table, partition, offset)
        if date is not None or not in_flight or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return date, state


def _control_producer(settings: Settings) -> Producer:
    producer = Producer(settings.kafka_config(**{
        "transactional.id": f"{settings.topic_prefix}tickplant-eod",
        "enable.idempotence": True,
        "acks": "all",
    }))
    producer.init_transactions(30)
    return producer


def open_first_day(settings: Settings, catalog: SchemaCatalog, clock: Clock | None = None) -> DayState:
    """Create the plant's topics and write the first 'open' marker if there is none."""
    ensure_topics(settings, catalog)
    state = read_day_state(settings)
    if state.open_date is not None:
        return state
    clock = clock or SystemClock()
    producer = _control_producer(settings)
    state = read_day_state(settings)  # another process may have opened it meanwhile
    if state.open_date is None:
        date = TradingCalendar.from_settings(settings).trading_date(clock.now_ns())
        marker = OpenMarker(date, clock.now_ns())
        producer.begin_transaction()
        producer.produce(TopicNames(settings.topic_prefix).control, key=CONTROL_KEY, value=encode_marker(marker))
        producer.commit_transaction(30)
        state.apply(marker)
    return state


def roll_day(
    settings: Settings,
    catalog: SchemaCatalog,
    clock: Clock | None = None,
    expected_open: dt.date | None = None,
) -> EodMarker | None:
    """Close the open day now; return its marker, or None if it was already closed.

    ``expected_open``: roll only if that is still the open day (the scheduler's
    guard against a day closed meanwhile by ``tickplant eod`` or another roller).
    """
    clock = clock or SystemClock()
    open_first_day(settings, catalog, clock)
    names = TopicNames(settings.topic_prefix)
    producer = _control_producer(settings)  # fences any concurrent roller
    state = read_day_state(settings)
    if expected_open is not None and state.open_date != expected_open:
        return None
    closing = state.open_date
    assert closing is not None
    now = clock.now_ns()
    following = max(closing + dt.timedelta(days=1), TradingCalendar.from_settings(settings).trading_date(now))
    topics = {t.name: names.table(t.name) for t in catalog}
    counts = partition_counts(settings, list(topics.values()))
    fences: dict[str, dict[int, int]] = {t: {} for t in topics}
    errors: list[str] = []

    def delivered(table: str, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{table}[{msg.partition()}]: {err}")
        else:
            fences[table][msg.partition()] = msg.offset()

    producer.begin_transaction()
    try:
        header: list[tuple[str, str | bytes | None]] = [(CONTROL_HEADER, f"eod:{closing.isoformat()}".encode())]
        for table, topic in topics.items():
            for part in range(counts.get(topic, 0)):
                producer.produce(topic, value=b"", partition=part, headers=header,
                                 on_delivery=functools.partial(delivered, table))
        producer.flush(30)
        if errors or any(len(fences[t]) != counts.get(topics[t], 0) for t in topics):
            raise EodError(f"fences not all written: {errors or 'missing delivery reports'}")
        ranges = {
            table: {p: (state.start_of_open_day(table, p), fences[table][p]) for p in sorted(fences[table])}
            for table in topics
        }
        marker = EodMarker(closing, following, now, ranges)
        producer.produce(names.control, key=CONTROL_KEY, value=encode_marker(marker))
        producer.commit_transaction(30)
    except BaseException:
        producer.abort_transaction(30)
        raise
    return marker


class EodScheduler(threading.Thread):
    """Rolls the day at the configured time: the tickerplant's end-of-day timer."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog, clock: Clock | None = None,
                 poll_seconds: float = 0.2, on_roll: Any = None):
        super().__init__(name="tp-eod", daemon=True)
        self.settings = settings
        self.catalog = catalog
        self.clock = clock or SystemClock()
        self.calendar = TradingCalendar.from_settings(settings)
        self.poll_seconds = poll_seconds
        self.on_roll = on_roll
        self.rolled: list[EodMarker] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self.next_roll = 0.0  # Unix seconds: when the open day is due to roll
        self.last_success = 0.0
        metrics.init_labels(metrics.EOD_ROLLS, {"outcome": "ok"}, {"outcome": "failed"})
        metrics.add_source(self.metric_samples)

    def run(self) -> None:
        try:
            state = open_first_day(self.settings, self.catalog, self.clock)
            while not self._halt.is_set():
                assert state.open_date is not None
                due = self.calendar.close_ns(state.open_date)
                self.next_roll = due / 1e9
                if self.clock.now_ns() < due:
                    self._halt.wait(self.poll_seconds)
                    continue
                marker = self._roll(state.open_date)
                if marker is not None:
                    self.rolled.append(marker)
                    if self.on_roll:
                        self.on_roll(marker)
                state = read_day_state(self.settings)
        except BaseException as exc:  # surfaced by the plant's status, not swallowed
            self.error = exc
            raise

    def _roll(self, open_date: dt.date) -> EodMarker | None:
        """``roll_day``, timed and counted by outcome for the metrics (a failure ends the timer)."""
        started = time.perf_counter()
        try:
            marker = roll_day(self.settings, self.catalog, self.clock, expected_open=open_date)
        except BaseException:
            metrics.EOD_ROLLS.labels("failed").inc()
            raise
        if marker is not None:
            metrics.EOD_SECONDS.observe(time.perf_counter() - started)
            metrics.EOD_ROLLS.labels("ok").inc()
            self.last_success = time.time()
        return marker

    def metric_samples(self) -> Any:
        """When the open day is due to roll and when this timer last rolled one (scrape time)."""
        if self.next_roll:
            yield f"{metrics.PREFIX}eod_next_roll_timestamp_seconds", {}, self.next_roll
        yield f"{metrics.PREFIX}eod_last_success_timestamp_seconds", {}, self.last_success

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
