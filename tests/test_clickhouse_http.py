"""The gateway's ClickHouse HTTP interface, driven by real ClickHouse drivers.

One plant for the module: yesterday in the HDB, today in an RDB worker, and a
``tickplant gateway run --clickhouse-port`` process with the entitlement tests'
users file. Then clickhouse-connect (Python), the Go driver (clickhouse-go/v2 over
HTTP, the driver under Grafana's ClickHouse plugin: a small program built here with
the Go toolchain) and the JDBC driver (clickhouse-jdbc 0.10.0 from Maven Central, a
single-file Java program) connect, browse and query; and every refusal case of
tests/test_entitlements.py goes through this door too, refused with its reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import clickhouse_connect
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs import Worker, plant_env, wait_until
from test_entitlements import (
    ALICE_KEY,
    BOB_KEY,
    BYPASSES,
    CTE_SHADOWING,
    DENIED_COLUMN,
    DENIED_TABLE,
    INVALID_SQL,
    ROOT_KEY,
    UNKEPT_MODIFIERS,
    UNKNOWN_TABLE,
    USERS_TOML,
)
from twodays import publish_two_days

from tickplant.kafka.broker import free_port
from tickplant.kafka.jars import cache_root

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
D1, D2 = dt.date(2026, 11, 22), dt.date(2026, 11, 23)
REPO = Path(__file__).resolve().parent.parent
# where the Go module downloads and build cache and the JDBC jars are kept between runs and
# checkouts, beside the broker's jars; the probes themselves are rebuilt from this checkout's source
CLIENTS = Path(os.environ.get("TICKPLANT_CLIENTS_CACHE") or cache_root() / "clients")


class Plant:
    def __init__(self, ch_url: str, published: dict, log: Path, proc: subprocess.Popen):
        self.ch_url = ch_url
        self.host, port = urllib.parse.urlsplit(ch_url).netloc.split(":")
        self.port = int(port)
        self.published = published
        self.log = log
        self.proc = proc

    def trades(self, day: dt.date) -> pd.DataFrame:
        return pd.DataFrame(self.published[day]["trade"])

    def get(self, params: dict, headers: dict | None = None, body: bytes | None = None) -> tuple[int, Any, bytes]:
        url = self.ch_url + "/?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()


@pytest.fixture(scope="module")
def plant(broker, catalog, tmp_path_factory) -> Plant:
    tmp = tmp_path_factory.mktemp("chhttp")
    settings = broker.settings.replace(topic_prefix=f"ch{uuid.uuid4().hex[:8]}.", data_dir=tmp / "plant",
                                       batch_interval_ms=20)
    published = publish_two_days(settings, catalog, T0, (D1, D2), syms=6, seed=7, events=600)
    worker = Worker(settings, "rdb-ch1", tmp).start()
    users = tmp / "users.toml"
    users.write_text(USERS_TOML)
    port, ch_port = free_port(), free_port()
    env = {**plant_env(settings), "TICKPLANT_GATEWAY_USERS_FILE": str(users)}
    log = tmp / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tickplant", "gateway", "run", "--port", str(port),
                                 "--clickhouse-port", str(ch_port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        worker.wait_serving()
        wait_until(lambda: sum(worker.client.count("trade", date=D2.isoformat()).values())
                   == len(published[D2]["trade"]), 60, "today in the RDB", worker.log_tail)
        p = Plant(f"http://127.0.0.1:{ch_port}", published, log, proc)

        def answers_today() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                status, _, body = p.get({"query": "SELECT count() FROM trade WHERE date = today()"},
                                        {"X-ClickHouse-User": "root", "X-ClickHouse-Key": ROOT_KEY})
            except OSError:
                return False
            return status == 200 and body.strip() == str(len(published[D2]["trade"])).encode()

        wait_until(answers_today, 60, "the gateway's ClickHouse port to answer today", lambda: log.read_text())
        yield p
    finally:
        proc.terminate()
        proc.wait(15)
        worker.stop()


def client(plant: Plant, user: str = "root", key: str = ROOT_KEY, **kw):
    return clickhouse_connect.get_client(host=plant.host, port=plant.port, username=user, password=key, **kw)


# ------------------------------------------------------------------ clickhouse-connect


def test_clickhouse_connect_queries_to_pandas_and_arrow(plant):
    ch = client(plant)
    assert ch.command("SELECT version()").split(".")[0].isdigit()
    frame = ch.query_df("SELECT date, sym, count() AS n, sum(size) AS volume FROM trade "
                        "GROUP BY date, sym ORDER BY date, sym")
    expected = pd.concat([plant.trades(d).assign(date=d) for d in (D1, D2)]).groupby(["date", "sym"]).agg(
        n=("size", "size"), volume=("size", "sum")).reset_index()
    assert [d.date() if hasattr(d, "date") else d for d in frame.date] == list(expected.date)
    assert frame.sym.tolist() == expected.sym.tolist()
    assert frame.n.tolist() == expected.n.tolist() and frame.volume.tolist() == expected.volume.tolist()
    table = ch.query_arrow("SELECT time, sym, price FROM trade WHERE date = today() ORDER BY time, sym, price")
    assert isinstance(table, pa.Table) and table.num_rows == len(plant.published[D2]["trade"])
    today = plant.trades(D2).sort_values(["time", "sym", "price"], kind="stable")
    assert table.column("price").to_pylist() == today.price.tolist()
    times = table.column("time").cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_pylist()
    assert times == today.time.tolist()


def test_clickhouse_connect_entitlements_and_refusal_reason(plant):
    alice = client(plant, "alice", ALICE_KEY)
    frame = alice.query_df("SELECT * FROM trade")
    assert list(frame.columns) == ["time", "sym", "price", "size", "date"]  # her columns only
    both = pd.concat([plant.trades(d) for d in (D1, D2)])
    assert len(frame) == int(both.exchange.isin(["N", "Q"]).sum())  # her rows only
    with pytest.raises(Exception, match=r"column 'exchange' of table 'trade' is not granted to user 'alice'"):
        alice.query("SELECT exchange FROM trade")
    bob = client(plant, "bob", BOB_KEY)
    with pytest.raises(Exception, match=r"user 'bob' has no grant on table 'quote'"):
        bob.query_df("SELECT * FROM quote")
    # browsing: only what each may see
    assert sorted(bob.query("SELECT name FROM system.tables WHERE database = 'default'").result_columns[0]) == ["trade"]
    cols = alice.query("SELECT name, type FROM system.columns WHERE table = 'trade' ORDER BY position").result_rows
    assert [c[0] for c in cols] == ["time", "sym", "price", "size", "date"]
    assert dict(cols)["price"] == "Float64" and dict(cols)["date"] == "Date32"
    assert [r[:2] for r in alice.query("DESCRIBE TABLE default.trade").result_rows] == cols
    assert [r[0] for r in alice.query("SHOW TABLES").result_rows] == ["quote", "trade"]
    with pytest.raises(Exception, match=r"unknown table 'quote'; your tables: trade"):
        bob.query("DESCRIBE quote")
    with pytest.raises(Exception, match="Authentication failed"):
        client(plant, "alice", BOB_KEY)  # bob's key is not alice's


def test_query_log_has_the_clickhouse_door(plant):
    ch = client(plant)
    rows = ch.query("SELECT user, outcome, count() AS n FROM query_log WHERE endpoint = 'clickhouse' "
                    "GROUP BY user, outcome ORDER BY user, outcome").result_rows
    seen = {(u, o) for u, o, _ in rows}
    assert ("root", "ok") in seen
    assert ("alice", "denied") in seen or ("bob", "denied") in seen


# ------------------------------------------------------------------ the HTTP interface itself


def test_ping_formats_settings_and_auth_ways(plant):
    root = {"X-ClickHouse-User": "root", "X-ClickHouse-Key": ROOT_KEY}
    with urllib.request.urlopen(plant.ch_url + "/ping", timeout=10) as resp:
        assert resp.read() == b"Ok.\n"
    sql = "SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym ORDER BY sym"
    counts = plant.trades(D2).sym.value_counts().sort_index()
    status, headers, body = plant.get({"query": sql}, root)  # TabSeparated by default
    assert status == 200 and headers["X-ClickHouse-Format"] == "TabSeparated"
    assert body.decode().splitlines() == [f"{s}\t{n}" for s, n in counts.items()]
    assert json.loads(headers["X-ClickHouse-Summary"])["result_rows"] == str(len(counts))
    status, _, body = plant.get({"query": sql + " FORMAT JSONEachRow"}, root)
    assert [json.loads(line) for line in body.splitlines()] == [{"sym": s, "n": n} for s, n in counts.items()]
    status, _, body = plant.get({"default_format": "CSVWithNames"}, root, body=sql.encode())
    assert body.decode().splitlines()[0] == '"sym","n"'
    # query= and the body joined; Basic auth; user/password params; gzip when asked
    basic = {"Authorization": "Basic " + base64.b64encode(f"root:{ROOT_KEY}".encode()).decode()}
    status, _, body = plant.get({"query": "SELECT count() AS n"}, basic, body=b"FROM trade WHERE date = today()")
    assert status == 200 and body.strip() == str(len(plant.trades(D2))).encode()
    status, headers, body = plant.get({"query": sql + " FORMAT JSONCompact", "user": "bob", "password": BOB_KEY,
                                       "enable_http_compression": "1"}, {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(body))["data"][0] == [counts.index[0], counts.iloc[0]]
    readers = {"Parquet": lambda b: pq.read_table(pa.BufferReader(b)),
               "Arrow": lambda b: pa.ipc.open_file(pa.BufferReader(b)).read_all(),
               "ArrowStream": lambda b: pa.ipc.open_stream(b).read_all()}
    for fmt, read in readers.items():
        status, headers, body = plant.get({"query": sql + f" FORMAT {fmt}"}, root)
        assert status == 200 and headers["X-ClickHouse-Format"] == fmt
        got = read(body)
        assert [str(s) for s in got.column("sym").to_pylist()] == list(counts.index)
        assert got.column("n").to_pylist() == list(counts)
    for fmt, name in (("RowBinaryWithNamesAndTypes", "RowBinaryWithNamesAndTypes"), ("Native", "Native"),
                      ("TSVWithNamesAndTypes", "TabSeparatedWithNamesAndTypes")):
        status, headers, body = plant.get({"query": sql + f" FORMAT {fmt}"}, root)
        assert status == 200 and headers["X-ClickHouse-Format"] == name and counts.index[0].encode() in body
    status, _, body = plant.get({"query": "SELECT 1 FORMAT Protobuf"}, root)
    assert status == 400 and b"(UNKNOWN_FORMAT)" in body and b"'Protobuf'" in body
    # limits: a client may lower the gateway's, and unknown settings are refused by name
    status, headers, body = plant.get({"query": "SELECT * FROM trade", "max_result_rows": "5"}, root)
    assert status == 413 and headers["X-ClickHouse-Exception-Code"] == "396", body
    status, _, body = plant.get({"query": "SELECT count() FROM trade", "max_result_rows": "0",
                                 "max_execution_time": "86400"}, root)  # 0 and above: the gateway's own
    assert status == 200 and body.strip() == str(sum(len(plant.trades(d)) for d in (D1, D2))).encode()
    status, _, body = plant.get({}, root, body=b"SELECT 1 -- " + b"x" * 80_000)  # past gateway_max_statement_bytes
    assert status == 413, body
    status, headers, body = plant.get({"query": "SELECT 1", "max_partitions_to_read": "5"}, root)
    assert status == 400 and b"Code: 115." in body and b"max_partitions_to_read" in body
    status, headers, body = plant.get({"query": "SELECT 1"}, {"X-ClickHouse-User": "root", "X-ClickHouse-Key": "nope"})
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "516"
    assert body.startswith(b"Code: 516. DB::Exception: root: Authentication failed")


# ------------------------------------------------------------------ every refusal of the entitlement tests

# answered here by design, not refused: the ClickHouse door serves system.* from the catalog,
# the server functions drivers ask on connect, FORMAT, and `default.` (Grafana's query builder)
ANSWERED_HERE = {
    "SELECT * FROM system.tables", "SELECT * FROM `system`.`tables`", "SELECT version()", "SELECT currentUser()",
    "SELECT hostName()", "SELECT * FROM trade FORMAT JSON", "SELECT * FROM default.trade",
    'SELECT * FROM "default"."trade"', "DESCRIBE trade", "SHOW TABLES",
}
# refused here with the door's own reason
REASON_HERE = {
    "SELECT * FROM system.users": "system.users is not served here",
    "SELECT * FROM information_schema.columns": "information_schema.columns is not served here",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES": "INFORMATION_SCHEMA.TABLES is not served here",
    "SELECT * FROM trade WHERE sym IN (SELECT name FROM system.tables)": "system tables and the plant's tables",
}
REFUSALS = (  # (user, statement, a regular expression its refusal must match)
    [("alice", sql, r"column '(exchange|cond)' of table 'trade' is not granted to user 'alice'") for sql in DENIED_COLUMN]
    + [("bob", sql, re.escape("user 'bob' has no grant on table 'quote'")) for sql in DENIED_TABLE]
    + [("alice", "SELECT * FROM query_log", re.escape("no grant on table 'query_log'"))]
    + [("alice", sql, re.escape(f"unknown table '{name}'")) for sql, name in UNKNOWN_TABLE]
    + [("alice", sql, re.escape(reason)) for sql, reason in CTE_SHADOWING + UNKEPT_MODIFIERS]
    + [("root", sql, "(?i)" + re.escape(REASON_HERE.get(sql, reason))) for sql, reason in BYPASSES
       if sql not in ANSWERED_HERE]
    + [("root", sql, re.escape(where)) for sql, where in INVALID_SQL if sql.strip(" ;")]
)
KEYS = {"alice": ALICE_KEY, "bob": BOB_KEY, "root": ROOT_KEY}


@pytest.mark.parametrize("user, sql, reason", REFUSALS, ids=[f"{u}:{s[:60]}" for u, s, _ in REFUSALS])
def test_every_refusal_goes_through_this_door(plant, user, sql, reason):
    status, headers, body = plant.get({}, {"X-ClickHouse-User": user, "X-ClickHouse-Key": KEYS[user]},
                                      body=sql.encode())
    text = body.decode()
    assert status in (400, 403, 404), text
    assert text.startswith(f"Code: {headers['X-ClickHouse-Exception-Code']}. DB::Exception: "), text
    assert re.search(reason, text), text


@pytest.mark.parametrize("sql", sorted(ANSWERED_HERE))
def test_what_this_door_answers_instead(plant, sql):
    status, _, body = plant.get({}, {"X-ClickHouse-User": "root", "X-ClickHouse-Key": ROOT_KEY}, body=sql.encode())
    assert status == 200 and body, body


# ------------------------------------------------------------------ the Go driver


def _go_probe() -> Path:
    """tests/go/chprobe built once (module downloads and build cached under CLIENTS)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    out = CLIENTS / "chprobe"
    src = REPO / "tests" / "go" / "chprobe"
    newest = max(p.stat().st_mtime for p in src.iterdir())
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPATH": str(CLIENTS / "gopath"),
           "GOCACHE": str(CLIENTS / "gocache"), "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(out), "."], cwd=src, env=env, check=True, timeout=600)
    return out


@pytest.mark.timeout(900)  # the first run downloads the driver's modules and builds the program
def test_go_driver_over_http(plant):
    probe = _go_probe()
    sql = "SELECT sym, count() AS n, max(price) AS high FROM trade WHERE date = today() GROUP BY sym ORDER BY sym"
    out = subprocess.run([str(probe), f"{plant.host}:{plant.port}", "bob", BOB_KEY, sql],
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines[0] == "ping ok" and lines[1].startswith("version ")
    assert lines[2] == "tables trade"  # bob's tables only
    assert lines[3] == "columns sym:LowCardinality(String),n:UInt64,high:Float64"
    today = plant.trades(D2).groupby("sym").agg(n=("size", "size"), high=("price", "max")).reset_index()
    first = today.iloc[0]
    assert lines[4] == f"row {first.sym}|{first.n}|{first.high}"
    assert lines[-1] == f"rows {len(today)}"
    # again with the answers in ClickHouse's LZ4 blocks (compress=1): the driver checks their CityHash
    lz4 = subprocess.run([str(probe), f"{plant.host}:{plant.port}", "bob", BOB_KEY, sql, "lz4"],
                         capture_output=True, text=True, timeout=60)
    assert lz4.returncode == 0 and lz4.stdout.splitlines()[3:] == lines[3:], lz4.stdout + lz4.stderr
    denied = subprocess.run([str(probe), f"{plant.host}:{plant.port}", "bob", BOB_KEY, "SELECT * FROM quote", "lz4"],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "user 'bob' has no grant on table 'quote'" in denied.stdout


# ------------------------------------------------------------------ JDBC


def _jdbc_classpath() -> str:
    """clickhouse-jdbc 0.10.0 and its dependencies from Maven Central (tests/jdbc/pom.xml), and
    tests/jdbc/Probe.java compiled against them, once."""
    jars = CLIENTS / "jdbc"
    if not (jars / "jdbc-v2-0.10.0.jar").exists():
        subprocess.run(["mvn", "-q", "-B", "-f", str(REPO / "tests" / "jdbc" / "pom.xml"),
                        "dependency:copy-dependencies", f"-DoutputDirectory={jars}"], check=True, timeout=600)
    classpath = os.pathsep.join(str(p) for p in sorted(jars.glob("*.jar")))
    source, classes = REPO / "tests" / "jdbc" / "Probe.java", CLIENTS / "jdbc-probe"
    if not (classes / "Probe.class").exists() or (classes / "Probe.class").stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["javac", "-cp", classpath, "-d", str(classes), str(source)], check=True, timeout=300)
    return classpath + os.pathsep + str(classes)


@pytest.mark.timeout(900)  # the first run fetches the driver's jars from Maven Central
def test_jdbc_driver(plant):
    classpath = _jdbc_classpath()
    url = f"jdbc:clickhouse://{plant.host}:{plant.port}/default"
    sql = "SELECT sym, count() AS n FROM trade WHERE date = today() GROUP BY sym ORDER BY sym"
    out = subprocess.run(["java", "-cp", classpath, "Probe", url, "alice",
                          ALICE_KEY, sql], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "tables quote,trade" in lines, out.stdout  # alice's tables
    assert "columns time:DateTime64(9, 'UTC'),sym:String,price:Float64,size:Int64,date:Date32" in lines  # her columns
    visible = pd.concat([plant.trades(D2)])
    visible = visible[visible.exchange.isin(["N", "Q"])]
    counts = visible.sym.value_counts().sort_index()
    assert [line for line in lines if line.startswith("row ")] == [f"row {s}|{n}" for s, n in counts.items()]
    assert any("column 'exchange' of table 'trade' is not granted to user 'alice'" in line
               for line in lines if line.startswith("refused ")), out.stdout
