"""kdb+'s window join (``/v1/wj``, ``Client.wj``; gateway/windowjoin.py) against an independent numpy one.

The reference is kdb+'s definition written with ``searchsorted`` over each
date's and sym's quotes in publish order, sorted stably by time: ``wj`` takes
the quotes from the last one at or before ``time + lo`` (kdb+'s ``bin``; the
first quote when there is none) to the last at or before ``time + hi``;
``wj1`` those from the first at or after ``time + lo`` (``binr``). Hypothesis
drives the SQL builder straight against chDB (many examples: tied time
stamps, empty windows, quotes before the first trade, trades of one day
next to another day's quotes); a real plant (a broker, an RDB worker holding
today, yesterday in the HDB's files, the gateway over HTTP) answers a few
windows of each kind today and as history, with its entitlements and query log.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import uvicorn
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from procs import Worker, wait_until

from gateway.app import create_app
from gateway.auth import Users, hash_key
from gateway.client import Client, GatewayError
from gateway.windowjoin import (
    WJ_SETTINGS,
    Aggregate,
    BadWindowJoin,
    parse_aggs,
    parse_offset,
    parse_window,
    wj_sql,
)
from ingest.eod import open_first_day
from ingest.publisher import Tickerplant
from ingest.seq import SEQ
from sinks.hdb import pool
from sinks.store import HdbStore
from sinks.writedown import write_partition
from streams.partial import typed_source
from tickplant.clock import ManualClock
from tickplant.kafka.broker import free_port

D1, D2 = dt.date(2026, 11, 22), dt.date(2026, 11, 23)
SYMS = ["AAPL", "MSFT", "IBM"]
S = 10**9
QUOTE_COLUMNS = ["time", "bid", "ask", "bsize", "asize", "exchange"]
NUMERIC = ["bid", "ask", "bsize", "asize"]
# every function, named as kdb+ names them (the column's name) and by the user
AGGS = "count,first:bid,last:ask,lo:min:bid,hi:max:ask,avg:bsize,sum:asize,sbid:sum:bid,qt:last:time,fx:first:exchange"


def day_ns(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, 9, 30, tzinfo=dt.UTC).timestamp()) * S


# -- the reference ------------------------------------------------------------------------------


def reference_wj(trades: pd.DataFrame, quotes: pd.DataFrame, lo: int, hi: int, mode: str,
                 aggs: Sequence[Aggregate]) -> list[dict[str, Any]]:
    """Rows in publish order (``time`` in ns) -> each trade with its aggregates, by date, sym,
    time and publish order."""
    books = {key: {c: q[c].tolist() for c in q.columns}
             for key, q in quotes.sort_values("time", kind="stable").groupby(["date", "sym"], sort=False)}
    empty: dict[str, list] = {c: [] for c in quotes.columns}
    out = []
    order = trades.reset_index(names="order").sort_values(["date", "sym", "time", "order"], kind="stable")
    for trade in order.itertuples():
        book = books.get((trade.date, trade.sym), empty)
        times = np.array(book["time"], dtype=np.int64)
        start, end = trade.time + lo, trade.time + hi
        if mode == "wj":
            first = max(int(np.searchsorted(times, start, "right")) - 1, 0)
        else:
            first = int(np.searchsorted(times, start, "left"))
        last = int(np.searchsorted(times, end, "right"))
        row = {"date": trade.date, "sym": trade.sym, "time": trade.time, "price": trade.price}
        for a in aggs:
            row[a.name] = _over(a.function, book[a.column][first:last] if a.column else [None] * max(0, last - first))
        out.append(row)
    return out


def _over(function: str, values: list[Any]) -> Any:
    """kdb+'s aggregate of a window's values; of none: count and sum 0, the others null."""
    if function == "count":
        return len(values)
    if function == "sum":
        return sum(values) if values else 0
    if not values:
        return None
    if function == "first":
        return values[0]
    if function == "last":
        return values[-1]
    if function == "avg":
        return sum(values) / len(values)
    return min(values) if function == "min" else max(values)


def compare(got: pa.Table, want: list[dict[str, Any]], aggs: Sequence[Aggregate]) -> None:
    rows = got.to_pylist()
    assert len(rows) == len(want)
    for g, w in zip(rows, want, strict=True):
        assert (g["date"], str(g["sym"]), _ns(g["time"]), g["price"]) == (w["date"], w["sym"], w["time"], w["price"])
        for a in aggs:
            value = _ns(g[a.name]) if a.column == "time" and g[a.name] is not None else g[a.name]
            if a.function in ("avg", "sum") and isinstance(w[a.name], float):
                assert value == pytest.approx(w[a.name], rel=1e-12), (a, g, w)
            else:
                assert value == w[a.name], (a, g, w)


def _ns(value: Any) -> int:
    """A time as Arrow hands it to Python (datetime, microseconds) or pandas (Timestamp) -> ns."""
    return int(pd.Timestamp(value).value)


# -- the SQL straight against chDB, many examples -----------------------------------------------


def frames(trades: list[tuple], quotes: list[tuple], unit: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(date, sym, instant) tuples in publish order -> rows with distinct prices and bids (a wrong
    pick shows), ``time`` on a grid of ``unit`` ns; the days' grids overlap, so a trade has
    another day's quotes at its times, never to be taken."""
    t = pd.DataFrame(trades, columns=["date", "sym", "slot"])
    q = pd.DataFrame(quotes, columns=["date", "sym", "slot"])
    t = t.assign(time=day_ns(D1) + t.slot * unit, price=100 + 0.01 * np.arange(len(t)), size=1 + np.arange(len(t)),
                 exchange="N", cond="").drop(columns="slot")
    q = q.assign(time=day_ns(D1) + q.slot * unit, bid=50 + 0.01 * np.arange(len(q)), ask=60 + 0.03 * np.arange(len(q)),
                 bsize=100 + np.arange(len(q)) * 7 % 13, asize=200 + np.arange(len(q)),
                 exchange=[f"X{i % 5}" for i in range(len(q))]).drop(columns="slot")
    return t, q


def run_sql(catalog: Any, trades: pd.DataFrame, quotes: pd.DataFrame, lo: int, hi: int, mode: str,
            aggs: Sequence[Aggregate]) -> pa.Table:
    """``wj_sql`` over the rows as the gateway's engine hands a day of RDB rows to chDB, ``seq``
    each row's place in its table's publish order."""
    tables: dict[str, pa.Table] = {}

    def source(table: str, frame: pd.DataFrame) -> str:
        schema = catalog[table]
        parts = [typed_source(schema.stored_schema, schema.stored_columns, day,
                              schema.to_arrow(rows.drop(columns="date").to_dict("records"), seq=True), tables)
                 for day, rows in frame.assign(**{SEQ: np.arange(len(frame))}).groupby("date")]
        return f"({' UNION ALL '.join(parts)})"

    sql = wj_sql(source("trade", trades), source("quote", quotes), ["price"], aggs, "1", lo, hi, mode)
    return pool("chdb://").run(sql, WJ_SETTINGS, tables=tables)


tick = st.tuples(st.sampled_from([D1, D1, D2]), st.sampled_from(SYMS), st.integers(0, 24))


@hsettings(max_examples=30, deadline=None, database=None)
@given(trades=st.lists(tick, min_size=1, max_size=25), quotes=st.lists(tick, min_size=1, max_size=60),
       lo=st.integers(-10, 6), width=st.integers(0, 12), unit=st.sampled_from([1, 1000, 250 * 10**6]))
def test_wj_and_wj1_sql_match_numpy(catalog, trades, quotes, lo, width, unit):
    aggs = parse_aggs(AGGS, QUOTE_COLUMNS, NUMERIC, ["date", "sym", "time", "price"])
    t, q = frames(trades, quotes, unit)
    for mode in ("wj", "wj1"):
        got = run_sql(catalog, t, q, lo * unit, (lo + width) * unit, mode, aggs)
        compare(got, reference_wj(t, q, lo * unit, (lo + width) * unit, mode, aggs), aggs)


def test_kdb_s_own_example_and_the_difference_between_wj_and_wj1(catalog):
    """code.kx.com's wj example, then quotes tied at a window's start: wj keeps the last
    published of them (the prevailing one), wj1 all; a window before any quote is empty."""
    aggs = parse_aggs("max:ask,min:bid,count,fb:first:bid", QUOTE_COLUMNS, NUMERIC, ["price"])
    trades = [(D1, "IBM", s) for s in (0, 3, 7)]
    t, q = frames(trades, [(D1, "IBM", s) for s in range(9)], S)
    q = q.assign(ask=[101.0, 103, 103, 104, 104, 107, 108, 107, 108], bid=[98.0, 99, 102, 103, 103, 104, 106, 106, 107])
    got = run_sql(catalog, t, q, -2 * S, S, "wj", aggs).to_pylist()
    assert [(r["ask"], r["bid"]) for r in got] == [(103, 98), (104, 99), (108, 104)]  # as kdb+ prints it
    t, q = frames([(D1, "IBM", 4), (D1, "IBM", 1)], [(D1, "IBM", 2), (D1, "IBM", 2), (D1, "IBM", 2), (D1, "IBM", 3)], S)
    wj = run_sql(catalog, t, q, -2 * S, 0, "wj", aggs).to_pylist()
    wj1 = run_sql(catalog, t, q, -2 * S, 0, "wj1", aggs).to_pylist()
    # at 1 s nothing yet (nulls, count 0); at 4 s wj starts at the last of the three at 2 s, wj1 at the first
    assert [(r["count"], r["bid"], r["fb"], r["ask"]) for r in wj] == [(0, None, None, None), (2, 50.02, 50.02, 60.09)]
    assert [(r["count"], r["bid"], r["fb"]) for r in wj1] == [(0, None, None), (4, 50.0, 50.0)]


def test_window_parameters_are_checked_and_said_plainly():
    assert parse_offset("lo", "-2s") == -2 * S and parse_offset("lo", "-1500") == -1_500_000_000
    assert parse_offset("hi", "250us") == 250_000 and parse_offset("hi", "1.5m") == 90 * S
    assert parse_offset("lo", "-0D00:00:02.5") == -2_500_000_000 and parse_offset("hi", "0") == 0
    for value, words in (("2 seconds", "not a time offset"), ("1.5ns", "whole number"), ("2d", "not a time offset"),
                         ("25h", "more than a day"), ("", "lo= is required")):
        with pytest.raises(BadWindowJoin, match=words):
            parse_offset("lo", value)
    with pytest.raises(BadWindowJoin, match="window is empty: lo=1s is after hi=0s"):
        parse_window("1s", "0s")
    for aggs, words in (("", "aggs= is required"), ("median:bid", "no function 'median'"),
                        ("max:spread", "no column 'spread'"), ("sum:exchange", "sum takes a numeric column"),
                        ("max:bid,min:bid", "already has a column 'bid'"), ("max:time", "already has a column 'time'"),
                        ("a:b:c:d", "is not \\[name:\\]function:column"), ("1x:max:bid", "not a column name")):
        with pytest.raises(BadWindowJoin, match=words):
            parse_aggs(aggs, QUOTE_COLUMNS, NUMERIC, ["date", "sym", "time", "price"])


# -- through the plant ---------------------------------------------------------------------------


def tied_day(day: dt.date, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A minute of three syms on a 100 ms grid: about four quotes per instant and sym, so window
    edges (trades sit on the grid, windows are whole 100 ms) fall on tied quotes; the first
    quotes come after some trades, and trades end before the last quotes."""
    rng = np.random.default_rng(seed)
    slot = 100_000_000
    qs = np.sort(rng.integers(5, 600, 2400))
    ts = np.sort(rng.integers(0, 560, 600))
    quotes = pd.DataFrame({"date": day, "sym": np.array(SYMS)[rng.integers(0, 3, len(qs))], "time": day_ns(day) + qs * slot,
                           "bid": 100 + 0.001 * np.arange(len(qs)), "ask": 101 + 0.001 * np.arange(len(qs)),
                           "bsize": rng.integers(1, 9, len(qs)) * 100, "asize": 100 + np.arange(len(qs)),
                           "exchange": np.array(["N", "Q", "P"])[rng.integers(0, 3, len(qs))]})
    trades = pd.DataFrame({"date": day, "sym": np.array(SYMS)[rng.integers(0, 3, len(ts))], "time": day_ns(day) + ts * slot,
                           "price": 100 + 0.001 * np.arange(len(ts)), "size": 1 + np.arange(len(ts)) % 97,
                           "exchange": "N", "cond": ""})
    return trades, quotes


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.drop(columns="date").to_dict("records")


USERS = {"users": {
    "ops": {"keys": [hash_key("ops-key-000000000")], "admin": True},
    "alice": {"keys": [hash_key("alice-key-0000000")], "tables": {
        "trade": {"columns": ["time", "sym", "price"]}, "quote": {"columns": ["time", "sym", "bid"]}}},
    "bob": {"keys": [hash_key("bob-key-000000000")], "tables": {"trade": {}}},
}}


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread, on a free port: its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def plant(broker, catalog, tmp_path_factory) -> Iterator[tuple[Any, str, dict]]:
    """Yesterday (D1) in the HDB's files as the write-down writes them (in log order, so seq
    follows publish order), today (D2) published in blocks into an RDB worker."""
    tmp = tmp_path_factory.mktemp("wj")
    settings = broker.settings.replace(topic_prefix=f"w{uuid.uuid4().hex[:8]}.", data_dir=tmp / "plant",
                                       batch_interval_ms=20, max_block_rows=97)
    days = {D1: tied_day(D1, seed=21), D2: tied_day(D2, seed=22)}
    store = HdbStore.from_settings(settings)
    for name, frame in zip(("trade", "quote"), days[D1], strict=True):
        write_partition(store, catalog[name], D1, catalog[name].to_arrow(records(frame)).to_batches(max_chunksize=500),
                        {0: (0, 1)})
    open_first_day(settings, catalog, ManualClock(day_ns(D2)))
    worker = Worker(settings, "rdb-wj", tmp).start()
    try:
        with Tickerplant(settings, catalog, mode="batch") as tp:
            for name, frame in zip(("quote", "trade"), reversed(days[D2]), strict=True):
                tp.publish_rows(name, records(frame))
        worker.wait_serving()
        wait_until(lambda: all(sum(worker.client.count(t, date=D2.isoformat()).values()) == len(f)
                               for t, f in zip(("trade", "quote"), days[D2], strict=True)),
                   60, "today in the RDB", worker.log_tail)
        with served(create_app(settings, users=Users.from_dict(USERS))) as url, \
                Client(url, api_key="ops-key-000000000", timeout=60) as ops:
            wait_until(lambda: ops.health()["rdb_nodes"], 30, "the gateway to see the RDB")
            yield settings, url, days
    finally:
        worker.stop()


WINDOWS = [("-2s", "0s", "wj"), ("-2s", "0s", "wj1"), ("0", "0", "wj1"), ("300ms", "1500ms", "wj"),
           ("-0D00:00:00.5", "500ms", "wj1")]


@pytest.mark.parametrize("day", [D1, D2], ids=["history", "today"])
def test_wj_through_the_gateway_matches_numpy(plant, day):
    _, url, days = plant
    trades, quotes = days[day]
    aggs = parse_aggs(AGGS, QUOTE_COLUMNS, NUMERIC, ["date", "sym", "time", "price"])
    with Client(url, api_key="ops-key-000000000", timeout=60) as ops:
        counts = []
        for lo, hi, mode in WINDOWS:
            got = ops.wj(start=day.isoformat(), lo=lo, hi=hi, aggs=AGGS, mode=mode, columns=["price"])
            want = reference_wj(trades, quotes, parse_offset("lo", lo), parse_offset("hi", hi), mode, aggs)
            assert got.column_names == ["date", "sym", "time", "price", *(a.name for a in aggs)]
            compare(got, want, aggs)
            counts += [r["count"] for r in want]
    assert 0 in counts and max(counts) > 4, "the windows should hold none to many quotes"


def test_wj_over_both_days_keeps_each_trade_to_its_own_day_and_answers_json(plant):
    _, url, days = plant
    aggs = parse_aggs("count,max:ask", QUOTE_COLUMNS, NUMERIC, [])
    resp = httpx.get(f"{url}/v1/wj", params={"start": D1.isoformat(), "end": "today", "syms": "MSFT,IBM",
                                              "lo": "-1s", "hi": "1s", "aggs": "count,max:ask", "columns": "price,size"},
                     headers={"X-API-Key": "ops-key-000000000"}, timeout=60)
    assert resp.status_code == 200, resp.text
    rows = resp.json()["rows"]
    assert list(rows[0]) == ["date", "sym", "time", "price", "size", "count", "ask"]
    want = []
    for day in (D1, D2):
        trades, quotes = days[day]
        want += reference_wj(trades[trades.sym.isin(["MSFT", "IBM"])], quotes, -S, S, "wj", aggs)
    assert [(r["date"], r["sym"], r["price"], r["count"], r["ask"]) for r in rows] == \
        [(w["date"].isoformat(), w["sym"], w["price"], w["count"], w["ask"]) for w in want]


def test_entitlements_bad_parameters_and_the_query_log(plant):
    settings, url, days = plant
    trades, quotes = days[D2]
    aggs = parse_aggs("min:bid", QUOTE_COLUMNS, NUMERIC, [])
    with Client(url, api_key="alice-key-0000000", timeout=60) as alice:
        got = alice.wj(lo="-1s", hi=0, aggs="min:bid", columns=["price"])  # her columns: fine
        compare(got, reference_wj(trades, quotes, -S, 0, "wj", aggs), aggs)
        with pytest.raises(GatewayError) as refused:
            alice.wj(lo="-1s", hi=0, aggs="max:ask", columns=["price"])
        assert refused.value.status == 403 and "ask" in refused.value.reason
        with pytest.raises(GatewayError) as refused:
            alice.wj(lo="-1s", hi=0, aggs="min:bid")  # every trade column: size is not hers
        assert refused.value.status == 403 and "size" in refused.value.reason
    with Client(url, api_key="bob-key-000000000", timeout=60) as bob, pytest.raises(GatewayError) as refused:
        bob.wj(lo="-1s", hi=0, aggs="count")
    assert refused.value.status == 403 and "quote" in refused.value.reason
    with Client(url, api_key="ops-key-000000000", timeout=60) as ops:
        for params, words in (({"lo": "-2 s"}, "lo='-2 s' is not a time offset"),
                              ({"mode": "wj2"}, "mode='wj2'"), ({"aggs": "max:spread"}, "no column 'spread'"),
                              ({"hi": "-3s"}, "window is empty"), ({"start": "yesterday"}, "start='yesterday'")):
            with pytest.raises(GatewayError) as bad:
                ops._named("/v1/wj", None, None, **{"lo": "-1s", "hi": "0", "aggs": "count", **params})
            assert bad.value.status == 400 and words in bad.value.reason, bad.value.reason
        with pytest.raises(GatewayError, match="unauthorized|401"):
            Client(url, api_key="nobody-key-00000000").wj(lo="-1s", hi=0, aggs="count")
        logged = ops.sql("SELECT user, outcome, status, error FROM query_log WHERE endpoint = 'wj' "
                         "ORDER BY ts").to_pylist()
    outcomes = {(r["user"], r["outcome"]) for r in logged}
    assert {("alice", "ok"), ("alice", "denied"), ("bob", "denied"), ("ops", "bad request")} <= outcomes
    assert any("wj2" in (r["error"] or "") for r in logged)
