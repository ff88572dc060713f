"""End of day: fences, markers, rows in flight during the rollover, the scheduler, the calendar."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from procs import BackgroundFeed

from ingest.eod import (
    DayState,
    EodScheduler,
    TradingCalendar,
    newer_day_state,
    open_first_day,
    read_day_state,
    roll_day,
)
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.records import EodMarker, OpenMarker, PublishedMarker
from ingest.replay import ReplayError, day_ranges, replay_messages, replay_rows
from tickplant.clock import ManualClock, ScaledClock

NOV22 = int(dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC).timestamp() * 1e9)


def test_calendar_midnight_utc():
    cal = TradingCalendar("00:00", "UTC")
    assert cal.trading_date(NOV22) == dt.date(2026, 11, 22)
    assert cal.close_ns(dt.date(2026, 11, 22)) == int(dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()) * 10**9


def test_calendar_fx_rollover_new_york():
    cal = TradingCalendar("17:00", "America/New_York")
    ny = dt.timezone(dt.timedelta(hours=-5))  # November: EST
    before = int(dt.datetime(2026, 11, 23, 16, 59, tzinfo=ny).timestamp() * 1e9)
    after = int(dt.datetime(2026, 11, 23, 17, 0, tzinfo=ny).timestamp() * 1e9)
    assert cal.trading_date(before) == dt.date(2026, 11, 23)
    assert cal.trading_date(after) == dt.date(2026, 11, 24)
    assert cal.close_ns(dt.date(2026, 11, 23)) == after


def test_calendar_rejects_bad_settings():
    with pytest.raises(ValueError, match="HH:MM"):
        TradingCalendar("25:99", "UTC")
    with pytest.raises(ValueError, match="time zone"):
        TradingCalendar("00:00", "Mars/Olympus")


def test_rollover_with_rows_in_flight_puts_every_row_in_exactly_one_day(settings, catalog):
    clock = ManualClock(NOV22)
    assert open_first_day(settings, catalog, clock).open_date == dt.date(2026, 11, 22)
    market = SyntheticMarket(syms=25, seed=2, clock=clock)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        with BackgroundFeed(tp, market, pause=0.005) as feed:
            time.sleep(1.0)
            clock.advance(12 * 3600)  # midnight
            marker = roll_day(settings, catalog, clock)
            time.sleep(1.0)
        tp.flush()
    published = feed.published["trade"]

    assert marker.date == dt.date(2026, 11, 22) and marker.next == dt.date(2026, 11, 23)
    state = read_day_state(settings)
    assert state.open_date == dt.date(2026, 11, 23)

    closed = list(replay_rows(settings, "trade", dt.date(2026, 11, 22), catalog=catalog))
    opened = list(replay_rows(settings, "trade", catalog=catalog))
    assert closed and opened, "the feed ran on both sides of the rollover"
    key = lambda r: (r["sym"], r["time"])  # noqa: E731 - unique per row in this feed
    assert sorted(map(key, closed + opened)) == sorted(map(key, published))
    assert not set(map(key, closed)) & set(map(key, opened))

    # the marker's ranges are exactly the day's: every closed-day message sits below its fence
    for part, (start, end) in marker.tables["trade"].items():
        assert start == 0
        ranges = {part: (start, end)}
        for position, _ in replay_messages(settings, "trade", ranges, catalog):
            assert start <= position.offset < end
    # the open day starts right after each fence
    for part, (_, end) in marker.tables["trade"].items():
        assert state.start_of_open_day("trade", part) == end + 1


def test_two_days_in_a_row_and_a_second_roller_does_not_double_close(settings, catalog):
    clock = ManualClock(NOV22)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=5, seed=9, clock=clock)
    days = {}
    with Tickerplant(settings, catalog) as tp:
        for day in ("2026-11-22", "2026-11-23", "2026-11-24"):
            trades, _ = market.events(100)
            tp.publish_rows("trade", trades)
            tp.flush()
            days[day] = trades
            if day != "2026-11-24":
                clock.advance(24 * 3600)
                assert roll_day(settings, catalog, clock, expected_open=dt.date.fromisoformat(day))
                # a stale roller (it thinks the same day is still open) does nothing
                assert roll_day(settings, catalog, clock, expected_open=dt.date.fromisoformat(day)) is None
    state = read_day_state(settings)
    assert sorted(state.closed) == [dt.date(2026, 11, 22), dt.date(2026, 11, 23)]
    assert state.open_date == dt.date(2026, 11, 24)
    for day, trades in days.items():
        date = dt.date.fromisoformat(day) if day != "2026-11-24" else None
        got = list(replay_rows(settings, "trade", date, catalog=catalog))
        assert sorted(r["time"] for r in got) == sorted(r["time"] for r in trades)
    with pytest.raises(ReplayError, match="no closed day 2026-11-21"):
        day_ranges(settings, "trade", dt.date(2026, 11, 21))


def test_scheduler_rolls_at_the_configured_time(settings, catalog):
    # start 2 simulated seconds before midnight, running 1x: the scheduler must roll by itself
    start = int(dt.datetime(2026, 11, 22, 23, 59, 58, tzinfo=dt.UTC).timestamp() * 1e9)
    clock = ScaledClock(start, speed=1.0)
    rolled = threading.Event()
    scheduler = EodScheduler(settings, catalog, clock, poll_seconds=0.05, on_roll=lambda m: rolled.set())
    scheduler.start()
    try:
        assert not rolled.wait(1.0), "rolled before midnight"
        assert rolled.wait(20), f"no rollover; scheduler error: {scheduler.error!r}"
    finally:
        scheduler.stop()
    assert [m.date.isoformat() for m in scheduler.rolled] == ["2026-11-22"]
    assert clock.now_ns() >= TradingCalendar().close_ns(dt.date(2026, 11, 22))
    assert read_day_state(settings).open_date == dt.date(2026, 11, 23)


def test_a_slower_read_of_the_control_topic_never_undoes_a_newer_one() -> None:
    """A worker's housekeeping reads the day state while its reader confirms a fence; the read
    that began before the roll's marker was committed must not replace the confirmed state, or
    the new day's first rows are dated to the day just closed (and dropped with it). Seen in
    test_faults: a run of offsets right after a fence missing from the RDB."""
    d1, d2 = dt.date(2026, 12, 7), dt.date(2026, 12, 8)
    opened = OpenMarker(d1, 1)
    rolled = EodMarker(d1, d2, 2, {"trade": {0: (0, 96)}})
    stale, confirmed = DayState(), DayState()
    stale.apply(opened)
    for marker in (opened, rolled):
        confirmed.apply(marker)
    assert stale.date_of("trade", 0, 100) == d1  # what the stale read would say of the new day's rows
    held = newer_day_state(confirmed, stale)
    assert held is confirmed and held.date_of("trade", 0, 100) == d2 and held.date_of("trade", 0, 95) == d1
    later = DayState()
    for marker in (opened, rolled, PublishedMarker("trade", d1, 10, 1, 100, 0, 1, "hdb", "pdb-1", 3)):
        later.apply(marker)
    assert newer_day_state(confirmed, later) is later  # a newer read is taken
