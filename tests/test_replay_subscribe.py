"""Replay (-11!) of days and offset ranges, and sym-filtered subscriptions (.u.sub)."""

from __future__ import annotations

import threading
import time

import pytest

from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.replay import day_ranges, replay_arrow, replay_messages, replay_rows
from ingest.subscribe import Subscription
from tickplant.clock import ManualClock

T0 = 1_795_300_000_000_000_000


def test_replay_of_a_closed_day_is_exactly_what_was_published(settings, catalog):
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=12, seed=4, clock=clock)
    trades, quotes = market.events(2000)
    with Tickerplant(settings, catalog) as tp:
        tp.publish_rows("trade", trades)
        tp.publish_rows("quote", quotes)
    marker = roll_day(settings, catalog, clock)
    with Tickerplant(settings, catalog) as tp:  # the next day's rows must not leak in
        tp.publish_rows("trade", market.events(100)[0])
    date = marker.date

    first = list(replay_rows(settings, "trade", date, catalog=catalog))
    again = list(replay_rows(settings, "trade", date, catalog=catalog))
    assert first == again  # deterministic order: partition by partition, log order
    assert sorted(first, key=lambda r: r["time"]) == trades

    table = replay_arrow(settings, "quote", date, catalog=catalog)
    assert table.num_rows == len(quotes)
    assert table.schema.field("time").type.unit == "ns"
    assert sorted(table.column("time").cast("int64").to_pylist()) == [q["time"] for q in quotes]
    assert sorted(table.column("bid").to_pylist()) == sorted(q["bid"] for q in quotes)


def test_replay_of_an_offset_range(settings, catalog):
    rows = [{"time": i, "sym": "AAPL", "price": float(i), "size": i, "exchange": "N", "cond": ""} for i in range(50)]
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", rows)
        part = tp._partition(catalog["trade"], rows[0])
    got = list(replay_rows(settings, "trade", ranges={part: (10, 20)}, catalog=catalog))
    assert got == rows[10:20]
    positions = [p.offset for p, _ in replay_messages(settings, "trade", {part: (45, 100)}, catalog)]
    assert positions == [45, 46, 47, 48, 49]
    assert day_ranges(settings, "trade")[part] == (0, 50)


def test_subscription_filters_syms_and_starts_from_now_or_start_of_day(settings, catalog):
    market = SyntheticMarket(syms=15, seed=8)
    early, _ = market.events(300)
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", early)
        tp.flush()  # "now" is the log's end when the subscription starts
        wanted = {"AAPL", "MSFT"}
        from_sod = Subscription(settings, "trade", sorted(wanted), since="sod", catalog=catalog)
        from_now = Subscription(settings, "trade", sorted(wanted), since="now", catalog=catalog)
        late, _ = market.events(300)
        tp.publish_rows("trade", late)
        tp.flush()

    def drain(sub: Subscription, expected: int) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + 20
        while len(got) < expected and time.monotonic() < deadline:
            got.extend(sub.poll(0.2))
        got.extend(sub.poll(0.5))  # nothing more may come
        sub.close()
        return got

    expect_sod = [r for r in early + late if r["sym"] in wanted]
    expect_now = [r for r in late if r["sym"] in wanted]
    assert expect_now and len(expect_sod) > len(expect_now)
    got_sod = drain(from_sod, len(expect_sod))
    got_now = drain(from_now, len(expect_now))
    key = lambda r: (r["sym"], r["time"])  # noqa: E731
    assert sorted(got_sod, key=key) == sorted(expect_sod, key=key)
    assert sorted(got_now, key=key) == sorted(expect_now, key=key)


def test_subscription_sees_rows_published_while_it_waits(settings, catalog):
    with Tickerplant(settings, catalog, mode="zero") as tp:
        sub = Subscription(settings, "quote", ["IBM"], catalog=catalog)
        got: list[dict] = []
        reader = threading.Thread(target=lambda: [got.extend(sub.poll(0.2)) for _ in range(40) if len(got) < 3])
        reader.start()
        for i in range(3):
            tp.publish("quote", {"time": i, "sym": "IBM", "bid": 1.0, "ask": 1.1, "bsize": 1, "asize": 1, "exchange": "N"})
            tp.publish("quote", {"time": i, "sym": "ZZZ", "bid": 1.0, "ask": 1.1, "bsize": 1, "asize": 1, "exchange": "N"})
            tp.flush()
        reader.join()
        sub.close()
    assert [r["time"] for r in got] == [0, 1, 2]
    assert {r["sym"] for r in got} == {"IBM"}


def test_subscription_rejects_unknown_table_and_mode(settings, catalog):
    with pytest.raises(ValueError, match="unknown table 'trades'"):
        Subscription(settings, "trades", catalog=catalog)
    with pytest.raises(ValueError, match="since must be"):
        Subscription(settings, "trade", since="yesterday", catalog=catalog)
