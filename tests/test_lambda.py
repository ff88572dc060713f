"""The Lambda handlers against real parts: an HDB on SeaweedFS written by the PDB's writer,
the gateway app with its real routing (the broker) beside the serverless one, chDB.

Events are AWS's documented examples (tests/data/lambda_events/) with the route, body and
headers edited. The serverless query function must answer history exactly as the plant's
gateway does, refuse what it refuses with the same status and line (the entitlement
tests' own cases, imported), and say so when asked for the open day. Black-Scholes is
checked against a formula written here independently on scipy, and Hull's textbook values.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import math
import os
import subprocess
import sys
import urllib.parse
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cfnlint.api import ManualArgs, lint
from fastapi.testclient import TestClient
from s3server import s3  # noqa: F401 - the SeaweedFS fixture
from scipy.stats import norm
from test_entitlement_probes import KEY as CAROL_KEY
from test_entitlement_probes import PROBES
from test_entitlement_probes import USERS as CAROL_USERS
from test_entitlements import (
    ALICE_KEY,
    BOB_KEY,
    BYPASSES,
    DENIED_COLUMN,
    DENIED_ROWS,
    ROOT_KEY,
    USERS_TOML,
)

from gateway import serverless
from gateway.app import create_app
from gateway.auth import Users, hash_key
from gateway.policy import authorize
from gateway.sql import parse_select
from ingest.feeds.synthetic import SyntheticMarket
from sinks.manifest import LATEST_FILE
from sinks.store import HdbStore
from sinks.writedown import WriteOptions, write_partition
from tickplant.aws import lambda_handlers
from tickplant.cli import main as cli_main
from tickplant.clock import ManualClock
from tickplant.config import REPO_ROOT

EVENTS = Path(__file__).parent / "data" / "lambda_events"
D1, D2 = dt.date(2026, 11, 19), dt.date(2026, 11, 20)
D3 = dt.date(2026, 11, 21)  # quotes only: many on one time stamp, none of MISSING
MISSING = "MSFT"
QUANT_KEY = "quant-key-0123456789abcdef"
DORA_KEY = "dora-key-0123456789abcdef"  # some columns of quote
USERS = USERS_TOML + CAROL_USERS + f"""
[users.quant]
keys = ["{hash_key(QUANT_KEY)}"]
[users.quant.tables.option]
[users.quant.tables.quote]

[users.dora]
keys = ["{hash_key(DORA_KEY)}"]
[users.dora.tables.quote]
columns = ["time", "sym", "bid"]
"""
LIMITS = {"gateway_max_statement_bytes": 4096, "gateway_max_result_mb": 1, "gateway_row_limit": 5000}
YEAR_NS = 365 * 86_400 * 10**9
UNDERLYINGS = ("AAPL", "MSFT", "AMZN")


def day_ns(day: dt.date, hour: float = 0.0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1e9 + hour * 3600e9)


def option_marks(day: dt.date, spots: dict[str, float]) -> list[dict]:
    """Contracts on three underlyings around their spot, two marks each (the later one is in
    force), and one contract that expired during the day (never priced)."""
    rows = []
    for sym in UNDERLYINGS:
        for days in (30, 90):
            for moneyness in (0.9, 1.0, 1.1):
                for kind in "CP":
                    strike = round(spots[sym] * moneyness, 1)
                    contract = f"{sym}{days:03d}{kind}{strike:.1f}"
                    for n, hour in enumerate((10, 15)):
                        rows.append({"time": day_ns(day, hour) + len(rows), "sym": sym, "contract": contract,
                                     "kind": kind, "strike": strike, "expiry": day_ns(day) + days * 86_400 * 10**9,
                                     "vol": 0.2 + 0.05 * n + 0.1 * abs(moneyness - 1) + (0.02 if kind == "P" else 0)})
    rows.append({"time": day_ns(day, 11), "sym": "AAPL", "contract": "AAPLEXPIRED", "kind": "C", "strike": 1.0,
                 "expiry": day_ns(day, 12), "vol": 0.3})
    return rows


@pytest.fixture(scope="module")
def hdb(s3, catalog, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """Two days of trades and quotes and a day of option marks in an HDB on SeaweedFS, written
    by the PDB's writer; the users file beside it; the rows written, per table and day."""
    root = f"s3://{s3.bucket}/lambda-{uuid.uuid4().hex[:8]}"
    store = HdbStore(root, s3.endpoint)
    market = SyntheticMarket(syms=6, seed=11, clock=ManualClock(day_ns(D1, 14)))
    written: dict[tuple[str, dt.date], pa.Table] = {}
    for day in (D1, D2):
        market.clock.t = day_ns(day, 14)
        trades, quotes = market.events(2500)
        tables = {"trade": trades, "quote": quotes}
        if day == D2:
            tables["option"] = option_marks(day, dict(market.mid))
        for name, rows in tables.items():
            schema = catalog[name].arrow_schema
            table = pa.Table.from_pylist(rows, schema=_int_time(schema)).cast(schema)
            write_partition(store, catalog[name], day, table.to_batches(max_chunksize=700), {0: (0, 1)},
                            options=WriteOptions(row_group_rows=512))
            written[(name, day)] = table
    # a third day of quotes: in runs of five on one time stamp, the last 40 all on one (each
    # sym's latest time is shared), and none of MISSING
    market.clock.t = day_ns(D3, 14)
    quotes = [q for q in market.events(1500)[1] if q["sym"] != MISSING]
    for i, q in enumerate(quotes):
        q["time"] = quotes[0]["time"] + min(i, len(quotes) - 40) // 5 * 1000
    schema = catalog["quote"].arrow_schema
    table = pa.Table.from_pylist(quotes, schema=_int_time(schema)).cast(schema)
    write_partition(store, catalog["quote"], D3, table.to_batches(max_chunksize=300), {0: (0, 1)},
                    options=WriteOptions(row_group_rows=256))
    written[("quote", D3)] = table
    # the first day's quotes as written before the file of each sym's latest row existed
    old = store.manifest("quote", D1)
    assert old is not None and old.latest is not None
    old.latest = None
    store.put_atomic(store.manifest_path("quote", D1), old.to_json())
    store.delete(f"{store.partition_dir('quote', D1)}/{LATEST_FILE}")
    users_key = root[len("s3://"):].split("/", 1)[1] + "/users.toml"
    s3.client().put_object(Bucket=s3.bucket, Key=users_key, Body=USERS.encode())
    local_users = tmp_path_factory.mktemp("users") / "users.toml"
    local_users.write_text(USERS)
    return {"root": root, "users_url": f"s3://{s3.bucket}/{users_key}", "users_key": users_key,
            "local_users": local_users, "written": written, "s3": s3}


def _int_time(schema: pa.Schema) -> pa.Schema:
    return schema.set(schema.get_field_index("time"), pa.field("time", pa.int64(), nullable=False))


@pytest.fixture(scope="module")
def world(broker, hdb, tmp_path_factory):
    """The plant's gateway (its routing on the broker; no plant ever ran on this prefix, so
    every day is history) and the serverless function configured alike, by its variables."""
    s3server = hdb["s3"]
    settings = broker.settings.replace(
        topic_prefix=f"lam{uuid.uuid4().hex[:8]}.", data_dir=tmp_path_factory.mktemp("gw") / "plant",
        hdb_root=hdb["root"], s3_endpoint=s3server.endpoint, gateway_users_file=str(hdb["local_users"]), **LIMITS)
    env = {"TICKPLANT_HDB_ROOT": hdb["root"], "TICKPLANT_S3_ENDPOINT": s3server.endpoint,
           "TICKPLANT_GATEWAY_USERS_FILE": hdb["users_url"],
           "TICKPLANT_DATA_DIR": str(tmp_path_factory.mktemp("lambda") / "tmp"),
           **{f"TICKPLANT_{k.upper()}": str(v) for k, v in LIMITS.items()}}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setattr(serverless, "USERS_CHECK_S", 0.2)
        serverless.reset()
        lambda_handlers._settings.cache_clear()
        with TestClient(create_app(settings)) as client:
            yield client, env
        serverless.reset()
        lambda_handlers._settings.cache_clear()


# -- calling both ---------------------------------------------------------------------------------

def event(method: str, path: str, key: str | None, body: object = None, accept: str | None = None) -> dict:
    """AWS's documented HTTP API event, edited to this request."""
    ev = copy.deepcopy(json.loads((EVENTS / "apigw_http_v2.json").read_text()))
    raw_path, _, query = path.partition("?")
    ev["rawPath"], ev["rawQueryString"] = raw_path, query
    ev["queryStringParameters"] = {k: ",".join(v) for k, v in urllib.parse.parse_qs(query).items()}
    ev["requestContext"]["http"].update(method=method, path=raw_path)
    ev["routeKey"] = ev["requestContext"]["routeKey"] = "$default"
    ev["headers"] = {"content-type": "application/json", "host": "id.execute-api.us-east-1.amazonaws.com"}
    if key is not None:
        ev["headers"]["x-api-key"] = key
    if accept:
        ev["headers"]["accept"] = accept
    ev["body"] = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    ev["isBase64Encoded"] = False
    return ev


def via_handler(method: str, path: str, key: str | None, body: object = None, accept: str | None = None):
    resp = lambda_handlers.query(event(method, path, key, body, accept), None)
    assert set(resp) >= {"statusCode", "headers", "body", "isBase64Encoded"}, resp
    data = base64.b64decode(resp["body"]) if resp["isBase64Encoded"] else resp["body"].encode()
    return resp["statusCode"], resp["headers"], data


def via_gateway(client, method: str, path: str, key: str | None, body: object = None, accept: str | None = None):
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    if accept:
        headers["accept"] = accept
    content = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    resp = client.request(method, path, content=content, headers=headers)
    return resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content


def comparable(status: int, headers: dict, data: bytes, ordered: bool = True):
    """An answer as two answers to the same statement must agree: the rows (sorted unless the
    statement orders them) and columns, or the error line."""
    if headers.get("content-type", "").startswith("application/vnd.apache.arrow"):
        table = pa.ipc.open_stream(data).read_all()
        return status, table.schema.names, table.to_pylist() if ordered else sorted(map(repr, table.to_pylist()))
    if headers.get("content-type", "").startswith("text/csv"):
        lines = data.decode().splitlines()
        return status, lines[:1], lines[1:] if ordered else sorted(lines[1:])
    doc = json.loads(data)
    doc.pop("elapsed_ms", None)
    doc.pop("notes", None)  # the serverless gateway's word on what it leaves out: checked apart
    if not ordered and "rows" in doc:
        doc["rows"] = sorted(map(repr, doc["rows"]))
    return status, doc


def same_answer(client, method, path, key, body=None, accept=None, ordered=True):
    mine = via_handler(method, path, key, body, accept)
    theirs = via_gateway(client, method, path, key, body, accept)
    assert comparable(*mine, ordered=ordered) == comparable(*theirs, ordered=ordered), (mine[2][:300], theirs[2][:300])
    assert mine[1]["x-tickplant-source"] == "hdb"
    return mine


def sql(query: str, **extra) -> dict:
    return {"query": query, **extra}


# -- history: the same answers ---------------------------------------------------------------------

HISTORY = [
    "SELECT date, sym, count() AS n, round(sum(price * size) / sum(size), 6) AS vwap FROM trade "
    "WHERE date BETWEEN '2026-11-19' AND '2026-11-20' GROUP BY date, sym ORDER BY date, sym",
    "SELECT * FROM quote WHERE date = '2026-11-20' AND sym = 'MSFT' ORDER BY time, seq LIMIT 50",
    "SELECT t.sym, t.time, t.price, q.bid, q.ask FROM (SELECT sym, time, price FROM trade WHERE date = '2026-11-19') t "
    "ASOF LEFT JOIN (SELECT sym, time, bid, ask FROM quote WHERE date = '2026-11-19') q "
    "ON t.sym = q.sym AND t.time >= q.time ORDER BY t.sym, t.time LIMIT 200",
]


@pytest.mark.parametrize("accept", [None, "application/vnd.apache.arrow.stream", "text/csv"])
@pytest.mark.parametrize("statement", HISTORY)
def test_history_answers_as_the_gateway_does(world, statement, accept):
    status, _, data = same_answer(world[0], "POST", "/v1/sql", ROOT_KEY, sql(statement), accept)
    assert status == 200 and len(data) > 100


@pytest.mark.parametrize("path", [
    "/v1/trades?syms=AAPL,MSFT&start=2026-11-19&end=2026-11-20",
    "/v1/bars?syms=AAPL&start=2026-11-19&end=2026-11-20&minutes=5",
    "/v1/vwap?start=2026-11-19&end=2026-11-20",
    "/v1/aj?syms=MSFT&start=2026-11-20&limit=3000",
    "/v1/tables",
    "/v1/rows/option?start=2026-11-20&syms=AAPL",
])
def test_named_queries_answer_as_the_gateway_does(world, path):
    client, _ = world
    status, _, data = same_answer(client, "GET", path, ROOT_KEY)
    assert status == 200 and len(data) > 100


def test_the_open_day_is_left_out_saying_so_or_refused_when_it_is_all_that_is_asked(world):
    client, _ = world
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date(), dt.time(), dt.UTC)  # the roll (eod_time 00:00 UTC)
    # within the write-down grace after the roll, yesterday is still only the plant's too
    rolled_recently = (now - midnight).total_seconds() < serverless.WRITE_DOWN_GRACE_S
    left_out = ", ".join(d.isoformat() for d in [now.date() - dt.timedelta(days=1)] * rolled_recently + [now.date()])
    for method, path, body in [("POST", "/v1/sql", sql("SELECT count() FROM trade WHERE date = today()")),
                               ("GET", "/v1/last?syms=AAPL", None), ("GET", "/v1/trades?syms=AAPL", None)]:
        status, headers, data = via_handler(method, path, ROOT_KEY, body)
        error = json.loads(data)["error"]
        assert status == 400 and "history (the HDB) only" in error and "plant's gateway" in error, error
        assert f"trade on {now.date()} is" in error and "\n" not in error
    # history and the open day: history's rows, and the answer says what it leaves out
    status, headers, data = same_answer(client, "POST", "/v1/sql", ROOT_KEY,
                                        sql("SELECT count() AS n FROM trade WHERE date >= '2026-11-20'"))
    doc = json.loads(data)
    assert status == 200 and doc["rows"][0]["n"] > 0
    assert doc["notes"] == [f"history only: trade on {left_out} (in the plant's real-time database) is not included"]
    assert headers["x-tickplant-notes"] == doc["notes"][0]
    status, headers, data = via_handler("POST", "/v1/sql", ROOT_KEY, sql("SELECT count() AS n FROM trade "
                                        "WHERE date < '2026-11-21'"), accept="text/csv")
    assert status == 200 and "x-tickplant-notes" not in headers  # nothing left out: nothing said


def test_health_says_history_only(world):
    status, _, data = via_handler("GET", "/v1/health", None)
    assert status == 200 and json.loads(data) == {"status": "ok"}  # a probe: up
    health = json.loads(via_handler("GET", "/v1/health", ROOT_KEY)[2])
    assert health["rdb_nodes"] == [] and health["problems"] == [] and health["hdb_root"].endswith(
        world[1]["TICKPLANT_HDB_ROOT"][len("s3://"):])
    assert health["warnings"] and health["warnings"][0].startswith("history only")


def test_a_roles_session_token_goes_with_the_hdbs_reads(world, monkeypatch):
    """Lambda's credentials are a role's: key, secret and session token. The token must reach
    ClickHouse's s3() (SeaweedFS refuses a made-up one: so it was sent)."""
    statement = sql("SELECT count() AS n FROM trade WHERE date = '2026-11-19'")
    assert via_handler("POST", "/v1/sql", ROOT_KEY, statement)[0] == 200
    monkeypatch.setenv("AWS_SESSION_TOKEN", "made-up-session-token")
    # refused by S3: ClickHouse lists no file, so it knows no `date` of the hive layout either
    status, _, data = via_handler("POST", "/v1/sql", ROOT_KEY, statement)
    assert status in (400, 503) and json.loads(data)["error"], data
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    assert via_handler("POST", "/v1/sql", ROOT_KEY, statement)[0] == 200


def test_a_bucket_refusing_the_keys_is_a_503_naming_it(world, monkeypatch):
    """S3 refusing the function's keys is the HDB unavailable (503, one line saying which store
    and why), not a failure of the gateway (500, no reason). ``/v1/tables`` lists the HDB's
    days on every call (a query's plan keeps its listing for a while)."""
    root = world[1]["TICKPLANT_HDB_ROOT"]
    assert via_handler("GET", "/v1/tables", ROOT_KEY)[0] == 200  # the function started
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    status, _, data = via_handler("GET", "/v1/tables", ROOT_KEY)
    error = json.loads(data)["error"]
    assert status == 503 and "\n" not in error, (status, data)
    assert error.startswith("cannot list s3://") and root[len("s3://"):].split("/")[0] in error, error
    monkeypatch.undo()
    assert via_handler("GET", "/v1/tables", ROOT_KEY)[0] == 200


# -- refusals: the same status and line --------------------------------------------------------------

LONG = "SELECT " + "+".join(["1"] * 3000) + " AS x"
REFUSALS = [
    *(("alice", sql(s)) for s in DENIED_COLUMN),
    *(("root", sql(s)) for s, _ in BYPASSES),
    *(("bob", sql(s)) for s in ["SELECT * FROM quote", "SELECT * FROM trade t JOIN quote q USING (sym)",
                                "SELECT * FROM query_log", "SELECT * FROM option"]),
    ("alice", sql("SELECT * FROM trades")),  # unknown table: 400 listing the caller's tables
    ("nobody-key-0123456789", sql("SELECT 1")),  # unknown key
    (None, sql("SELECT 1")),  # no key
    ("root", sql("SELECT 1", timeout=-1)),  # a malformed request
    ("bob", sql(LONG)),  # over gateway_max_statement_bytes
    ("bob", sql("SELECT * FROM trade WHERE date = '2026-11-19'", limit=10)),  # over the row limit asked
    ("bob", sql("SELECT a.sym FROM trade a CROSS JOIN trade b WHERE a.date = '2026-11-19' "
                "AND b.date = '2026-11-19'")),  # over gateway_row_limit
    ("bob", sql("SELECT repeat('x', 1000) AS s FROM (SELECT arrayJoin(range(2000)) AS i)")),  # over gateway_max_result_mb
    ("bob", sql("SELECT price FROM trade WHERE (")),  # unparseable
    ("bob", sql("SELECT price + 'x' FROM trade WHERE date = '2026-11-19'")),  # ClickHouse's refusal, cut
    ("bob", "{not json"),
    ("bob", sql("SELECT 1 AS x", limit=0)),
]
KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY, "root": ROOT_KEY}


@pytest.mark.parametrize("who, body", REFUSALS, ids=[f"{i}" for i in range(len(REFUSALS))])
def test_what_the_gateway_refuses_the_handler_refuses_alike(world, who, body):
    client, _ = world
    key = KEYS.get(who, who)
    status, _, data = same_answer(client, "POST", "/v1/sql", key, body)
    assert status in (400, 401, 403, 413), data
    assert list(json.loads(data)) == ["error"] and "\n" not in json.loads(data)["error"]


@pytest.mark.parametrize("path, key", [
    ("/v1/trades?syms=AAPL&start=2026-11-19&columns=price,cond", ALICE_KEY),
    ("/v1/trades?syms=AAPL&start=nonsense", BOB_KEY),
    ("/v1/bars?syms=AAPL&start=2026-11-19&minutes=0", BOB_KEY),
    ("/v1/black_scholes?date=2026-11-20&rate=0.05", ALICE_KEY),  # no grant on option
    ("/v1/black_scholes?date=2026-11-20", QUANT_KEY),  # no rate
    ("/v1/black_scholes?date=2026-11-20&rate=abc", QUANT_KEY),
    ("/v1/black_scholes?date=2026-11-20&rate=0.05&at=noon", QUANT_KEY),
])
def test_named_query_refusals_alike(world, path, key):
    status, _, data = same_answer(world[0], "GET", path, key)
    assert status in (400, 403) and json.loads(data)["error"]


@pytest.mark.parametrize("who, statement", [*(("alice", s) for s in DENIED_ROWS), *(("carol", s) for s in PROBES)])
def test_row_filters_answer_as_the_gateway_does(world, who, statement):
    """A user's rows only, through the same rewrite: the same answer (or the same refusal)."""
    key = {"alice": ALICE_KEY, "carol": CAROL_KEY}[who]
    mine = via_handler("POST", "/v1/sql", key, sql(statement))
    theirs = via_gateway(world[0], "POST", "/v1/sql", key, sql(statement))
    if mine[0] == theirs[0] == 413:  # too large (a cross join): which limit ClickHouse stops at first varies
        return
    assert comparable(*mine, ordered=False) == comparable(*theirs, ordered=False), (mine[2][:300], theirs[2][:300])
    assert mine[0] in (200, 400)


# -- the last row per sym: each history day's file of them, never the day ---------------------------

LATEST_SQL = [  # {w}: nothing, or FULL, a WHERE on another column, which reads the days whole
    "SELECT sym, argMax(bid, (time, seq)) AS bid, max(time) AS ts FROM quote "
    "WHERE date BETWEEN '2026-11-19' AND '2026-11-21'{w} GROUP BY sym ORDER BY sym",
    "SELECT date, sym, argMax(bid, (time, seq)) AS bid, max(time) AS ts FROM quote "
    "WHERE date >= '2026-11-19'{w} GROUP BY date, sym ORDER BY date, sym",
    "SELECT sym, time, bid, seq FROM quote WHERE date IN ('2026-11-20', '2026-11-21') "
    "AND sym IN ('AAPL', 'MSFT', 'NVDA'){w} ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym",
    "SELECT * FROM quote WHERE date = '2026-11-21'{w} ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym",
]
FULL = " AND time > '2000-01-01 00:00:00'"
VISIBLE = {ROOT_KEY: None, ALICE_KEY: {"AAPL", "MSFT"}, DORA_KEY: None}  # alice: a row filter on sym


def latest_of(hdb, days: list[dt.date]) -> dict[tuple[dt.date, str], dict]:
    """Each (day, sym)'s latest quote as written: greatest time, of those the last published."""
    out: dict[tuple[dt.date, str], dict] = {}
    for day in days:
        for seq, row in enumerate(hdb["written"][("quote", day)].to_pylist()):
            key = (day, row["sym"])
            if key not in out or (row["time"], seq) >= (out[key]["time"], out[key]["seq"]):
                out[key] = {**row, "seq": seq}
    return out


@pytest.mark.parametrize("key", list(VISIBLE))
@pytest.mark.parametrize("door", ["gateway", "lambda"])
def test_the_last_row_per_sym_of_history_days_is_the_whole_days_answer(world, hdb, key, door):
    """Read from each history day's latest rows (the first day has none: read whole) or from
    the whole days, the same answer, for an admin, a row filter on sym and a column grant;
    and kdb+'s: of each sym's rows at its latest time the last published (D3 ties them all)."""
    def ask(statement: str) -> list:
        answer = (via_gateway(world[0], "POST", "/v1/sql", key, sql(statement)) if door == "gateway"
                  else via_handler("POST", "/v1/sql", key, sql(statement)))
        assert answer[0] == 200, answer[2][:300]
        return json.loads(answer[2])["rows"]

    for statement in LATEST_SQL:
        latest = ask(statement.format(w=""))
        assert latest and latest == ask(statement.format(w=FULL)), statement
    visible = VISIBLE[key]
    want = latest_of(hdb, [D1, D2, D3])
    per_sym: dict[str, dict] = {}
    for (_day, sym), row in sorted(want.items()):
        if visible is None or sym in visible:
            per_sym[sym] = row  # the later day's
    got = ask(LATEST_SQL[0].format(w=""))
    assert [(r["sym"], r["bid"]) for r in got] == [(s, per_sym[s]["bid"]) for s in sorted(per_sym)]
    by_day = ask(LATEST_SQL[1].format(w=""))
    assert [(r["date"], r["sym"], r["bid"]) for r in by_day] == [
        (d.isoformat(), s, row["bid"]) for (d, s), row in sorted(want.items()) if visible is None or s in visible]
    assert MISSING not in {r["sym"] for r in by_day if r["date"] == D3.isoformat()}
    # argMax(x, time) alone: of the rows sharing the latest time, the latest rows hold the last published
    bare = ask(LATEST_SQL[0].replace("(time, seq)", "time").format(w=""))
    assert bare == got


@pytest.mark.parametrize("key", list(VISIBLE))
def test_the_latest_files_are_read_where_they_exist(hdb, broker, key):
    """Which files answered, through each user's grant: the latest rows of the days that keep
    them, the whole of the first day (written before they existed), the whole of every day
    when another column is filtered."""
    settings = broker.settings.replace(hdb_root=hdb["root"], s3_endpoint=hdb["s3"].endpoint)
    engine = serverless.HistoryEngine(settings, serverless.HistoryRouting(settings))  # type: ignore[arg-type]
    user = Users.load(hdb["local_users"]).authenticate(key)
    visible = VISIBLE[key]
    try:
        for where, latest in (("", [D2.isoformat(), D3.isoformat()]), (FULL, [])):
            answer = engine.run(authorize(parse_select(LATEST_SQL[1].format(w=where)), user, engine.tables))
            (info,) = answer.touched["quote"]
            assert info["hdb_days"] == [d.isoformat() for d in (D1, D2, D3)]
            assert info["hdb_latest_days"] == latest
            assert (LATEST_FILE in answer.sql) == bool(latest)
            assert answer.table.num_rows == len([k for k in latest_of(hdb, [D1, D2, D3])
                                                 if visible is None or k[1] in visible])
    finally:
        engine.close()


def test_a_changed_users_object_takes_effect_and_a_broken_one_leaves_the_last(world, hdb):
    client, _ = world
    s3client = hdb["s3"].client()
    assert via_handler("POST", "/v1/sql", BOB_KEY, sql("SELECT 1 AS x"))[0] == 200
    try:
        s3client.put_object(Bucket=hdb["s3"].bucket, Key=hdb["users_key"],
                            Body=USERS.replace(f'keys = ["{BOB_KEY}"]', 'keys = ["bob-new-key-0123456789"]').encode())
        from procs import wait_until
        wait_until(lambda: via_handler("POST", "/v1/sql", BOB_KEY, sql("SELECT 1 AS x"))[0] == 401, 10, "bob's old key refused")
        assert via_handler("POST", "/v1/sql", "bob-new-key-0123456789", sql("SELECT 1 AS x"))[0] == 200
        s3client.put_object(Bucket=hdb["s3"].bucket, Key=hdb["users_key"], Body=b"[users.bob\nbroken")
        for _ in range(3):  # several looks at the broken object: the last good users stay in force
            assert via_handler("POST", "/v1/sql", "bob-new-key-0123456789", sql("SELECT 1 AS x"))[0] == 200
    finally:
        s3client.put_object(Bucket=hdb["s3"].bucket, Key=hdb["users_key"], Body=USERS.encode())
    wait_until(lambda: via_handler("POST", "/v1/sql", BOB_KEY, sql("SELECT 1 AS x"))[0] == 200, 10, "bob's key back")


def test_a_misconfigured_function_answers_500_naming_the_setting(world, monkeypatch):
    monkeypatch.delenv("TICKPLANT_GATEWAY_USERS_FILE")
    serverless.reset()
    try:
        resp = lambda_handlers.query(event("POST", "/v1/sql", ROOT_KEY, sql("SELECT 1")), None)
        assert resp["statusCode"] == 500 and "gateway_users_file is not set" in json.loads(resp["body"])["error"]
        resp = lambda_handlers.query({"version": "1.0", "httpMethod": "GET"}, None)
        assert resp["statusCode"] == 500  # still no users: not built
    finally:
        serverless.reset()
    monkeypatch.undo()
    resp = lambda_handlers.query({"version": "1.0", "httpMethod": "GET"}, None)
    assert resp["statusCode"] == 400 and "payload 2.0" in json.loads(resp["body"])["error"]


# -- Black-Scholes -------------------------------------------------------------------------------------

def bs_reference(spot, strike, years, rate, vol, kind, div=0.0) -> dict[str, np.ndarray]:
    """Hull's formulas (generalised, dividend yield q) on scipy's normal distribution,
    written here apart from the SQL under test."""
    spot, strike, years, rate, vol, div = map(np.asarray, (spot, strike, years, rate, vol, div))
    call = np.asarray(kind) == "C"
    d1 = (np.log(spot / strike) + (rate - div + vol**2 / 2) * years) / (vol * np.sqrt(years))
    d2 = d1 - vol * np.sqrt(years)
    eq, er = np.exp(-div * years), np.exp(-rate * years)
    price = np.where(call, spot * eq * norm.cdf(d1) - strike * er * norm.cdf(d2),
                     strike * er * norm.cdf(-d2) - spot * eq * norm.cdf(-d1))
    delta = np.where(call, eq * norm.cdf(d1), eq * (norm.cdf(d1) - 1))
    gamma = eq * norm.pdf(d1) / (spot * vol * np.sqrt(years))
    vega = spot * eq * norm.pdf(d1) * np.sqrt(years)
    decay = -spot * eq * norm.pdf(d1) * vol / (2 * np.sqrt(years))
    theta = np.where(call, decay - rate * strike * er * norm.cdf(d2) + div * spot * eq * norm.cdf(d1),
                     decay + rate * strike * er * norm.cdf(-d2) - div * spot * eq * norm.cdf(-d1))
    rho = np.where(call, strike * years * er * norm.cdf(d2), -strike * years * er * norm.cdf(-d2))
    return {"price": price, "delta": delta, "gamma": gamma, "vega": vega, "theta": theta, "rho": rho}


GREEKS = ("price", "delta", "gamma", "vega", "theta", "rho")


def assert_greeks(got: dict[str, list], want: dict[str, np.ndarray]) -> None:
    for g in GREEKS:
        np.testing.assert_allclose(np.asarray(got[g], float), want[g], rtol=1e-9, atol=1e-11, err_msg=g)


def test_hulls_example_through_the_references_payload():
    """Hull, example 15.6: S=42, K=40, r=10%, sigma=20%, T=0.5: call 4.76, put 0.81."""
    base = {"Ticker": "HULL", "EquityPrice": 42, "Strike": 40, "Rate": 0.1, "Time": 0.5, "Volatility": 0.2}
    call = lambda_handlers.black_scholes({**base, "CallPut": "c"}, None)
    put = lambda_handlers.black_scholes({**base, "CallPut": "p"}, None)
    assert round(call["BlackScholes_Option_Price"], 2) == 4.76 and call["Ticker"] == "HULL"
    assert round(put["BlackScholes_Option_Price"], 2) == 0.81
    # put-call parity, and the greeks' textbook signs
    assert math.isclose(call["BlackScholes_Option_Price"] - put["BlackScholes_Option_Price"],
                        42 - 40 * math.exp(-0.1 * 0.5), rel_tol=1e-12)
    assert 0 < call["delta"] < 1 and -1 < put["delta"] < 0 and call["gamma"] == pytest.approx(put["gamma"])
    assert lambda_handlers.black_scholes({**base, "CallPut": "x"}, None) == {
        "error": "kind: 'X' is neither 'C' (call) nor 'P' (put)"}


def test_options_in_the_event_match_an_independent_formula():
    rng = np.random.default_rng(7)
    n = 400
    params = {"spot": rng.uniform(5, 500, n), "strike": rng.uniform(5, 500, n), "years": rng.uniform(0.01, 3, n),
              "rate": rng.uniform(-0.01, 0.08, n), "vol": rng.uniform(0.05, 1.2, n), "div": rng.uniform(0, 0.05, n),
              "kind": rng.choice(["C", "P"], n)}
    options = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in params.items()} | {"id": f"o{i}"}
               for i in range(n)]
    options[5]["vol"] = -0.2
    options[9]["spot"] = "abc"
    answer = lambda_handlers.black_scholes({"options": options}, None)["options"]
    assert [o["id"] for o in answer] == [f"o{i}" for i in range(n)]
    assert answer[5]["price"] is None and answer[5]["error"] == "vol: -0.2 is not positive"
    assert answer[9]["price"] is None and answer[9]["error"] == "spot: not a finite number"
    good = [i for i in range(n) if i not in (5, 9)]
    want = bs_reference(*(params[k][good] for k in ("spot", "strike", "years", "rate", "vol", "kind")),
                        div=params["div"][good])
    assert_greeks({g: [answer[i][g] for i in good] for g in GREEKS}, want)
    assert lambda_handlers.black_scholes({"options": [{"spot": 1}]}, None) == {
        "error": "options need the column(s) strike, years, rate, vol, kind; got spot"}
    assert "none of Records (S3), source, options" in lambda_handlers.black_scholes({"Ticker": "X"}, None)["error"]


def test_an_s3_file_of_options_is_priced_as_it_streams(hdb, tmp_path):
    s3server = hdb["s3"]
    rng = np.random.default_rng(3)
    n = 30_000
    spot, strike = rng.uniform(20, 200, n), rng.uniform(20, 200, n)
    years, rate, vol = rng.uniform(0.05, 2, n), np.full(n, 0.03), rng.uniform(0.1, 0.6, n)
    kind = rng.choice(["C", "P"], n)
    lines = ["contract,spot,strike,years,rate,vol,kind"]
    columns = [spot.tolist(), strike.tolist(), years.tolist(), rate.tolist(), vol.tolist(), kind.tolist()]
    lines += [f"c{i}," + ",".join(repr(c[i]) if isinstance(c[i], float) else c[i] for c in columns) for i in range(n)]
    lines[1 + 20_000] = "c20000,oops,100,1,0.03,0.2,C"  # row 20,001 of the data
    key = f"options/{uuid.uuid4().hex[:6]}/chain 1.csv"
    s3server.client().put_object(Bucket=s3server.bucket, Key=key, Body="\n".join(lines).encode())
    ev = json.loads((EVENTS / "s3_put.json").read_text())
    ev["Records"][0]["s3"]["bucket"].update(name=s3server.bucket, arn=f"arn:aws:s3:::{s3server.bucket}")
    ev["Records"][0]["s3"]["object"]["key"] = urllib.parse.quote_plus(key, safe="/")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TICKPLANT_S3_ENDPOINT", s3server.endpoint)
        lambda_handlers._settings.cache_clear()
        (answer,) = lambda_handlers.black_scholes(ev, None)["priced"]
        lambda_handlers._settings.cache_clear()
    assert answer["rows"] == n and answer["unpriceable"] == 1
    assert answer["problems"] == ["row 20001: spot: not a finite number"]
    out_key = answer["output"].split("/", 3)[3]
    assert out_key == key.replace("options/", "greeks/options/").replace(".csv", ".parquet")
    body = s3server.client().get_object(Bucket=s3server.bucket, Key=out_key)["Body"].read()
    (tmp_path / "out.parquet").write_bytes(body)
    got = pq.read_table(tmp_path / "out.parquet")
    assert got.column("contract").to_pylist() == [f"c{i}" for i in range(n)]
    good = np.arange(n) != 20_000
    want = bs_reference(spot[good], strike[good], years[good], rate[good], vol[good], kind[good])
    assert_greeks({g: np.asarray(got.column(g).to_pylist(), dtype=float)[good] for g in GREEKS}, want)
    # its own output is never priced again
    ev["Records"][0]["s3"]["object"]["key"] = out_key
    assert "skipped" in lambda_handlers.black_scholes(ev, None)["priced"][0]
    # Parquet in, asked for by name, the answer where asked; what cannot be read is said
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"spot": [42.0], "strike": [40.0], "years": [0.5], "rate": [0.1], "vol": [0.2],
                             "kind": ["P"]}), parquet)
    s3server.client().put_object(Bucket=s3server.bucket, Key="options/hull.parquet", Body=parquet.read_bytes())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TICKPLANT_S3_ENDPOINT", s3server.endpoint)
        lambda_handlers._settings.cache_clear()
        hull = lambda_handlers.black_scholes({"source": f"s3://{s3server.bucket}/options/hull.parquet",
                                              "output": f"s3://{s3server.bucket}/elsewhere/hull.parquet"}, None)
        bad = lambda_handlers.black_scholes({"source": f"s3://{s3server.bucket}/options/x.json"}, None)
        lambda_handlers._settings.cache_clear()
    assert hull["rows"] == 1 and hull["output"] == f"s3://{s3server.bucket}/elsewhere/hull.parquet"
    body = s3server.client().get_object(Bucket=s3server.bucket, Key="elsewhere/hull.parquet")["Body"].read()
    assert round(pq.read_table(pa.BufferReader(body)).column("price")[0].as_py(), 2) == 0.81
    assert bad == {"error": f"s3://{s3server.bucket}/options/x.json: neither .csv nor .parquet"}


def test_the_option_table_priced_by_the_named_query(world, hdb):
    """Each unexpired contract's latest mark, its underlying's last quote mid at the day's
    close, ACT/365 to expiry: as computed here from the rows written."""
    client, _ = world
    path = "/v1/black_scholes?date=2026-11-20&rate=0.045&div=0.01&syms=" + ",".join(UNDERLYINGS)
    status, _, data = same_answer(client, "GET", path, QUANT_KEY, accept="application/vnd.apache.arrow.stream")
    got = pa.ipc.open_stream(data).read_all().to_pylist()
    at = day_ns(D2 + dt.timedelta(days=1))
    marks = hdb["written"][("option", D2)].to_pylist()
    quotes = hdb["written"][("quote", D2)].to_pylist()
    latest = {}
    for m in marks:
        if m["contract"] not in latest or m["time"] >= latest[m["contract"]]["time"]:
            latest[m["contract"]] = m
    mids = {}
    for q in quotes:  # in publish order: the last one at or before the close is in force
        mids[q["sym"]] = (q["bid"] + q["ask"]) / 2
    expiry_ns = {c: m["expiry"] for c, m in latest.items()}
    want = sorted((m for m in latest.values() if expiry_ns[m["contract"]] > at),
                  key=lambda m: (m["sym"], m["expiry"], m["strike"], m["kind"], m["contract"]))
    assert [g["contract"] for g in got] == [m["contract"] for m in want] and len(want) == 36
    ref = bs_reference([mids[m["sym"]] for m in want], [m["strike"] for m in want],
                       [(m["expiry"] - at) / YEAR_NS for m in want], 0.045, [m["vol"] for m in want],
                       [m["kind"] for m in want], div=0.01)
    assert_greeks({g: [row[g] for row in got] for g in GREEKS}, ref)
    assert {row["vol"] for row in got} == {m["vol"] for m in want}  # the later marks
    # before the underlyings' first quotes (14:00) nothing can be priced; after them, with the
    # marks made by then (10:00, not 15:00)
    assert json.loads(via_handler("GET", path + "&at=12:00", QUANT_KEY)[2])["rows"] == []
    early = json.loads(via_handler("GET", path + "&at=2026-11-20T14:30:00Z", QUANT_KEY)[2])["rows"]
    first = {m["contract"]: m["vol"] for m in sorted(marks, key=lambda m: m["time"], reverse=True)}
    assert len(early) == 36 and all(row["vol"] == first[row["contract"]] for row in early)


# -- packaging ----------------------------------------------------------------------------------------

def test_the_package_builds_a_function_that_imports_and_answers(tmp_path, capsys):
    out = tmp_path / "dist"
    assert cli_main(["aws", "package", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "past Lambda's 250 MB" in said and "container image" in said and "chdb" in said, said
    function = tmp_path / "function"
    with zipfile.ZipFile(out / "function.zip") as z:
        z.extractall(function)
    assert (function / "schemas" / "option.avsc").exists() and (function / "gateway" / "functions.tsv").exists()
    requirements = (out / "image" / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("chdb==") for r in requirements) and not any(r.startswith("tickplant") for r in requirements)
    assert "tickplant.aws.lambda_handlers.query" in (out / "image" / "Dockerfile").read_text()
    # a fresh interpreter with only the function's code and the image's packages (the ones pinned,
    # as installed here): the handler module imports from the zip and prices Hull's example
    site = next(p for p in sys.path if p.endswith("site-packages"))
    probe = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
             "import tickplant.aws.lambda_handlers as h, gateway.serverless as s; "
             "assert h.__file__.startswith(sys.argv[1]) and s.__file__.startswith(sys.argv[1]), h.__file__; "
             "print(round(h.black_scholes({'EquityPrice': 42, 'Strike': 40, 'Rate': 0.1, 'Time': 0.5, "
             "'Volatility': 0.2, 'CallPut': 'c'}, None)['BlackScholes_Option_Price'], 2))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TICKPLANT"))}
    ran = subprocess.run([sys.executable, "-S", "-c", probe, str(function), site], capture_output=True, text=True,
                         env=clean, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip() == "4.76", ran.stderr
    template = (out / "lambda.yaml").read_text()
    for resource in ("AWS::Lambda::Function", "AWS::ApiGatewayV2::Api", "AWS::Lambda::Permission"):
        assert resource in template
    # what deploy/ includes is what the command writes
    assert template == (REPO_ROOT / "deploy" / "cloudformation" / "lambda.yaml").read_text()
    problems = lint(template, config=ManualArgs(regions=["us-east-1"], include_checks=["I"]))
    assert [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in problems] == []


def test_an_app_that_fails_still_answers_one_line():
    """Starlette sends its 500 and then raises (for a server to log): the function answers."""
    from gateway.apigw import call, response_of, scope_of

    async def failing(scope, receive, send):
        raise RuntimeError("boom")

    scope, body = scope_of(event("GET", "/v1/health", None))
    resp = response_of(call(failing, scope, body))
    assert resp["statusCode"] == 500 and json.loads(resp["body"]) == {
        "error": "internal error; the function's log has the details"}


def test_an_answer_past_lambdas_response_limit_is_a_413_saying_so():
    from gateway.apigw import RESPONSE_LIMIT, HttpAnswer, response_of

    arrow = HttpAnswer(200, [("content-type", "application/vnd.apache.arrow.stream")], b"\x00" * (RESPONSE_LIMIT * 4 // 5))
    resp = response_of(arrow)  # base64 makes it 4/3 as large: past the limit
    assert resp["statusCode"] == 413 and "Lambda's response limit" in json.loads(resp["body"])["error"]
    small = response_of(HttpAnswer(200, [("content-type", "application/vnd.apache.arrow.stream")], b"\x01\x02"))
    assert small["isBase64Encoded"] and base64.b64decode(small["body"]) == b"\x01\x02"
