"""The gateway on a real plant: broker, an RDB worker holding today, the HDB holding
yesterday (written from the log), ClickHouse (chdb) joining them; answers checked
against pandas over the rows that were published."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pandas as pd
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from procs import Worker, plant_env, wait_until
from twodays import publish_two_days

from gateway.app import create_app
from gateway.auth import Users, hash_key
from gateway.failures import QueryFailed
from gateway.sql import parse_select
from sinks.hdb import HdbQueryError
from tickplant.kafka.broker import free_port

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
D1, D2 = dt.date(2026, 11, 22), dt.date(2026, 11, 23)
ARROW = {"Accept": "application/vnd.apache.arrow.stream"}
USERS = {
    "users": {
        "alice": {"keys": [hash_key("alice-key")], "tables": {
            "trade": {"columns": ["time", "sym", "price", "size"], "rows": "exchange = 'N'"},
        }},
        "bob": {"keys": [hash_key("bob-key")], "tables": {"trade": {}, "quote": {}}},
        "ops": {"keys": [hash_key("ops-key")], "admin": True},
    }
}


@pytest.fixture(scope="module")
def world(broker, catalog, tmp_path_factory):
    """Yesterday (D1) in the HDB, today (D2) in an RDB worker; the rows published each day."""
    tmp = tmp_path_factory.mktemp("gateway")
    settings = broker.settings.replace(topic_prefix=f"g{uuid.uuid4().hex[:8]}.", data_dir=tmp / "plant",
                                       batch_interval_ms=20, gateway_user_queries=16,  # bob queries from threads
                                       gateway_pushdown_rows=100)  # a small day splits too
    published = publish_two_days(settings, catalog, T0, (D1, D2), syms=8, seed=5, events=3000)
    worker = Worker(settings, "rdb-g1", tmp).start()
    try:
        worker.wait_serving()
        wait_until(lambda: sum(worker.client.count("trade", date=D2.isoformat()).values())
                   == len(published[D2]["trade"]), 60, "today in the RDB", worker.log_tail)
        users = Users.from_dict(USERS)
        app = create_app(settings, users=users)
        with TestClient(app) as client:
            wait_until(lambda: client.get("/v1/health", headers=OPS).json()["rdb_nodes"], 30, "the gateway to see the RDB")
            routing = client.app.state.gateway.engine.routing  # the RDB's rows as announced: splits pay
            wait_until(lambda: min(routing.realtime_rows(t) for t in ("trade", "quote")) >= settings.gateway_pushdown_rows,
                       30, "the RDB's announced rows")
            yield settings, client, published, worker
    finally:
        worker.stop()


OPS = {"X-API-Key": "ops-key"}


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def arrow(resp) -> pa.Table:
    assert resp.status_code == 200, resp.text
    return pa.ipc.open_stream(resp.content).read_all()


def sql(client, query: str, key: str = "bob-key", **extra) -> object:
    return client.post("/v1/sql", json={"query": query, **extra}, headers={**ARROW, "X-API-Key": key})


def test_today_and_history_are_one_table(world):
    _, client, published, _ = world
    got = arrow(sql(client, "SELECT date, count() AS n FROM trade GROUP BY date ORDER BY date")).to_pylist()
    assert got == [{"date": D1, "n": len(published[D1]["trade"])}, {"date": D2, "n": len(published[D2]["trade"])}]
    rows = arrow(sql(client, "SELECT date, time, sym, price, size FROM trade WHERE sym = 'AAPL' "
                             "ORDER BY date, time")).to_pandas()
    expected = pd.concat([frame(published[d]["trade"]).assign(date=d) for d in (D1, D2)])
    expected = expected[expected.sym == "AAPL"].sort_values(["date", "time"], kind="stable")
    assert rows.time.astype("int64").tolist() == expected.time.tolist()
    assert rows.price.tolist() == expected.price.tolist()
    assert rows.date.tolist() == expected.date.tolist()
    # today() is the plant's open day; only the RDB is read for it
    resp = sql(client, "SELECT count() AS n FROM trade WHERE date = today()")
    assert arrow(resp).to_pylist() == [{"n": len(published[D2]["trade"])}]


def test_aj_across_the_day_boundary_matches_pandas(world):
    _, client, published, _ = world
    resp = client.get("/v1/aj", params={"start": D1.isoformat(), "end": D2.isoformat()}, headers={
        **ARROW, "X-API-Key": "bob-key"})
    got = arrow(resp).to_pandas()
    expected = []
    for day in (D1, D2):
        trades = frame(published[day]["trade"]).sort_values("time", kind="stable")
        quotes = frame(published[day]["quote"]).sort_values("time", kind="stable")
        joined = pd.merge_asof(trades, quotes[["time", "sym", "bid", "ask"]], on="time", by="sym",
                               direction="backward", allow_exact_matches=True)
        expected.append(joined.assign(date=day))
    expected = pd.concat(expected).sort_values(["date", "sym", "time"], kind="stable").reset_index(drop=True)
    assert len(got) == len(expected)
    assert got.time.astype("int64").tolist() == expected.time.tolist()
    assert got.bid.fillna(-1).tolist() == expected.bid.fillna(-1).tolist()
    assert got.ask.fillna(-1).tolist() == expected.ask.fillna(-1).tolist()


def test_bars_vwap_last_trades_named_queries(world):
    _, client, published, _ = world
    key = {"X-API-Key": "bob-key"}
    bars = arrow(client.get("/v1/bars", params={"start": D1.isoformat(), "end": "today", "minutes": 5,
                                                "syms": "AAPL,MSFT"}, headers={**ARROW, **key})).to_pandas()
    trades = pd.concat([frame(published[d]["trade"]).assign(date=d) for d in (D1, D2)])
    trades = trades[trades.sym.isin(["AAPL", "MSFT"])]
    trades["bar"] = trades.time // (300 * 10**9) * (300 * 10**9)
    g = trades.sort_values("time", kind="stable").groupby(["sym", "bar"])
    expected = pd.DataFrame({"open": g.price.first(), "high": g.price.max(), "low": g.price.min(),
                             "close": g.price.last(), "volume": g["size"].sum()}).reset_index()
    assert len(bars) == len(expected)
    assert bars.volume.tolist() == expected.volume.tolist()
    assert bars.open.tolist() == expected.open.tolist() and bars.close.tolist() == expected.close.tolist()

    last = client.get("/v1/last", params={"syms": "AAPL,IBM"}, headers=key).json()["rows"]
    today = frame(published[D2]["trade"])
    for row in last:
        mine = today[today.sym == row["sym"]].sort_values("time", kind="stable").iloc[-1]
        assert row["price"] == mine.price and row["date"] == D2.isoformat()
    assert {r["sym"] for r in last} == {"AAPL", "IBM"} & set(today.sym)

    vwap = client.get("/v1/vwap", params={"syms": "AAPL", "start": D2.isoformat()}, headers=key).json()["rows"]
    aapl = today[today.sym == "AAPL"]
    assert vwap[0]["vwap"] == pytest.approx((aapl.price * aapl["size"]).sum() / aapl["size"].sum())

    csv = client.get("/v1/trades", params={"syms": "AAPL", "start": D1.isoformat(), "end": D2.isoformat()},
                     headers={**key, "Accept": "text/csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert len(lines) - 1 == int((trades.sym == "AAPL").sum())
    assert lines[0].startswith('"date","time","sym"') and lines[1].split(",")[1].endswith('Z"')
    # every table's own route answers as its contract name does
    same = client.get("/v1/rows/trade", params={"syms": "AAPL", "start": D1.isoformat(), "end": D2.isoformat()},
                      headers={**key, "Accept": "text/csv"})
    assert same.status_code == 200 and same.text == csv.text
    quotes = client.get("/v1/rows/quote", params={"syms": "AAPL", "start": D2.isoformat(), "format": "arrow"},
                        headers=key)
    assert arrow(quotes).num_rows == sum(1 for q in published[D2]["quote"] if q["sym"] == "AAPL")


def test_todays_rows_reach_clickhouse_as_one_batch_in_memory_or_as_a_servers_external_data(world):
    """The ``last`` view answers one batch per sym; embedded chDB reads them in place as
    one batch (no file written); a server gets them with the statement as external data
    (an Arrow stream and its structure), which chDB, taking none, reads from a file."""
    _, client, published, worker = world
    engine = client.app.state.gateway.engine
    # the RDB sends a day's rows, stored as many small chunks per sym, as one batch
    rows = worker.client.rows("trade", date=D2.isoformat(), columns=["sym", "price"], local=True)
    assert (len(rows.to_batches()), rows.num_rows) == (1, len(published[D2]["trade"]))
    assert rows.column_names == ["sym", "price"]
    today = frame(published[D2]["trade"]).sort_values("time", kind="stable").groupby("sym").tail(1)
    expected = dict(zip(today.sym, today.price, strict=True))
    statement = "SELECT sym, price FROM trade WHERE date = today() ORDER BY sym, time DESC LIMIT 1 BY sym"
    assert engine.hdb.pool.in_process and engine.in_memory is None  # as the endpoint is
    answer = engine.run(parse_select(statement), rdb_view="last", keep_rows=True)
    assert dict(zip(*answer.table.to_pydict().values(), strict=True)) == expected
    [(name, rows)] = answer.tables.items()
    assert f"Python({name})" in answer.sql and answer.external == {}
    assert (len(rows.to_batches()), rows.num_rows) == (1, len(expected)) and len(expected) > 1
    assert answer.table.schema.field("sym").type == pa.dictionary(pa.int32(), pa.string())  # as the HDB's
    # the same SQL over the same tables answers the same (the benchmark's direct run)
    assert engine.hdb.pool.run(answer.sql, tables=answer.tables).to_pydict() == answer.table.to_pydict()
    with pytest.raises(HdbQueryError, match="not free identifiers"):
        engine.hdb.pool.run(answer.sql, tables={"client": rows})

    engine.in_memory = False  # as for a ClickHouse server
    try:
        served = engine.run(parse_select(statement), rdb_view="last", keep_rows=True)
    finally:
        engine.in_memory = None
    assert served.table.to_pydict() == answer.table.to_pydict()
    assert served.tables == {} and "Python(" not in served.sql and "file(" not in served.sql
    [(name, (body, fmt, structure))] = served.external.items()
    assert fmt == "ArrowStream"
    assert f"FROM {name}" in served.sql  # read by name: the server's temporary table
    sent = pa.ipc.open_stream(body).read_all()
    assert (len(sent.to_batches()), sent.num_rows) == (1, len(expected))
    assert set(sent.column_names) == {"time", "sym", "price", "date"} and sent.column_names[-1] == "date"
    assert structure.endswith("`date` Date") and "`sym` LowCardinality(String)" in structure
    with pytest.raises(HdbQueryError, match="not one of the gateway's"):
        engine.hdb.pool.run("SELECT 1", external={"system.tables": (body, fmt, structure)})
    # the query log, a file on the gateway's host, goes to a server the same way
    logged = "SELECT count() AS n, max(ts) AS last FROM query_log"
    here = engine.run(parse_select(logged), keep_rows=True)
    engine.in_memory = False
    try:
        there = engine.run(parse_select(logged), keep_rows=True)
    finally:
        engine.in_memory = None
    assert there.table.to_pydict() == here.table.to_pydict() and here.table.column("n")[0].as_py() > 0
    assert "file(" in here.sql and "file(" not in there.sql
    [(log_name, (log_body, log_fmt, _))] = there.external.items()
    assert log_fmt == "JSONEachRow" and f"FROM {log_name}" in there.sql and log_body.count(b"\n") >= 1
    # a one-batch answer is sent whole, with its length
    resp = client.get("/v1/last", headers={**ARROW, "X-API-Key": "bob-key"})
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert arrow(resp).num_rows == len(expected)


def test_a_plan_is_reused_per_statement_user_and_open_day_and_never_across_users(world):
    """The parsed, authorised, planned statement is kept: the same request again skips the
    parser, another user's grants give their own plan, another open day a fresh one."""
    _, client, published, _ = world
    gw = client.app.state.gateway
    users = gw.users
    alice, bob = users.authenticate("alice-key"), users.authenticate("bob-key")
    statement = "SELECT exchange, count() AS n FROM trade WHERE date = today() GROUP BY exchange ORDER BY exchange"
    mine = gw.plan("SELECT count() AS n FROM trade WHERE date = today()", bob)
    assert gw.plan("SELECT count() AS n FROM trade WHERE date = today()", bob) is mine
    assert "toDate('2026-11-23')" in mine.sql  # today() is the plant's open day, fixed in the plan
    assert gw.plan("SELECT count() AS n FROM trade WHERE date = today()", alice).sql != mine.sql  # alice's row filter
    # bob may see exchange, alice may not: the cached plan of one never answers the other
    today = frame(published[D2]["trade"])
    expected = today.groupby("exchange").size()
    for _ in range(2):
        got = arrow(sql(client, statement)).to_pylist()
        assert got == [{"exchange": e, "n": int(n)} for e, n in expected.items()]
        denied = sql(client, statement, key="alice-key")
        assert denied.status_code == 403 and "exchange" in denied.json()["error"]
    filtered = arrow(sql(client, "SELECT count() AS n FROM trade WHERE date = today()", key="alice-key"))
    assert filtered.to_pylist() == [{"n": int((today.exchange == "N").sum())}]
    # a plan is per open day: the day's literal changes with it
    assert gw.engine.plan(parse_select("SELECT count() FROM trade WHERE date = today()"), D1).sql.count("2026-11-22")


def test_a_count_reads_one_narrow_column_and_a_row_filter_its_own(world):
    """``count()`` names no column: the RDB nodes and the HDB read ``sym`` alone (every
    column was read before), and the count is every row's; a row filter's column is read
    for it (alice sees exchange N only)."""
    _, client, published, _ = world
    gw = client.app.state.gateway
    bob, alice = gw.users.authenticate("bob-key"), gw.users.authenticate("alice-key")
    statement = "SELECT count() AS n FROM trade"
    assert [r.columns for r in gw.plan(statement, bob).refs] == [["sym"]]
    assert "exchange" in gw.plan(statement, alice).refs[0].columns
    every = sum(len(frame(published[day]["trade"])) for day in published)
    assert arrow(sql(client, statement)).to_pylist() == [{"n": every}]
    today = frame(published[D2]["trade"])
    assert arrow(sql(client, statement + " WHERE date = today()", key="alice-key")).to_pylist() == \
        [{"n": int((today.exchange == "N").sum())}]


def test_entitlements_end_to_end(world):
    _, client, published, _ = world
    # alice: trade's time, sym, price, size; only exchange N rows
    resp = sql(client, "SELECT * FROM trade ORDER BY date, time", key="alice-key")
    got = arrow(resp)
    assert got.column_names == ["time", "sym", "price", "size", "date"]
    all_trades = pd.concat([frame(published[d]["trade"]) for d in (D1, D2)])
    assert got.num_rows == int((all_trades.exchange == "N").sum()) > 0
    denied = sql(client, "SELECT exchange FROM trade", key="alice-key")
    assert denied.status_code == 403 and "exchange" in denied.json()["error"]
    assert sql(client, "SELECT * FROM quote", key="alice-key").status_code == 403
    assert client.post("/v1/sql", json={"query": "SELECT 1"}).status_code == 401
    assert sql(client, "SELECT 1", key="nobody").status_code == 401
    for attack in ("SELECT * FROM file('/etc/passwd', 'CSV')", "SELECT * FROM trade SETTINGS max_threads=1",
                   "SELECT 1; DROP TABLE trade", "SELECT * FROM system.tables"):
        resp = sql(client, attack)
        assert resp.status_code == 403, (attack, resp.text)
    bad = sql(client, "SELECT price FROM trade WHERE (")
    assert bad.status_code == 400 and bad.json()["error"]
    unknown_col = sql(client, "SELECT nosuch FROM trade")
    assert unknown_col.status_code in (400, 403) and "nosuch" in unknown_col.json()["error"]
    # ClickHouse's refusal names the fault, not the SQL the gateway generated (the HDB's
    # locations, the engine's sources, the caller's own row filter)
    typo = sql(client, "SELECT price + 'x' FROM trade WHERE date >= yesterday()", key="alice-key")
    error = typo.json()["error"]
    assert typo.status_code == 400 and "Illegal types" in error, error
    assert not any(leak in error for leak in ("In scope", "exchange", "__tickplant", "Python(", "parquet")), error
    malformed = client.post("/v1/sql", content=b"{not json", headers={"X-API-Key": "bob-key",
                                                                      "Content-Type": "application/json"})
    assert malformed.status_code == 400 and "malformed" in malformed.json()["error"]


def test_an_rdb_node_answers_for_exactly_the_partitions_routed_to_it(world):
    """The gateway names the partitions it routed to a node: the node answers for those
    only, and refuses (421) ones it does not hold, rather than missing or doubling rows
    while a rebalance moves them."""
    from ingest.topics import partition_for
    from streams.client import RdbClientError

    _, _, published, worker = world
    today = frame(published[D2]["trade"])
    for parts in ([0], [1, 3]):
        rows = worker.client.rows("trade", date=D2.isoformat(), columns=["sym"], local=True, partitions=parts)
        expected = today[[partition_for(s, 4) in parts for s in today.sym]]
        assert sorted(rows.column("sym").to_pylist()) == sorted(expected.sym) and len(expected)
    with pytest.raises(RdbClientError, match="does not hold trade partition.s. 9") as refused:
        worker.client.last("trade", date=D2.isoformat(), local=True, partitions=[0, 9])
    assert refused.value.status == 421
    with pytest.raises(ValueError, match="local=True"):
        worker.client.rows("trade", partitions=[0])


def test_a_short_timeout_on_a_stalled_node_is_the_querys_408_and_does_not_bench_the_node(world):
    """A node that cannot answer within a query's own short timeout is slow for that
    query, not dead: 408, and the next query is routed to it at once (benching it would
    let any user take every replica out of service with a tiny timeout)."""
    _, client, published, worker = world
    statement = "SELECT count() AS n FROM trade WHERE date = today()"
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        stalled = sql(client, statement, timeout=1)
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    assert stalled.status_code == 408 and "timeout" in stalled.json()["error"], stalled.text
    answered = sql(client, statement, timeout=2)
    assert arrow(answered).to_pylist() == [{"n": len(published[D2]["trade"])}]


def test_row_limit_timeout_and_the_query_log(world):
    _, client, _, _ = world
    over = sql(client, "SELECT * FROM trade", limit=10)
    assert over.status_code == 413 and "row limit" in over.json()["error"]
    assert arrow(sql(client, "SELECT * FROM trade LIMIT 10", limit=10)).num_rows == 10
    started = time.monotonic()
    slow = sql(client, "SELECT count() FROM trade AS a, trade AS b, trade AS c WHERE a.price * b.price > c.price",
               timeout=1)
    assert slow.status_code == 408 and "timeout" in slow.json()["error"]
    assert time.monotonic() - started < 15
    # the named queries take the same limit and timeout; their bad parameters are refused and logged
    bob = {**ARROW, "X-API-Key": "bob-key"}
    named_over = client.get("/v1/trades", params={"start": D1.isoformat(), "end": D2.isoformat(), "limit": 5},
                            headers=bob)
    assert named_over.status_code == 413 and "row limit" in named_over.json()["error"]
    assert arrow(client.get("/v1/vwap", params={"limit": 1000, "timeout": 5}, headers=bob)).num_rows > 1
    assert client.get("/v1/vwap", params={"timeout": 0}, headers=bob).status_code == 400
    bad_bars = client.get("/v1/bars", params={"minutes": 0}, headers=bob)
    assert bad_bars.status_code == 400 and "minutes=0" in bad_bars.json()["error"]
    assert client.get("/v1/last", headers={"X-API-Key": "nobody"}).status_code == 401
    log = arrow(sql(client, "SELECT user, endpoint, outcome, status, rows FROM query_log",
                    key="ops-key")).to_pylist()
    outcomes = {(r["user"], r["outcome"]) for r in log}
    assert ("bob", "too large") in outcomes and ("bob", "timeout") in outcomes
    assert ("alice", "denied") in outcomes and ("bob", "ok") in outcomes
    assert {(r["user"], r["endpoint"], r["status"]) for r in log} >= {
        ("bob", "trades", 413), ("bob", "bars", 400), ("-", "/v1/last", 401)}
    # only admins (or users granted it) read the log
    assert sql(client, "SELECT * FROM query_log", key="bob-key").status_code == 403


def test_tables_health_and_openapi(world):
    _, client, _, _ = world
    tables = {t["table"]: t for t in client.get("/v1/tables", headers={"X-API-Key": "alice-key"}).json()["tables"]}
    assert set(tables) == {"trade"}
    admin = {t["table"]: t for t in client.get("/v1/tables", headers={"X-API-Key": "ops-key"}).json()["tables"]}
    assert set(admin) == {"trade", "quote", "option", "query_log"}
    assert [c["name"] for c in admin["query_log"]["columns"]][:2] == ["ts", "user"]
    assert [c["name"] for c in tables["trade"]["columns"]] == ["time", "sym", "price", "size", "date"]
    assert tables["trade"]["hdb_dates"] == [D1.isoformat()] and D2.isoformat() in tables["trade"]["rdb_dates"]
    health = client.get("/v1/health", headers=OPS).json()
    assert health["status"] == "ok" and health["open_date"] == D2.isoformat() and health["problems"] == []
    assert health["roles"]["rdb"] == 1 and health["roles"]["pdb"] == 0
    assert any("no PDB" in w for w in health["warnings"]), health  # this world runs none
    assert client.get("/v1/health").json() == {"status": "ok"}  # anonymous: up or down, nothing more
    assert client.get("/v1/health", headers={"X-API-Key": "bob-key"}).json()["rdb_nodes"]
    spec = client.get("/openapi.json").json()
    assert {"/v1/sql", "/v1/trades", "/v1/quotes", "/v1/rows/trade", "/v1/rows/quote", "/v1/last", "/v1/bars",
            "/v1/vwap", "/v1/aj", "/v1/black_scholes"} <= set(spec["paths"])


def test_cli_query_through_a_gateway_process(world, tmp_path):
    settings, _, published, _ = world
    users = tmp_path / "users.toml"
    users.write_text(f'[users.bob]\nkeys = ["{hash_key("bob-key")}"]\ntables = {{ trade = {{}} }}\n')
    port = free_port()
    env = {**plant_env(settings), "TICKPLANT_GATEWAY_PORT": str(port), "TICKPLANT_GATEWAY_USERS_FILE": str(users)}
    proc = subprocess.Popen([sys.executable, "-m", "tickplant", "gateway", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def query(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "tickplant", "query", *args], env=env,
                                  capture_output=True, text=True, timeout=60)

        wait_until(lambda: query("SELECT 1 AS one", "--key", "bob-key").returncode == 0, 60, "the gateway")
        out = query("SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym ORDER BY sym",
                    "--key", "bob-key")
        assert out.returncode == 0, out.stderr
        counts = frame(published[D2]["trade"]).sym.value_counts()
        for sym, n in counts.items():
            assert any(line.split()[:2] == [sym, str(n)] for line in out.stdout.splitlines()), out.stdout
        assert f"{len(counts)} row(s)" in out.stdout
        denied = query("SELECT * FROM quote", "--key", "bob-key")
        assert denied.returncode == 1 and "403" in denied.stderr
        as_json = query("SELECT 1 AS one", "--key", "bob-key", "--format", "json")
        assert json.loads(as_json.stdout) == {"one": 1}
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_replica_killed_during_queries_every_query_is_answered(world, tmp_path):
    """Hot-hot: a second RDB replica group; kill -9 the busy one mid-stream of queries."""
    settings, client, published, first = world
    second = Worker(settings, "rdb-g2", tmp_path, replica="b").start()
    try:
        second.wait_serving()
        wait_until(lambda: sum(second.client.count("trade", date=D2.isoformat()).values())
                   == len(published[D2]["trade"]), 60, "replica b to hold today", second.log_tail)
        wait_until(lambda: {n["replica"] for n in client.get("/v1/health", headers=OPS).json()["rdb_nodes"]} == {"a", "b"},
                   30, "the gateway to see both replicas")
        expected = len(published[D2]["trade"])
        answers: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                resp = sql(client, "SELECT count() AS n FROM trade WHERE date = today()")
                if resp.status_code != 200:
                    errors.append(resp.text)
                else:
                    answers.append(arrow(resp).column("n")[0].as_py())

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answers) >= 10, 60, "queries flowing")
        first.kill9()
        killed_at = len(answers)
        wait_until(lambda: len(answers) >= killed_at + 20, 60, "queries after the kill",
                   lambda: f"{len(answers)} answers, errors {errors[:2]}")
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[:3]
        assert answers and all(n == expected for n in answers)
        assert {n["replica"] for n in client.get("/v1/health", headers=OPS).json()["rdb_nodes"]} == {"b"}
    finally:
        second.stop()
        # back for any later test, once the gateway routes to it again: until the restarted
        # worker's record arrives, the killed one's is stale and the gateway sees no RDB node
        first.start()
        first.wait_serving()
        routing = client.app.state.gateway.routing
        wait_until(lambda: any(n.record.pid == first.proc.pid for n in routing.nodes()), 30,
                   "the gateway to route to the restarted worker")


def test_health_shows_a_clickhouse_servers_url_without_its_password():
    from gateway.app import _without_password

    assert _without_password("http://tickplant:s3cret@clickhouse:8123/db") == "http://tickplant:***@clickhouse:8123/db"
    assert _without_password("chdb://") == "chdb://"
    assert _without_password("https://clickhouse:8443") == "https://clickhouse:8443"


def test_the_hubs_subscriptions_are_for_admins_only(world):
    _, client, _, _ = world
    assert client.get("/v1/subscriptions").status_code == 401
    assert client.get("/v1/subscriptions", headers={"X-API-Key": "bob-key"}).status_code == 403
    assert "upstreams" in client.get("/v1/subscriptions", headers=OPS).json()


ATTACKS = [  # the issue's attempts, each as a user with a restricted key would send it
    "SELECT \"file\"('{users}') AS f",
    "SELECT `file`('{users}') AS f",
    "SELECT `\\x66ile`('{users}') AS f",
    "SELECT \"getSetting\"('readonly') AS s",
    "SELECT \"hostName\"() AS h",
    "SELECT sym FROM trade WHERE sym IN ((system.one))",
    "SELECT `\\x5f\\x5ftickplant_source_0__`.price FROM trade",
    "SELECT * FROM \"file\"('{users}', 'TSV')",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_from_the_issue_are_refused_over_http_and_tell_nothing(world, tmp_path, attack):
    """As alice (one table, four columns, some rows): refused, and the answer holds no key."""
    users_file = tmp_path / "users.toml"
    users_file.write_text("[users.x]\nkeys = ['a-secret-key-0123456789']\n")
    resp = sql(world[1], attack.format(users=users_file), key="alice-key")
    assert resp.status_code in (400, 403), resp.text
    assert "secret-key" not in resp.text and str(tmp_path) not in resp.text


def test_hidden_rows_do_not_leak_through_errors_over_http(world):
    """alice sees exchange 'N' only: a probe that raises on any other exchange's row, through
    both today (the RDB) and history (the HDB), answers as if only her rows existed."""
    _, client, published, _ = world
    n_visible = sum(1 for d in (D1, D2) for r in published[d]["trade"] if r["exchange"] == "N")
    assert n_visible and n_visible < sum(len(published[d]["trade"]) for d in (D1, D2))
    hidden = sorted({r["time"] for d in (D1, D2) for r in published[d]["trade"] if r["exchange"] != "N"})
    times = ", ".join(map(str, hidden[:: max(1, len(hidden) // 50)]))  # a hidden row of each stretch
    probe = (f"SELECT count() AS n FROM trade WHERE intDiv(1, if(toUnixTimestamp64Nano(time) IN ({times}), 0, 1)) = 1 "
             f"AND toInt64(if(toUnixTimestamp64Nano(time) IN ({times}), sym, '0')) = 0")
    resp = client.post("/v1/sql", json={"query": probe}, headers={"X-API-Key": "alice-key"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["rows"] == [{"n": n_visible}]


@pytest.mark.parametrize("params", [
    {"columns": "price, file('/etc/passwd')"},
    {"columns": "cond"},
    {"syms": "AAPL') OR 1=1 OR sym IN ('x"},
    {"syms": "AAPL", "start": "today') OR (1=1"},
])
def test_named_queries_take_no_sql_from_their_parameters(world, params):
    """The other door: a parameter is a value or refused, never SQL."""
    _, client, _, _ = world
    resp = client.get("/v1/trades", params=params, headers={"X-API-Key": "alice-key"})
    assert resp.status_code in (400, 403) or (resp.status_code == 200 and resp.json()["rows"] == []), resp.text


def test_hdb_queries_go_on_when_an_endpoint_of_the_pool_is_down(world):
    """``clickhouse_urls``: an endpoint that does not answer (nothing listens there: a killed
    server) is benched and the query runs on the next; today's and yesterday's rows exact."""
    from gateway.engine import Engine, QueryFailed

    settings, client, published, _ = world
    routing = client.app.state.gateway.routing
    dead = f"http://127.0.0.9:{free_port()}"
    engine = Engine(settings.replace(clickhouse_urls=f"{dead},chdb://"), routing)
    try:
        statement = "SELECT date, count() AS n FROM trade GROUP BY date ORDER BY date"
        want = [{"date": d, "n": len(published[d]["trade"])} for d in (D1, D2)]
        for _ in range(3):
            assert engine.run(parse_select(statement)).table.to_pylist() == want
        status = {e["url"]: e for e in engine.endpoints.status()}
        assert status[dead]["benched"] and not status["chdb://"]["benched"]
    finally:
        engine.close()
    alone = Engine(settings.replace(clickhouse_urls=dead), routing)
    try:
        with pytest.raises(QueryFailed, match="no ClickHouse endpoint answered") as err:
            alone.run(parse_select("SELECT count() FROM trade"))
        assert err.value.status == 503
    finally:
        alone.close()


PUSHED = [
    ("SELECT sym, count() AS n, sum(price * size) / sum(size) AS vwap FROM trade WHERE date = today() "
     "GROUP BY sym ORDER BY sym"),
    ("SELECT date, sym, toStartOfInterval(time, INTERVAL 5 MINUTE) AS bar, argMin(price, time) AS open, "
     "max(price) AS high, argMax(price, time) AS close, count() AS trades FROM trade "
     "GROUP BY date, sym, bar ORDER BY date, sym, bar"),
    "SELECT count(), uniqExact(size), min(time), max(price) FROM trade",
    "SELECT sym, count(*) FROM trade WHERE size > 100 GROUP BY 1 HAVING count() > 5 ORDER BY 2 DESC, 1 LIMIT 3",
    "SELECT sym, sum(size) AS size FROM trade GROUP BY sym ORDER BY size DESC, sym",
    "SELECT * FROM (SELECT sym, avg(bid) AS b FROM quote WHERE date = today() GROUP BY sym) ORDER BY sym",
    ("SELECT t.sym AS sym, avg(q.ask - q.bid) AS spread, count() AS n "
     "FROM (SELECT sym, time, price FROM trade WHERE date = today()) AS t ASOF LEFT JOIN "
     "(SELECT sym, time, bid, ask FROM quote WHERE date = today()) AS q ON t.sym = q.sym AND t.time >= q.time "
     "GROUP BY sym ORDER BY sym"),  # joined node by node: each holds both tables' rows of its syms
]


def _close(got: pa.Table, want: pa.Table) -> None:
    assert got.column_names == want.column_names
    g, w = got.to_pylist(), want.to_pylist()
    assert len(g) == len(w) and len(g) > 0
    for a, b in zip(g, w, strict=True):
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-9), k
            else:
                assert a[k] == b[k], k


@pytest.mark.parametrize("in_memory", [None, False])
@pytest.mark.parametrize("statement", PUSHED)
def test_aggregates_run_on_the_rdb_node_and_answer_as_unsplit(world, statement, in_memory):
    """Split (the RDB node aggregates its rows into states, the gateway merges them with
    the HDB's): the same answer as with every row brought to the gateway, and only the
    partials cross (a few rows per group, not the day's rows); to a ClickHouse server
    (``in_memory=False``) the partials go as external data."""
    _, client, published, _ = world
    engine = client.app.state.gateway.engine
    engine.in_memory = in_memory
    try:
        split = engine.run(parse_select(statement), keep_rows=True)
    finally:
        engine.in_memory = None
    assert (split.tables == {}) == (in_memory is False) and (split.external == {}) == (in_memory is None)
    engine.pushdown = False
    try:
        whole = engine.run(parse_select(statement))
    finally:
        engine.pushdown = True
    assert split.split and not whole.split
    _close(split.table, whole.table)
    table = "quote" if "quote" in statement else "trade"
    moved = sum(info["rdb_rows"] for info in split.touched[table])
    assert 0 < moved <= 300 < len(published[D2][table])  # partials, not rows


ANSWERED_WHOLE = [s for s in PUSHED if "today()" in s] + [
    "SELECT c FROM (SELECT count() AS c FROM trade WHERE date = today()) WHERE c = 0",  # no rows, though rows read
]


@pytest.mark.parametrize("statement", ANSWERED_WHOLE)
def test_one_node_holding_every_row_of_the_day_answers_the_statement_itself(world, statement):
    """Today only, and one RDB node holding every partition: the node answers the statement
    (nothing to merge, no engine query in the gateway), the same answer as unsplit; with
    a history day in range the node answers its partial, merged with the HDB's."""
    engine = world[1].app.state.gateway.engine
    answer = engine.run(parse_select(statement))
    infos = [info for infos in answer.touched.values() for info in infos]
    assert answer.split and infos and all(info["final"] for info in infos)
    assert answer.timing["clickhouse"] == 0
    engine.pushdown = False
    try:
        whole = engine.run(parse_select(statement))
    finally:
        engine.pushdown = True
    assert not whole.split
    if whole.table.num_rows:
        _close(answer.table, whole.table)
    else:
        assert answer.table.num_rows == 0 and answer.table.column_names == whole.table.column_names
    history = engine.run(parse_select("SELECT sym, count() AS n FROM trade GROUP BY sym"))
    assert history.split and not any(info["final"] for info in history.touched["trade"])


def test_a_result_answered_by_the_node_is_held_to_the_gateways_limit(world):
    engine = world[1].app.state.gateway.engine
    statement = "SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym"
    assert engine.run(parse_select(statement)).table.num_rows > 2
    with pytest.raises(QueryFailed, match="more than 2 rows") as err:
        engine.run(parse_select(statement), limit=2)
    assert err.value.status == 413


def test_a_users_row_filter_runs_on_the_rdb_node_with_the_partial(world):
    """alice sees only exchange 'N': her count per sym, split, is pandas' over those rows."""
    _, client, published, _ = world
    got = arrow(sql(client, "SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym ORDER BY sym",
                    key="alice-key"))
    today = frame(published[D2]["trade"])
    want = today[today.exchange == "N"].groupby("sym").size()
    assert dict(zip(got.column("sym").to_pylist(), got.column("n").to_pylist(), strict=True)) == want.to_dict()
    assert len(want) > 1 and want.sum() < len(today)
    # a column alice may not see stays unseen inside an aggregate, split or not
    resp = sql(client, "SELECT sym, max(exchange) FROM trade GROUP BY sym", key="alice-key")
    assert resp.status_code == 403 and "exchange" in resp.json()["error"], resp.text


def test_below_gateway_pushdown_rows_the_rows_come_over(world):
    """A small RDB: moving its rows costs less than a second engine query; no split."""
    _, client, _, _ = world
    engine = client.app.state.gateway.engine
    statement = "SELECT sym, count() FROM trade GROUP BY sym"
    assert engine.run(parse_select(statement)).split
    held = engine.settings
    engine.settings = held.replace(gateway_pushdown_rows=engine.routing.realtime_rows("trade") + 1)
    try:
        assert not engine.run(parse_select(statement)).split
    finally:
        engine.settings = held


def test_sql_asking_for_each_syms_latest_row_reads_only_the_rdbs_latest_rows(world):
    """``argMax(x, time) ... GROUP BY sym`` and ``ORDER BY time DESC LIMIT 1 BY sym``: the
    RDB's last row per sym (kdb+'s latest table), the answer that of every row."""
    _, client, published, _ = world
    engine = client.app.state.gateway.engine
    today = frame(published[D2]["quote"]).sort_values("time", kind="stable").groupby("sym").tail(1)
    for statement in [
        "SELECT sym, argMax(bid, time) AS bid FROM quote WHERE date = today() GROUP BY sym ORDER BY sym",
        "SELECT sym, bid FROM quote WHERE date = today() ORDER BY sym, time DESC LIMIT 1 BY sym",
    ]:
        answer = engine.run(parse_select(statement))
        assert dict(zip(*answer.table.to_pydict().values(), strict=True)) == dict(zip(today.sym, today.bid, strict=True))
        assert sum(info["rdb_rows"] for info in answer.touched["quote"]) == len(today) > 1


@pytest.mark.parametrize("statement", [
    "SELECT * EXCEPT (seq) FROM quote WHERE date = {day} AND sym IN ('AAPL', 'IBM', 'MSFT') "
    "ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym",  # the named last
    "SELECT sym, bid, exchange AS ex, date FROM quote WHERE date = {day} ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(bid, time) AS bid, argMax(exchange, (time, seq)) AS exchange, max(time) AS ts "
    "FROM quote WHERE date = {day} GROUP BY sym ORDER BY sym",
    "SELECT date, sym, argMax(ask, time) AS ask FROM quote WHERE date = {day} AND sym = 'AAPL' "
    "GROUP BY date, sym ORDER BY date, sym",
])
@pytest.mark.parametrize("day", [D2, D1], ids=["today", "history"])
def test_the_latest_rows_as_they_are_are_the_answer_with_no_statement_run(world, statement, day):
    """kdb+'s ``select by sym``: the day's latest rows themselves are the answer (today the
    RDB's, a history day its file of them), no ClickHouse statement run, in the rows, types,
    names and order the engine gives when it must run the statement (with a filter the
    fetch does not apply itself)."""
    _, client, published, _ = world
    engine = client.app.state.gateway.engine
    statement = statement.format(day=f"'{day.isoformat()}'")
    ran = statement.replace("WHERE ", "WHERE sym != '' AND ")
    assert engine.plan(parse_select(statement)).as_fetched and engine.plan(parse_select(ran)).as_fetched is None
    latest = frame(published[day]["quote"]).sort_values("time", kind="stable").groupby("sym").tail(1).sort_values("sym")
    for key in ("bob-key", "ops-key"):  # granted the table whole, and an admin
        fast, slow = sql(client, statement, key), sql(client, ran, key)
        assert "clickhouse;dur=0.00" in fast.headers["server-timing"]
        assert "clickhouse;dur=0.00" not in slow.headers["server-timing"]
        fast_rows, slow_rows = arrow(fast), arrow(slow)
        assert fast_rows.schema.equals(slow_rows.schema), (fast_rows.schema, slow_rows.schema)
        assert fast_rows.to_pylist() == slow_rows.to_pylist()
        syms = fast_rows.column("sym").to_pylist()
        assert syms == [s for s in latest.sym if s in syms] and len(syms) >= 1
        value = "ask" if "ask" in fast_rows.column_names else "bid"
        assert fast_rows.column(value).to_pylist() == [dict(zip(latest.sym, latest[value], strict=True))[s] for s in syms]
        json_fast = client.post("/v1/sql", json={"query": statement}, headers={"X-API-Key": key}).json()
        json_slow = client.post("/v1/sql", json={"query": ran}, headers={"X-API-Key": key}).json()
        assert (json_fast["columns"], json_fast["rows"]) == (json_slow["columns"], json_slow["rows"])


def test_the_named_last_is_answered_by_the_latest_rows_unless_through_a_fence(world):
    _, client, _, _ = world
    bob = {"X-API-Key": "bob-key"}
    named = client.get("/v1/last", params={"table": "quote", "syms": "AAPL,IBM,MSFT"}, headers=bob)
    assert "clickhouse;dur=0.00" in named.headers["server-timing"]
    ran = ("SELECT * EXCEPT (seq) FROM quote WHERE sym != '' AND date = today() AND sym IN ('AAPL', 'IBM', 'MSFT') "
           "ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym")
    whole = client.post("/v1/sql", json={"query": ran}, headers=bob).json()
    assert (named.json()["columns"], named.json()["rows"]) == (whole["columns"], whole["rows"]) and whole["rows"]
    # through an entitlement's fence (alice: some columns, some rows) the statement runs
    fenced = client.get("/v1/last", params={"table": "trade"}, headers={"X-API-Key": "alice-key"})
    assert fenced.status_code == 200 and "clickhouse;dur=0.00" not in fenced.headers["server-timing"]
    assert {c["name"] for c in fenced.json()["columns"]} == {"time", "sym", "price", "size", "date"}


def test_latest_rows_over_history_and_today_are_each_days_latest_rows(world):
    """Over yesterday (HDB) and today (RDB): yesterday's file of each sym's latest row and the
    RDB's latest rows, never either day whole; the answer that of every row."""
    _, client, published, _ = world
    engine = client.app.state.gateway.engine
    want = {(day, row.sym): row.bid for day in (D1, D2)
            for row in frame(published[day]["quote"]).sort_values("time", kind="stable").groupby("sym").tail(1).itertuples()}
    statement = ("SELECT date, sym, argMax(bid, (time, seq)) AS bid FROM quote WHERE date >= yesterday(){w} "
                 "GROUP BY date, sym ORDER BY date, sym")
    answer = engine.run(parse_select(statement.format(w="")))
    got = answer.table.to_pydict()
    assert dict(zip(zip(got["date"], got["sym"], strict=True), got["bid"], strict=True)) == want
    (info,) = answer.touched["quote"]
    assert info["hdb_latest_days"] == info["hdb_days"] == [D1.isoformat()]
    assert info["rdb_rows"] == len([k for k in want if k[0] == D2])
    whole = engine.run(parse_select(statement.format(w=" AND time > '2000-01-01 00:00:00'")))
    assert whole.table.to_pydict() == got and whole.touched["quote"][0]["hdb_latest_days"] == []


def test_statements_that_do_not_split_run_as_written(world):
    """A join, DISTINCT inside an aggregate or a bare column that is no key: unsplit."""
    _, client, _, _ = world
    engine = client.app.state.gateway.engine
    for statement in ["SELECT sym, count(DISTINCT size) FROM trade GROUP BY sym",
                      "SELECT t.sym, count() FROM trade t ASOF LEFT JOIN quote q ON t.sym = q.sym "
                      "AND t.time >= q.time GROUP BY t.sym",  # yesterday's quotes too: in the HDB
                      "SELECT t.sym, count() FROM trade t ASOF LEFT JOIN quote q ON t.sym = q.sym AND t.time >= q.time "
                      "WHERE t.date = today() AND q.date = today() GROUP BY t.sym",  # q.date: after the outer join
                      "SELECT sym, time FROM trade WHERE date = today() ORDER BY time LIMIT 5"]:
        answer = engine.run(parse_select(statement))
        assert not answer.split and answer.table.num_rows > 0
