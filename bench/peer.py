"""The plant beside QuestDB: the same day, the same questions, same machine, same run.

    python -m bench peer [--quick] [--rows N] [--repeat R]

QuestDB 9.2.2 runs from its Maven Central jar (``tickplant.peer.questdb``: its
own temp root, free port, stopped at the end). The plant: one RDB worker and
the gateway as processes of their own (as ``tickplant up`` runs them) on the
shared broker. One generated day (``--rows`` trades, default 1M, twice as many
quotes, 50 syms, many equal time stamps) as pandas DataFrames feeds both
through their own Python clients: QuestDB's ``Sender.dataframe`` (ILP over
HTTP) into WAL tables, the plant's ``Tickerplant.publish_frame`` (batch mode).
"DataFrame -> queryable" runs until a count over each one's HTTP SQL endpoint
returns every row.

Then the same questions over HTTP/JSON (QuestDB ``/exec``, the gateway's
``/v1/sql`` and named endpoints), today (the plant: rows in the RDB) and as
history (the plant: after the roll, the day written to the HDB from the log,
as the PDB writes it; QuestDB: the same data, the question phrased on that
past day, which is all QuestDB has). Each answer pair is checked (counts
exactly, sums within a tolerance: open, close and as-of picks may differ
between equal time stamps) and the run fails loudly if they disagree. Each
figure is the median of ``--repeat`` runs, the plant's and QuestDB's
alternated so both see the same load; the ratio is plant time / QuestDB time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from bench.common import Report, Result, fresh, run_alone
from gateway.windowjoin import parse_aggs, wj_sql
from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import EXCHANGES, sym_names
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from sinks.backfill import backfill
from streams.client import RdbClient, RdbClientError
from tickplant.clock import ManualClock
from tickplant.config import Settings
from tickplant.kafka.broker import free_port
from tickplant.peer.questdb import QuestDB, questdb_version
from tickplant.supervisor import Child

T0_NS = 1_795_339_800_000_000_000  # 2026-11-22 09:30 UTC, the day's open
DAY = "2026-11-22"
SESSION_NS = 390 * 60 * 10**9  # 09:30-16:00
SYMS = 50
ONE_SYM = "AAPL"

QDB_TABLES = {
    "trade": "CREATE TABLE trade (time TIMESTAMP_NS, sym SYMBOL, price DOUBLE, size LONG, exchange SYMBOL, "
             "cond VARCHAR) TIMESTAMP(time) PARTITION BY DAY WAL",
    "quote": "CREATE TABLE quote (time TIMESTAMP_NS, sym SYMBOL, bid DOUBLE, ask DOUBLE, bsize LONG, asize LONG, "
             "exchange SYMBOL) TIMESTAMP(time) PARTITION BY DAY WAL",
}


# -- the day ---------------------------------------------------------------------------------

def generate_day(trades: int, seed: int = 14) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trades, quotes) of one session, deterministic: ``2 * trades`` quotes over 50 syms, a
    random walk of mids, each trade at the touch of a quote event (same time stamp). A fifth
    of the events share the time stamp of the one before (bursts), and every sym opens with a
    quote at 09:30:00 exactly, so every trade has a prevailing quote."""
    rng = np.random.default_rng(seed)
    names = np.array(sym_names(SYMS))
    n = 2 * trades
    weights = rng.uniform(0.5, 2.0, SYMS)
    sym = np.concatenate([np.arange(SYMS), rng.choice(SYMS, n - SYMS, p=weights / weights.sum())])
    t = np.sort(rng.integers(1, SESSION_NS, n - SYMS))
    tie = rng.random(len(t)) < 0.2
    idx = np.arange(len(t))
    idx[tie] = 0
    np.maximum.accumulate(idx, out=idx)  # a tied event takes the time of the last untied one
    t = np.concatenate([np.zeros(SYMS, np.int64), t[idx]]) + T0_NS
    # per-sym random walk of the mid: cumulative sums within each sym's events, in time order
    steps = rng.normal(0.0, 0.0002, n)
    order = np.argsort(sym, kind="stable")
    walk = np.cumsum(steps[order])
    starts = np.searchsorted(sym[order], np.arange(SYMS))
    walk -= np.repeat(np.concatenate([[0.0], walk[starts[1:] - 1]]), np.diff(np.append(starts, n)))
    mid = np.empty(n)
    mid[order] = rng.uniform(20, 500, SYMS)[sym[order]] * np.exp(walk)
    half = np.maximum(0.01, np.round(mid * 0.0001, 2))
    bid, ask = np.round(mid - half, 2), np.round(mid + half, 2)
    exchange = np.array(EXCHANGES)[rng.integers(0, len(EXCHANGES), n)]
    times = pd.to_datetime(t, unit="ns")
    quotes = pd.DataFrame({
        "time": times, "sym": names[sym], "bid": bid, "ask": ask,
        "bsize": rng.integers(1, 50, n) * 100, "asize": rng.integers(1, 50, n) * 100, "exchange": exchange,
    })
    at = np.sort(rng.choice(np.arange(SYMS, n), trades, replace=False))  # after every sym's opening quote
    buy = rng.random(trades) < 0.5
    trade_frame = pd.DataFrame({
        "time": times[at], "sym": names[sym[at]], "price": np.where(buy, ask[at], bid[at]),
        "size": rng.integers(1, 20, trades) * 100, "exchange": exchange[at],
        "cond": np.where(rng.random(trades) < 0.05, "@", ""),
    })
    return trade_frame, quotes


# -- the questions -----------------------------------------------------------------------------

@dataclass
class Question:
    label: str
    plant: str  # SQL with {d} for the date predicate, or "GET /path?query" for a named endpoint
    questdb: str  # SQL with {day}
    key: tuple[str, ...]  # columns that identify a row, compared exactly
    exact: tuple[str, ...] = ()  # compared exactly
    approx: tuple[str, ...] = ()  # their sums compared within ``tolerance`` (relative)
    tolerance: float = 1e-9
    history: bool = True  # also asked of a past day


# The window join, kdb+'s wj1 over [time - 2 s, time]: the max ask, min bid and count of each trade's
# sym's quotes. QuestDB 9.2.2 has no WINDOW JOIN (it came later) and its window functions look back only
# (no FOLLOWING), so it is asked the same as windowed aggregates over trades and quotes in one time
# series, quotes before trades at an equal time, read at the trades' rows.
WJ_AGGS = "ask_hi:max:ask,bid_lo:min:bid,count"
_QDB_WJ = """SELECT sym, time, price, ask_hi, bid_lo, cnt AS count FROM (
    SELECT kind, sym, time, price,
           max(ask) OVER (PARTITION BY sym ORDER BY time RANGE BETWEEN '2' SECOND PRECEDING AND CURRENT ROW) ask_hi,
           min(bid) OVER (PARTITION BY sym ORDER BY time RANGE BETWEEN '2' SECOND PRECEDING AND CURRENT ROW) bid_lo,
           count(bid) OVER (PARTITION BY sym ORDER BY time RANGE BETWEEN '2' SECOND PRECEDING AND CURRENT ROW) cnt
    FROM ((SELECT 'q' kind, sym, time, bid, ask, null::double price FROM quote WHERE time IN '{day}'%s
           UNION ALL
           SELECT 't' kind, sym, time, null::double bid, null::double ask, price FROM trade WHERE time IN '{day}'%s)
          ORDER BY time, kind) timestamp(time)
) WHERE kind = 't'"""


def wj_questions(one_sym: str) -> list[Question]:
    only = f" AND sym = '{one_sym}'"
    aggs = parse_aggs(WJ_AGGS, ["bid", "ask"], ["bid", "ask"], ["date", "sym", "time", "price"])
    plant_wj = wj_sql("trade", "quote", ["price"], aggs, "{d}", -2 * 10**9, 0, "wj1")
    return [
        Question("window join (wj1, 2 s before), max ask - min bid by sym",
                 f"SELECT sym, count() AS n, sum(count) AS quotes, avg(ask_hi - bid_lo) AS range FROM ({plant_wj}) "
                 "GROUP BY sym ORDER BY sym",
                 f"SELECT sym, count() n, sum(count) quotes, avg(ask_hi - bid_lo) range FROM ({_QDB_WJ % ('', '')}) "
                 "ORDER BY sym",
                 key=("sym",), exact=("n",), approx=("quotes", "range"), tolerance=1e-3),
        Question(f"window join (wj1, 2 s before), rows of one sym ({one_sym})",
                 f"GET /v1/wj?syms={one_sym}&start={{start}}&lo=-2s&hi=0s&mode=wj1&aggs={WJ_AGGS}&columns=price",
                 _QDB_WJ % (only, only),
                 key=(), exact=(), approx=("price", "ask_hi", "bid_lo", "count"), tolerance=1e-4),
    ]


def questions(one_sym: str) -> list[Question]:
    d_t = "(SELECT sym, time, price, size FROM trade WHERE {d}%s)"
    d_q = "(SELECT sym, time, bid, ask FROM quote WHERE {d}%s)"
    only = f" AND sym = '{one_sym}'"
    q_only = f" AND sym = '{one_sym}'"
    return [
        Question("count and vwap by sym",
                 "SELECT sym, count() AS n, sum(price * size) / sum(size) AS vwap FROM trade WHERE {d} "
                 "GROUP BY sym ORDER BY sym",
                 "SELECT sym, count() n, sum(price * size) / sum(size) vwap FROM trade WHERE time IN '{day}' "
                 "GROUP BY sym ORDER BY sym",
                 key=("sym",), exact=("n",), approx=("vwap",)),
        Question("1-min OHLCV bars, all syms",
                 "SELECT sym, toStartOfMinute(time) AS bar, argMin(price, time) AS open, max(price) AS high, "
                 "min(price) AS low, argMax(price, time) AS close, sum(size) AS volume, count() AS n FROM trade "
                 "WHERE {d} GROUP BY sym, bar ORDER BY sym, bar",
                 "SELECT time bar, sym, first(price) open, max(price) high, min(price) low, last(price) close, "
                 "sum(size) volume, count() n FROM trade WHERE time IN '{day}' SAMPLE BY 1m ALIGN TO CALENDAR "
                 "ORDER BY sym, bar",
                 key=("sym", "bar"), exact=("volume", "n"), approx=("high", "low", "open", "close"),
                 tolerance=1e-5),
        Question(f"one sym's day of trades ({one_sym})",
                 f"SELECT time, sym, price, size, exchange, cond FROM trade WHERE {{d}} AND sym = '{one_sym}' "
                 "ORDER BY time",
                 f"SELECT time, sym, price, size, exchange, cond FROM trade WHERE time IN '{{day}}' "
                 f"AND sym = '{one_sym}'",
                 key=(), exact=("size",), approx=("price",)),
        Question("last quote per sym, SQL (plant: argMax; QuestDB: LATEST ON)",
                 "SELECT sym, argMax(bid, time) AS bid, argMax(ask, time) AS ask, max(time) AS ts FROM quote "
                 "WHERE {d} GROUP BY sym ORDER BY sym",
                 "SELECT sym, bid, ask, time ts FROM quote WHERE time IN '{day}' LATEST ON time PARTITION BY sym "
                 "ORDER BY sym",
                 key=("sym",), exact=("ts",), approx=("bid", "ask"), tolerance=1e-3),
        Question("last quote per sym, plant's named /v1/last",
                 "GET /v1/last?table=quote",
                 "SELECT sym, bid, ask, time FROM quote WHERE time IN '{day}' LATEST ON time PARTITION BY sym "
                 "ORDER BY sym",
                 key=("sym",), exact=("time",), approx=("bid", "ask"), tolerance=1e-3, history=False),
        Question("as-of join, avg spread at trade time by sym",
                 "SELECT t.sym AS sym, count() AS n, avg(q.ask - q.bid) AS spread FROM " + d_t % "" +
                 " AS t ASOF LEFT JOIN " + d_q % "" + " AS q ON t.sym = q.sym AND t.time >= q.time "
                 "GROUP BY sym ORDER BY sym",
                 "SELECT t.sym sym, count() n, avg(q.ask - q.bid) spread FROM (trade WHERE time IN '{day}') t "
                 "ASOF JOIN (quote WHERE time IN '{day}') q ON (sym) ORDER BY sym",
                 key=("sym",), exact=("n",), approx=("spread",), tolerance=1e-3),
        Question(f"as-of join, rows of one sym ({one_sym})",
                 "SELECT t.time AS time, t.price AS price, t.size AS size, q.bid AS bid, q.ask AS ask FROM " +
                 d_t % only + " AS t ASOF LEFT JOIN " + d_q % q_only +
                 " AS q ON t.sym = q.sym AND t.time >= q.time ORDER BY time",
                 f"SELECT t.time time, t.price price, t.size size, q.bid bid, q.ask ask FROM (trade WHERE time IN "
                 f"'{{day}}' AND sym = '{one_sym}') t ASOF JOIN (quote WHERE time IN '{{day}}' AND sym = "
                 f"'{one_sym}') q ON (sym)",
                 key=(), exact=("size",), approx=("price", "bid", "ask"), tolerance=1e-4),
        *wj_questions(one_sym),
    ]


# -- asking -------------------------------------------------------------------------------------

class AnswerMismatch(AssertionError):
    """The plant and QuestDB gave different answers to the same question."""


def _plant_rows(resp: httpx.Response) -> list[dict[str, Any]]:
    if resp.status_code != 200:
        raise RuntimeError(f"gateway {resp.request.url}: {resp.status_code} {resp.text[:300]}")
    return resp.json()["rows"]


def _questdb_rows(resp: httpx.Response) -> list[dict[str, Any]]:
    body = resp.json()
    if resp.status_code != 200 or "error" in body:
        raise RuntimeError(f"QuestDB: {resp.status_code} {str(body)[:300]}")
    names = [c["name"] for c in body["columns"]]
    return [dict(zip(names, row, strict=True)) for row in body["dataset"]]


def _norm(value: Any) -> Any:
    """Times as ns since the epoch (both answer ISO-8601 text), the rest as they are."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] in "T ":
        return int(np.datetime64(value.rstrip("Z").replace(" ", "T"), "ns").astype(np.int64))
    return value


def compare(q: Question, plant: list[dict[str, Any]], other: list[dict[str, Any]], when: str) -> None:
    """Raise AnswerMismatch unless the two answers agree (see the module doc)."""
    where = f"{q.label} ({when})"
    if len(plant) != len(other):
        raise AnswerMismatch(f"{where}: the plant answered {len(plant):,} rows, QuestDB {len(other):,}")

    def keyed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: tuple(_norm(r[k]) for k in q.key)) if q.key else rows

    a, b = keyed(plant), keyed(other)
    for col in q.key + q.exact:
        left = [_norm(r[col]) for r in a]
        right = [_norm(r[col]) for r in b]
        if col in q.exact and not q.key:  # unordered rows (equal time stamps): compare the totals
            left, right = [sum(left)], [sum(right)]
        if left != right:
            bad = next(i for i, (x, y) in enumerate(zip(left, right, strict=True)) if x != y)
            raise AnswerMismatch(f"{where}: column {col} differs at row {bad}: plant {left[bad]!r}, "
                                 f"QuestDB {right[bad]!r}")
    for col in q.approx:
        x = sum(r[col] or 0.0 for r in a)
        y = sum(r[col] or 0.0 for r in b)
        if abs(x - y) > q.tolerance * max(abs(x), abs(y), 1e-12):
            raise AnswerMismatch(f"{where}: sum of {col} is {x!r} on the plant, {y!r} on QuestDB "
                                 f"(beyond a relative {q.tolerance:g})")


def paired(plant: Callable[[], Any], other: Callable[[], Any], repeat: int) -> tuple[float, float, Any, Any]:
    """Median seconds of ``repeat`` calls of each, alternated after one warm-up call of each;
    and the answers of the warm-up calls."""
    first_plant, first_other = plant(), other()
    a, b = [], []
    for _ in range(repeat):
        for fn, times in ((plant, a), (other, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b), first_plant, first_other


def _wait(what: str, check: Callable[[], bool], children: list[Child], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive:
                raise RuntimeError(f"{child.name} died: see {child.log_path}")
        try:
            if check():
                return
        except (RdbClientError, httpx.HTTPError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _stages(resp: httpx.Response) -> dict[str, float]:
    """The gateway's Server-Timing header as {stage: ms}."""
    out = {}
    for part in resp.headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur)
    return out


# -- the benchmark -------------------------------------------------------------------------------

def collect(settings: Settings, args: argparse.Namespace) -> Report:
    n_trades = args.rows or (100_000 if args.quick else 1_000_000)
    repeat = args.repeat or (3 if args.quick else 7)
    report = Report()
    started = time.perf_counter()
    trades, quotes = generate_day(n_trades)
    ties = int(trades["time"].duplicated().sum()), int(quotes["time"].duplicated().sum())
    print(f"  generated {len(trades):,} trades and {len(quotes):,} quotes over {SYMS} syms in "
          f"{time.perf_counter() - started:.1f} s ({ties[0]:,} trades and {ties[1]:,} quotes share a time stamp "
          "with another)", file=sys.stderr, flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="tickplant-bench-peer-"))
    s = fresh(settings).replace(data_dir=data_dir, gateway_port=free_port())
    catalog = SchemaCatalog.load(s.schemas_dir)
    children: list[Child] = []
    qdb = QuestDB()
    try:
        clock = ManualClock(T0_NS)
        open_first_day(s, catalog, clock)
        rdb_port = free_port()
        rdb = Child("rdb-peer", ["rdb", "worker", "--id", "rdb-peer", "--port", str(rdb_port)], s)
        gw = Child("gateway-peer", ["gateway", "run", "--id", "gateway-peer"], s)
        children += [rdb, gw]
        rdb.start()
        gw.start()
        qdb.start()  # while the plant's processes start
        for ddl in QDB_TABLES.values():
            qdb.exec(ddl)
        rdb_client = RdbClient(f"http://127.0.0.1:{rdb_port}", timeout=60, settings=s)
        plant = httpx.Client(base_url=f"http://127.0.0.1:{s.gateway_port}", timeout=300)
        peer = httpx.Client(base_url=qdb.url, timeout=300)
        _wait("the RDB", lambda: rdb_client.status()["serving"], children)
        _wait("the gateway", lambda: plant.get("/v1/health").json()["rdb_nodes"], children)

        def plant_sql(sql: str) -> httpx.Response:
            return plant.post("/v1/sql", json={"query": sql})

        def questdb_sql(sql: str) -> httpx.Response:
            return peer.get("/exec", params={"query": sql})

        def plant_count(table: str) -> int:
            return _plant_rows(plant_sql(f"SELECT count() AS n FROM {table} WHERE date = today()"))[0]["n"]

        def questdb_count(table: str) -> int:
            return _questdb_rows(questdb_sql(f"SELECT count() n FROM {table}"))[0]["n"]

        # -- DataFrame -> queryable ---------------------------------------------------------------
        start = time.perf_counter()
        from questdb import Sender  # the documented ingest client (ILP over HTTP)

        with Sender.from_conf(qdb.conf) as sender:
            sender.dataframe(trades, table_name="trade", symbols=["sym", "exchange"], at="time")
            sender.dataframe(quotes, table_name="quote", symbols=["sym", "exchange"], at="time")
        q_sent = time.perf_counter() - start
        _wait("QuestDB's rows", lambda: questdb_count("trade") == len(trades) and
              questdb_count("quote") == len(quotes), [], timeout=600)
        q_ingest = time.perf_counter() - start

        start = time.perf_counter()
        with Tickerplant(s, catalog, mode="batch", source="bench-peer") as tp:
            tp.publish_frame("trade", trades)
            tp.publish_frame("quote", quotes)
            tp.flush()
        p_sent = time.perf_counter() - start
        _wait("the RDB's rows", lambda: sum(rdb_client.count("trade").values()) == len(trades) and
              sum(rdb_client.count("quote").values()) == len(quotes), children, timeout=900)
        p_held = time.perf_counter() - start
        got = (plant_count("trade"), plant_count("quote"))
        p_ingest = time.perf_counter() - start
        if got != (len(trades), len(quotes)):
            raise AnswerMismatch(f"the plant counts {got} rows, {len(trades), len(quotes)} were published")
        total = len(trades) + len(quotes)
        report.results.append(Result(
            f"DataFrame -> queryable ({total / 1e6:g}M rows)", p_ingest, q_ingest, "<= 1.0x",
            p_ingest <= q_ingest, "s",
            f"plant: publish_frame + flush {p_sent:.1f} s, RDB holds all {p_held:.1f} s, gateway count "
            f"{p_ingest - p_held:.2f} s; QuestDB: Sender.dataframe {q_sent:.1f} s, WAL applied {q_ingest:.1f} s"))
        print(f"  ingest: plant {p_ingest:.1f} s, QuestDB {q_ingest:.1f} s", file=sys.stderr, flush=True)

        # -- the questions, today then as history ---------------------------------------------------
        qs = questions(ONE_SYM)

        def ask_all(when: str, plant_date: str) -> None:
            for q in qs:
                if when == "history" and not q.history:
                    continue
                timings: list[dict[str, float]] = []
                if q.plant.startswith("GET "):
                    path = q.plant[4:].format(start="today" if when == "today" else DAY)

                    def ask_plant(p: str = path, keep: list = timings) -> httpx.Response:
                        resp = plant.get(p)
                        keep.append(_stages(resp))
                        return resp
                else:
                    sql = q.plant.format(d=plant_date)

                    def ask_plant(sql: str = sql, keep: list = timings) -> httpx.Response:
                        resp = plant_sql(sql)
                        keep.append(_stages(resp))
                        return resp
                qsql = q.questdb.format(day=DAY)
                p_med, q_med, p_resp, q_resp = paired(ask_plant, lambda qsql=qsql: questdb_sql(qsql), repeat)
                compare(q, _plant_rows(p_resp), _questdb_rows(q_resp), when)
                timed = timings[1:] or timings  # the warm-up call apart
                stages = {k: statistics.median(t.get(k, 0.0) for t in timed) for k in timed[0]}
                stages["http+json"] = max(0.0, p_med * 1e3 - sum(stages.values()))
                where = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
                report.results.append(Result(
                    f"{q.label}, {when}", p_med * 1e3, q_med * 1e3, "<= 1.0x", p_med <= q_med, "ms",
                    f"{len(_plant_rows(p_resp)):,} rows; plant ms (medians): {where}"))
                print(f"  {q.label}, {when}: plant {p_med * 1e3:.1f} ms, QuestDB {q_med * 1e3:.1f} ms "
                      f"[{where}]", file=sys.stderr, flush=True)

        ask_all("today", "date = today()")
        clock.advance(15 * 3600)
        roll_day(s, catalog, clock)
        for table in ("trade", "quote"):
            backfill(s, table, dt.date.fromisoformat(DAY), catalog=catalog)
        def in_hdb() -> bool:
            tables = {t["table"]: t for t in plant.get("/v1/tables").json()["tables"]}
            return all(DAY in tables[t]["hdb_dates"] for t in ("trade", "quote"))

        _wait("the day in the gateway's HDB", in_hdb, children, timeout=120)
        ask_all("history", f"date = '{DAY}'")
        report.notes.append(
            f"peer: {len(trades):,} trades and {len(quotes):,} quotes, {SYMS} syms, {ties[0] + ties[1]:,} rows sharing a "
            f"time stamp; QuestDB {questdb_version()} (WAL tables, TIMESTAMP_NS, SYMBOL syms) and the plant (1 RDB worker, "
            f"the gateway, {s.partitions} partitions) on the same machine; medians of "
            f"{repeat} runs, alternated; every answer pair checked (counts exact, sums within tolerance); value = "
            "the plant, baseline = QuestDB, ratio = plant time / QuestDB time. Window join: the plant's /v1/wj "
            "(mode=wj1) beside QuestDB's windowed aggregates over trades and quotes in one time series (9.2.2 "
            "has no WINDOW JOIN, and looks back only)")
    finally:
        for child in reversed(children):
            child.stop()
        qdb.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.peer", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
