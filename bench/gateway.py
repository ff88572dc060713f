"""Gateway benchmarks: named queries end to end against the same SQL run directly on chDB,
and ``last`` at 50 concurrent clients against the RDB's own view.

    python -m bench gateway [--quick]

The plant: yesterday in the HDB (written from the log by the backfill), today
in one RDB worker, the gateway as its own process (uvicorn), as ``tickplant up``
runs them. For each named query the baseline is the statement the gateway
finally hands ClickHouse (HDB files plus today's rows, the same Arrow tables) run in this
process on chDB: the ratio is what the gateway adds (HTTP, parsing,
entitlements, fetching today's rows from the RDB, serialising the answer).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import (
    Report,
    Result,
    fresh,
    run_alone,
)
from gateway.engine import Engine
from gateway.named import aj_query, bars_query, last_query, rows_query, vwap_query
from gateway.routing import Routing
from gateway.sql import parse_select
from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from sinks.backfill import backfill
from streams.client import RdbClient, RdbClientError
from tickplant import internal
from tickplant.clock import ManualClock
from tickplant.config import Settings
from tickplant.kafka.broker import free_port
from tickplant.supervisor import Child

T0_NS = 1_795_339_800_000_000_000  # 2026-11-22 09:30 UTC
ARROW = {"Accept": "application/vnd.apache.arrow.stream"}
CONCURRENT = 50


def _wait(what: str, check, child: Child, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.alive, f"{child.name} died: see {child.log_path}"
        try:
            if check():
                return
        except (RdbClientError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s; see {child.log_path}")


def build_plant(settings: Settings, catalog: SchemaCatalog, events: int) -> tuple[str, str]:
    """Yesterday (``events`` quote events and their trades) written to the HDB, today (a fifth
    of that) published; returns the two days."""
    clock = ManualClock(T0_NS)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=100, seed=3, clock=clock)
    chunk = 100_000
    with Tickerplant(settings, catalog, mode="batch") as tp:
        for _ in range(events // chunk):
            trades, quotes = market.events(chunk)
            tp.publish_rows("quote", quotes)
            tp.publish_rows("trade", trades)
    clock.advance(15 * 3600)
    marker = roll_day(settings, catalog, clock)
    clock.advance(9 * 3600)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        for _ in range(max(1, events // 5 // chunk)):
            trades, quotes = market.events(chunk)
            tp.publish_rows("quote", quotes)
            tp.publish_rows("trade", trades)
    for table in ("trade", "quote"):
        backfill(settings, table, marker.date, catalog=catalog)
    return marker.date.isoformat(), marker.next.isoformat()


def _date(text: str):
    import datetime as dt

    return dt.date.fromisoformat(text)


def paired(through, direct, repeat: int) -> tuple[float, float]:
    """The median seconds of ``repeat`` calls of each, alternated (one warm-up of each first):
    on a shared 2-core machine the load drifts by more than the gateway adds to a small
    query, and a run of one then a run of the other would charge the drift to one side."""
    through()
    direct()
    a, b = [], []
    for _ in range(repeat):
        for fn, times in ((through, a), (direct, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def hammer(get, seconds: float) -> float:
    """Requests/s ``CONCURRENT`` threads complete calling ``get(client, i)`` for ``seconds``."""
    done = [0] * CONCURRENT
    errors: list[str] = []
    stop = threading.Event()

    def run(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                resp = get(client, i)
                if resp.status_code != 200:
                    errors.append(resp.text[:200])
                    return
                done[i] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CONCURRENT)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]}")
    return sum(done) / (time.perf_counter() - start)


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    events = 200_000 if args.quick else (args.rows or 1_000_000)
    repeat = 3 if args.quick else 15
    data_dir = Path(tempfile.mkdtemp(prefix="tickplant-bench-gw-"))
    s = fresh(settings).replace(data_dir=data_dir, gateway_port=free_port())
    catalog = SchemaCatalog.load(s.schemas_dir)
    report = Report()
    children: list[Child] = []
    routing = Routing(s)
    engine: Engine | None = None
    try:
        yesterday, today = build_plant(s, catalog, events)
        rdb_port = free_port()
        rdb = Child("rdb-b1", ["rdb", "worker", "--id", "rdb-b1", "--port", str(rdb_port)], s)
        gw = Child("gateway-b1", ["gateway", "run", "--id", "gateway-b1"], s)
        children += [rdb, gw]
        rdb.start()
        gw.start()
        rdb_client = RdbClient(f"http://127.0.0.1:{rdb_port}", timeout=60, settings=s)
        _wait("the RDB", lambda: rdb_client.status()["serving"], rdb)
        published_today = _published(s, catalog, today)
        _wait("today's rows", lambda: sum(rdb_client.count("trade", date=today).values()) == published_today, rdb)
        url = f"http://127.0.0.1:{s.gateway_port}"
        http = httpx.Client(base_url=url, timeout=120, headers=ARROW)
        _wait("the gateway", lambda: http.get("/v1/health").json()["rdb_nodes"], gw)

        routing.start()
        engine = Engine(s, routing, catalog=catalog)
        trade_cols, quote_cols = catalog["trade"].columns, catalog["quote"].columns
        day1 = _date(today)
        queries = {
            "bars 5m, 2 days, all syms": ("/v1/bars", {"start": yesterday, "end": today, "minutes": 5},
                                          bars_query(None, yesterday, today, 5, day1)),
            "vwap, 2 days, all syms": ("/v1/vwap", {"start": yesterday, "end": today},
                                       vwap_query(None, yesterday, today, day1)),
            "trades, 1 sym, 2 days": ("/v1/trades", {"syms": "AAPL", "start": yesterday, "end": today},
                                      rows_query("trade", trade_cols, "AAPL", yesterday, today, None, day1)),
            "aj, 1 sym, 2 days": ("/v1/aj", {"syms": "AAPL", "start": yesterday, "end": today},
                                  aj_query("AAPL", yesterday, today, trade_cols, quote_cols, None, None, day1)),
            "aj, all syms, today": ("/v1/aj", {"start": today},
                                    aj_query(None, today, None, trade_cols, quote_cols, None, None, day1)),
            "last, all syms": ("/v1/last", {}, last_query("trade", None, day1)),
        }
        for label, (path, params, named) in queries.items():
            answer = engine.run(parse_select(named.sql), settings=named.settings, rdb_view=named.rdb_view,
                                keep_rows=True)
            through, direct = paired(
                lambda p=path, q=params: _ok(http.get(p, params=q)),
                lambda a=answer, n=named: engine.hdb.pool.run(a.sql, n.settings, tables=a.tables, external=a.external),
                repeat)
            stages = _ok(http.get(path, params=params)).headers.get("server-timing", "")
            added_ms = (through - direct) * 1e3
            big = direct > 0.1
            ok = (through / direct < 1.3) if big else added_ms < 10
            report.results.append(Result(
                f"gateway {label} ({answer.table.num_rows:,} rows)", through * 1e3, direct * 1e3,
                "< 1.3x chdb" if big else "< +10 ms", ok, "ms",
                f"+{added_ms:.1f} ms over chdb; in the gateway: {stages.replace(';dur=', ' ')}"))

        # the same engine, aggregates split (the RDB node aggregates) or every row brought over
        splits = {
            "count, vwap by sym, today": "SELECT sym, count() AS n, sum(price * size) / sum(size) AS vwap "
                                         "FROM trade WHERE date = today() GROUP BY sym ORDER BY sym",
            "1-min bars, all syms, today": bars_query(None, today, None, 1, day1).sql,
            "bars 5m, 2 days, all syms": bars_query(None, yesterday, today, 5, day1).sql,
        }
        engine.settings = s.replace(gateway_pushdown_rows=0)  # split whatever the day's size
        for label, statement in splits.items():
            def run(on: bool, sql: str = statement) -> object:
                engine.pushdown = on
                return engine.run(parse_select(sql))
            assert run(True).split and not run(False).split, label
            split_s, whole_s = paired(lambda: run(True), lambda: run(False), repeat)
            engine.pushdown = True
            report.results.append(Result(
                f"engine {label}, aggregated on the RDB node", split_s * 1e3, whole_s * 1e3, "< 1.0x",
                split_s < whole_s, "ms", "baseline: every row brought to the gateway (gateway_pushdown = false)"))

        syms = [f"S{i}" for i in range(100)]
        syms = sorted(engine.run(parse_select(last_query("trade", None, day1).sql), rdb_view="last")
                      .table.column("sym").to_pylist()) or syms
        seconds = 3 if args.quick else 8
        rate = hammer(lambda c, i: c.get(f"{url}/v1/last", params={"syms": syms[i % len(syms)]}), seconds)
        plant_only = internal.headers(s)
        raw = hammer(lambda c, i: c.get(f"http://127.0.0.1:{rdb_port}/rdb/v1/trade/last",
                                        params={"syms": syms[i % len(syms)]}, headers=plant_only), seconds)
        report.results.append(Result(f"gateway last, 1 sym, {CONCURRENT} clients", rate, raw, "-", None,
                                     "req/s", "baseline: the RDB's own last view"))
        report.notes.append(f"gateway: {events:,} quote events yesterday (HDB) and {events // 5:,} today (RDB), "
                            f"100 syms; medians of {repeat} runs, each alternated with the baseline = "
                            "the final SQL on chdb in-process")
    finally:
        if engine is not None:
            engine.close()
        routing.close()
        for child in reversed(children):
            child.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def _ok(resp: httpx.Response) -> httpx.Response:
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.url}: {resp.status_code} {resp.text[:300]}")
    return resp


def _published(settings: Settings, catalog: SchemaCatalog, day: str) -> int:
    from ingest.replay import replay_arrow

    return replay_arrow(settings, "trade", _date(day), catalog=catalog).num_rows


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.gateway", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
