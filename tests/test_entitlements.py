"""Entitlements: the statement check, the rewrite, and every bypass we could think of.

Real parts: sqlglot parses, and the rewritten SQL runs on chDB over small
Parquet files standing in for the RDB+HDB source (the inner plant-table node is
replaced by ``file('<path>', 'Parquet')``, as the engine replaces it with its
own source). The oracle for rows and columns: a query run through the
rewrite over the full data must equal the same query run directly over a file
holding only what the user may see.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import chdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlglot import exp

from gateway.auth import Grant, Unauthorized, User, Users, UsersError, hash_key
from gateway.policy import authorize
from gateway.sql import Forbidden, SqlError, parse_select, render, table_refs

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
ROOT_KEY = "root-key-0123456789abcdef"

USERS_TOML = f"""
[users.alice]
keys = ["{hash_key(ALICE_KEY)}"]

[users.alice.tables.trade]
columns = ["time", "sym", "price", "size"]
rows = "exchange IN ('N', 'Q')"

[users.alice.tables.quote]
rows = "sym IN ('AAPL', 'MSFT')"

[users.bob]
keys = ["{BOB_KEY}"]
tables = {{ trade = {{}} }}

[users.root]
keys = ["{ROOT_KEY}"]
admin = true
"""

FUZZ_EXAMPLES = int(os.environ.get("ENTITLE_FUZZ", "150"))  # ENTITLE_FUZZ=1000 for a long run
SECRET = 9000  # every denied trade row has price and size >= SECRET; cond values are secret


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Users:
    path = tmp_path_factory.mktemp("users") / "users.toml"
    path.write_text(USERS_TOML)
    return Users.load(path)


@pytest.fixture(scope="module")
def columns(catalog) -> dict[str, list[str]]:
    cols = {t.name: [*t.columns, "date"] for t in catalog}
    cols["query_log"] = ["time", "user", "statement", "duration_ms", "rows", "outcome", "date"]
    return cols


def _trade_rows() -> pa.Table:
    rows = []
    for i in range(60):
        exchange = "NQX"[i % 3]
        secret = exchange == "X"
        rows.append({
            "time": 1_763_700_000_000_000_000 + i * 1_000_000_000,
            "sym": ["AAPL", "MSFT", "IBM", "GOOG"][i % 4],
            "price": float(SECRET + i) if secret else 100.0 + i,
            "size": SECRET + i if secret else 10 + i,
            "exchange": exchange,
            "cond": f"secretcond{i}",
            "date": dt.date(2026, 11, 20 + i % 2),
        })
    return pa.Table.from_pylist(rows).set_column(
        0, "time", pa.array([r["time"] for r in rows], pa.int64()).cast(pa.timestamp("ns", "UTC"))
    )


def _quote_rows() -> pa.Table:
    rows = []
    for i in range(40):
        sym = ["AAPL", "MSFT", "IBM", "GOOG"][i % 4]
        rows.append({
            "time": 1_763_700_000_500_000_000 + i * 1_000_000_000,
            "sym": sym,
            "bid": 99.0 + i if sym in ("AAPL", "MSFT") else float(SECRET + i),
            "ask": 101.0 + i,
            "bsize": 5 + i,
            "asize": 6 + i,
            "exchange": "NQX"[i % 3],
            "date": dt.date(2026, 11, 20 + i % 2),
        })
    table = pa.Table.from_pylist(rows)
    time = pa.array([r["time"] for r in rows], pa.int64()).cast(pa.timestamp("ns", "UTC"))
    return table.set_column(0, "time", time)


class Data:
    """Parquet files per table: the full data, and per user what that user may see."""

    def __init__(self, root: Path, columns: dict[str, list[str]]):
        self.root = root
        self.full = {"trade": _trade_rows(), "quote": _quote_rows()}
        self.paths = {t: self._write(f"{t}.parquet", tab) for t, tab in self.full.items()}
        self.columns = columns
        self._visible: dict[tuple[str, str], str] = {}

    def _write(self, name: str, table: pa.Table) -> str:
        path = self.root / name
        pq.write_table(table, path)
        return str(path)

    def visible_path(self, user: User, table: str) -> str:
        """A file with exactly the rows and columns ``user`` may see (computed by chDB
        from the grant, independently of the rewrite)."""
        key = (user.name, table)
        if key not in self._visible:
            grant = user.grant_for(table)
            assert grant is not None
            cols = [c for c in self.columns[table] if grant.column_allowed(c)]
            where = f" WHERE {grant.rows}" if grant.rows else ""
            sql = f"SELECT {', '.join(cols)} FROM file('{self.paths[table]}', 'Parquet'){where}"
            visible = chdb.query(sql, "ArrowTable")
            self._visible[key] = self._write(f"visible-{user.name}-{table}.parquet", visible)
        return self._visible[key]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, columns) -> Data:
    return Data(tmp_path_factory.mktemp("entitle-data"), columns)


def _source(path: str, table: exp.Table | None = None) -> exp.Expression:
    """``file(path, 'Parquet')`` standing where ``table`` was, under its alias or name."""
    reader = exp.Anonymous(
        this="file", expressions=[exp.Literal.string(path), exp.Literal.string("Parquet")]
    )
    if table is None:
        return reader
    alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
    return exp.Table(this=reader, alias=alias.copy())


def run_rewritten(sql: str, user: User, columns, data: Data) -> pa.Table:
    """parse, authorize, replace each plant table by its full data file, run on chDB."""
    ast = authorize(parse_select(sql), user, columns)
    for table in table_refs(ast):
        table.replace(_source(data.paths[table.name]))
    return chdb.query(render(ast), "ArrowTable")


def run_visible(sql: str, user: User, data: Data) -> pa.Table:
    """The same statement run directly over only what the user may see (the oracle)."""
    ast = parse_select(sql)
    for table in table_refs(ast):
        table.replace(_source(data.visible_path(user, table.name), table))
    return chdb.query(render(ast), "ArrowTable")


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(map(repr, r.values())) for r in table.to_pylist())


def _values(table: pa.Table) -> list:
    """Every cell, arrays flattened."""
    out: list = []
    stack = [v for r in table.to_pylist() for v in r.values()]
    while stack:
        value = stack.pop()
        if isinstance(value, (list, tuple)):
            stack.extend(value)
        else:
            out.append(value)
    return out


def assert_no_secret(table: pa.Table) -> None:
    for value in _values(table):
        if isinstance(value, str):
            assert "secretcond" not in value, value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert value < SECRET, value


# ---------------------------------------------------------------------------- users


def test_users_file_authenticates_hashed_plain_bearer_and_api_key(users: Users):
    assert users.authenticate(f"Bearer {ALICE_KEY}").name == "alice"
    assert users.authenticate(ALICE_KEY).name == "alice"  # X-API-Key value
    assert users.authenticate(f"  bearer   {BOB_KEY} ").name == "bob"
    root = users.authenticate(ROOT_KEY)
    assert root.admin and root.name == "root"
    alice = users.authenticate(ALICE_KEY)
    assert alice.grants["trade"].columns == frozenset({"time", "sym", "price", "size"})
    assert alice.grants["quote"].columns is None
    assert alice.grant_for("query_log") is None
    for header, reason in [
        (None, "no credentials"),
        ("  ", "no credentials"),
        ("Bearer ", "empty bearer token"),
        ("Bearer wrong-key-0123456789", "unknown API key"),
        (hash_key(ALICE_KEY), "unknown API key"),  # the stored hash is not a key
        (f"Basic {ALICE_KEY}", "unsupported authorization scheme; use"),
    ]:
        with pytest.raises(Unauthorized, match=reason):
            users.authenticate(header)


def test_open_users_is_one_anonymous_admin():
    users = Users.open()
    user = users.authenticate(None)
    assert user.admin and user.name == "anonymous"
    assert user.grant_for("trade") == Grant("trade")


@pytest.mark.parametrize(
    "text, error",
    [
        ("[users.a\nkeys=", "not valid TOML"),
        ("[users.a]\nkeys = ['short']\ntables = { trade = {} }", r"users\.a\.keys\[0\]: a plain key"),
        ("[users.a]\nkeys = ['sha256:abc']\ntables = { trade = {} }", "64 hex digits"),
        ("[users.a]\ntables = { trade = {} }", r"users\.a\.keys: a non-empty list"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']", r"users\.a: grants no tables"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = {} }\nrole = 1",
         r"unknown key\(s\) \['role'\]"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = { cols = [] } }",
         r"users\.a\.tables\.trade: unknown key\(s\) \['cols'\]"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = { rows = 'sym IN (SELECT sym FROM quote)' } }",
         r"users\.a\.tables\.trade\.rows: .* subquery"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = { rows = \"file('/etc/passwd') = ''\" } }",
         r"users\.a\.tables\.trade\.rows: .*file\(\) is not allowed"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = { rows = \"sym = 'A') OR (1\" } }",
         r"users\.a\.tables\.trade\.rows"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = { rows = 'sym = ' } }",
         r"users\.a\.tables\.trade\.rows: cannot parse"),
        ("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trade = {} }\n"
         "[users.b]\nkeys = ['k-0123456789abcdef']\ntables = { trade = {} }",
         r"users\.b\.keys: a key of users\.a is repeated"),
        ("title = 'x'", r"unknown top-level key"),
    ],
)
def test_users_file_errors_name_file_and_key(tmp_path: Path, text: str, error: str):
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(UsersError, match=error) as info:
        Users.load(path)
    assert str(path) in str(info.value)


def test_users_validate_against_catalog(tmp_path: Path, columns):
    path = tmp_path / "users.toml"
    path.write_text("[users.a]\nkeys = ['k-0123456789abcdef']\n"
                    "tables = { trade = { columns = ['sym', 'secret'] } }")
    with pytest.raises(UsersError, match=r"users\.a\.tables\.trade\.columns: unknown column 'secret'"):
        Users.load(path).validate(columns)
    path.write_text("[users.a]\nkeys = ['k-0123456789abcdef']\ntables = { trades = {} }")
    with pytest.raises(UsersError, match=r"unknown table 'trades'; tables: .*quote.*trade"):
        Users.load(path).validate(columns)
    path.write_text("[users.a]\nkeys = ['k-0123456789abcdef']\n"
                    "tables = { trade = { rows = \"venue = 'N'\" } }")
    with pytest.raises(UsersError, match=r"rows: unknown column 'venue'"):
        Users.load(path).validate(columns)
    with pytest.raises(UsersError, match="cannot read users file"):
        Users.load(tmp_path / "missing.toml")


def test_wildcard_grant_covers_plant_tables_not_query_log(columns, data):
    users = Users.from_dict({"users": {"w": {"keys": ["w-0123456789abcdef"],
                                             "tables": {"*": {"rows": "sym = 'AAPL'"}}}}})
    user = users.authenticate("w-0123456789abcdef")
    users.validate(columns)
    assert user.grant_for("query_log") is None
    out = run_rewritten("SELECT DISTINCT sym FROM trade UNION ALL SELECT DISTINCT sym FROM quote",
                        user, columns, data)
    assert out.column(0).to_pylist() == ["AAPL", "AAPL"]
    with pytest.raises(Forbidden, match="no grant on table 'query_log'"):
        authorize(parse_select("SELECT * FROM query_log"), user, columns)


# ---------------------------------------------------------------------------- the matrix

ALLOWED = [
    "SELECT sym, price FROM trade",
    "SELECT t.sym, t.price FROM trade AS t WHERE t.size > 0 ORDER BY t.time",
    "SELECT trade.sym FROM trade",
    "SELECT * FROM trade",
    "SELECT t.* FROM trade t",
    "SELECT COLUMNS('.*') FROM trade",
    "SELECT sym, count(), sum(size), avg(price) FROM trade GROUP BY sym",
    "SELECT * FROM (SELECT sym, price FROM trade WHERE price > 0) AS s",
    "WITH x AS (SELECT sym, size FROM trade) SELECT sym, sum(size) FROM x GROUP BY sym",
    "SELECT sym FROM trade UNION ALL SELECT sym FROM quote",
    "SELECT t.sym, t.price, q.bid, q.exchange FROM trade t ASOF JOIN quote q "
    "ON t.sym = q.sym AND t.time >= q.time",
    "SELECT a.sym, b.price FROM trade a JOIN trade b ON a.sym = b.sym AND a.time = b.time",
    "SELECT sym, price FROM trade WHERE sym IN (SELECT sym FROM quote)",
    "SELECT price AS exchange FROM trade ORDER BY exchange",  # an alias, not the column
    "SELECT date, count() FROM trade GROUP BY date",
    "SELECT arrayJoin([sym, toString(size)]) AS v FROM trade",
    "SELECT sym FROM trade ARRAY JOIN [1, 2] AS n",
    "SELECT (SELECT max(price) FROM trade) AS m",
    "WITH (SELECT max(size) FROM trade) AS m SELECT sym FROM trade WHERE size = m",
    "SELECT sym, price FROM trade WHERE EXISTS (SELECT 1 FROM quote WHERE quote.sym = 'AAPL')",
    "SELECT * FROM `trade`",
    'SELECT * FROM "trade"',
    "SELECT /* a comment */ sym FROM trade -- another",
    "SELECT sym FROM trade;",
    "WITH 'N' AS exchange SELECT sym, price FROM trade",  # a constant named like the filter column
    "SELECT sym, sum(size) OVER (PARTITION BY sym ORDER BY time) FROM trade",
    "SELECT arrayMap(exchange -> exchange * 2, [size]) FROM trade",  # a lambda parameter
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_queries_see_exactly_the_granted_rows_and_columns(sql, users, columns, data):
    alice = users.authenticate(ALICE_KEY)
    got = run_rewritten(sql, alice, columns, data)
    want = run_visible(sql, alice, data)
    assert got.num_rows > 0
    assert got.column_names == want.column_names
    assert _rows(got) == _rows(want)
    assert_no_secret(got)


def test_star_expands_to_granted_columns_plus_date(users, columns, data):
    alice = users.authenticate(ALICE_KEY)
    out = run_rewritten("SELECT * FROM trade", alice, columns, data)
    assert out.column_names == ["time", "sym", "price", "size", "date"]
    assert set(out.column("size").to_pylist()) == {10 + i for i in range(60) if i % 3 != 2}
    bob = users.authenticate(BOB_KEY)
    out = run_rewritten("SELECT * FROM trade", bob, columns, data)
    assert out.column_names == columns["trade"] and out.num_rows == 60


DENIED_COLUMN = [
    "SELECT exchange FROM trade",
    "SELECT trade.exchange FROM trade",
    "SELECT t.exchange FROM trade AS t",
    "SELECT sym FROM trade WHERE exchange = 'X'",
    "SELECT sym FROM trade ORDER BY cond",
    "SELECT sym FROM trade GROUP BY sym, exchange",
    "SELECT sym FROM trade t HAVING any(t.cond) != ''",
    "SELECT * FROM (SELECT sym, cond FROM trade) AS s",
    "SELECT s.cond FROM (SELECT * FROM trade) AS s",
    "WITH x AS (SELECT exchange FROM trade) SELECT * FROM x",
    "SELECT sym FROM quote UNION ALL SELECT cond FROM trade",
    "SELECT upper(lower(concat(sym, exchange))) FROM trade",
    "SELECT arrayJoin([sym, cond]) FROM trade",
    "SELECT sym FROM trade ARRAY JOIN [exchange] AS e",
    "SELECT sum(size) OVER (PARTITION BY exchange) FROM trade",
    "SELECT a.sym FROM trade a JOIN trade b ON a.sym = b.sym WHERE b.exchange = 'X'",
    "SELECT sym FROM trade JOIN quote USING (sym, exchange)",
    "SELECT exchange AS exchange FROM trade",
    "SELECT exchange AS x FROM trade ORDER BY x",
    "SELECT (SELECT max(cond) FROM trade) AS m",
    "SELECT sym FROM trade WHERE EXISTS (SELECT 1 FROM trade t2 WHERE t2.exchange = 'X')",
    "SELECT `exchange` FROM trade",
    'SELECT "cond" FROM trade',
    "SELECT default.trade.exchange FROM trade",
    "SELECT arrayMap(x -> concat(x, exchange), ['a']) FROM trade",
    "SELECT sym FROM trade WHERE sym IN (SELECT cond FROM trade)",
    "SELECT * REPLACE (cond AS price) FROM trade",
    "SELECT sym FROM trade LIMIT 1 BY exchange",
    "SELECT sym, count() OVER w FROM trade WINDOW w AS (PARTITION BY exchange)",
    # an alias of the same name elsewhere in the statement does not make it an alias here
    "SELECT exchange FROM trade WHERE sym IN (SELECT 'x' AS exchange)",
    "SELECT (SELECT 'N' AS exchange), exchange FROM trade",
    "SELECT 1 AS exchange FROM quote UNION ALL SELECT exchange FROM trade",
    "SELECT arrayMap(exchange -> 1, [1]), exchange FROM trade",
]


@pytest.mark.parametrize("sql", DENIED_COLUMN)
def test_denied_column_is_refused_naming_it(sql, users, columns):
    alice = users.authenticate(ALICE_KEY)
    with pytest.raises(Forbidden, match=r"column '(exchange|cond)' of table 'trade' is not granted to user 'alice'"):
        authorize(parse_select(sql), alice, columns)


def test_ambiguous_denied_column_asks_to_qualify(users, columns, data):
    alice = users.authenticate(ALICE_KEY)
    sql = "SELECT exchange FROM trade JOIN quote USING (sym)"
    with pytest.raises(Forbidden, match=r"qualify it \(quote\.exchange\)"):
        authorize(parse_select(sql), alice, columns)
    out = run_rewritten("SELECT t.sym, q.exchange FROM trade t JOIN quote q ON t.sym = q.sym",
                        alice, columns, data)
    assert set(out.column(1).to_pylist()) == {"N", "Q", "X"}  # quote's own column


def test_denied_column_cannot_be_read_even_past_the_precheck(users, columns, data):
    """The rewrite is the guarantee: with the pre-check skipped, the column is unknown."""
    alice = users.authenticate(ALICE_KEY)
    ast = parse_select("SELECT cond FROM trade")
    # what authorize returns when the pre-check is bypassed: only the rewrite
    from gateway.policy import restricted_source

    for table in table_refs(ast):
        restricted = restricted_source(table, alice.grant_for("trade"), columns["trade"])
        table.replace(restricted)
    for table in table_refs(ast):
        table.replace(_source(data.paths["trade"]))
    with pytest.raises(Exception, match="cond"):
        chdb.query(render(ast), "ArrowTable")


DENIED_TABLE = [  # bob has trade only
    "SELECT * FROM quote",
    "SELECT sym FROM trade UNION ALL SELECT sym FROM quote",
    "SELECT * FROM trade WHERE sym IN (SELECT sym FROM quote)",
    "WITH q AS (SELECT * FROM quote) SELECT * FROM trade",
    "SELECT (SELECT count() FROM quote)",
    "SELECT * FROM trade t JOIN quote q USING (sym)",
]


def test_denied_table(users, columns):
    bob = users.authenticate(BOB_KEY)
    for sql in DENIED_TABLE:
        with pytest.raises(Forbidden, match="user 'bob' has no grant on table 'quote'"):
            authorize(parse_select(sql), bob, columns)
    alice = users.authenticate(ALICE_KEY)
    with pytest.raises(Forbidden, match="no grant on table 'query_log'"):
        authorize(parse_select("SELECT * FROM query_log"), alice, columns)
    root = users.authenticate(ROOT_KEY)
    ast = authorize(parse_select("SELECT * FROM query_log"), root, columns)
    assert [t.name for t in table_refs(ast)] == ["query_log"]


UNKNOWN_TABLE = [
    ("SELECT * FROM trades", "trades"),
    ("SELECT * FROM TrAdE", "TrAdE"),
    ("SELECT * FROM TRADE", "TRADE"),
    ("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) AS s, x", "x"),
]


@pytest.mark.parametrize("sql, name", UNKNOWN_TABLE)
def test_unknown_table_is_400_listing_tables(sql, name, users, columns):
    alice = users.authenticate(ALICE_KEY)
    with pytest.raises(SqlError, match=f"unknown table '{name}'; your tables: .*quote.*trade"):
        authorize(parse_select(sql), alice, columns)


DENIED_ROWS = [
    "SELECT * FROM trade",
    "SELECT * FROM trade WHERE 1 = 1 OR price > 0",
    "SELECT * FROM (SELECT * FROM trade) AS t",
    "WITH x AS (SELECT * FROM trade) SELECT * FROM x",
    "SELECT * FROM trade UNION ALL SELECT * FROM trade",
    "SELECT a.price, b.size FROM trade a JOIN trade b ON a.sym = b.sym",
    "SELECT a.price, b.size FROM trade a FULL OUTER JOIN trade b ON a.time = b.time",
    "SELECT a.price, b.size FROM trade a CROSS JOIN trade b",
    "SELECT max(price), max(size), count() FROM trade",
    "SELECT t.price FROM trade t, trade u WHERE t.time = u.time",
    "SELECT price FROM trade WHERE time IN (SELECT time FROM trade)",
    "SELECT price, bid FROM trade t ASOF LEFT JOIN quote q ON t.sym = q.sym AND t.time >= q.time",
    "WITH 'N' AS exchange SELECT * FROM trade",  # constant named like the filter's column
    "SELECT 'N' AS exchange, price FROM trade",
    "SELECT price FROM trade PREWHERE size > 0",  # PREWHERE folded into WHERE
    # error probes: they would raise on a denied row's value if evaluated before the filter
    f"SELECT count() FROM trade WHERE CAST(if(price = {SECRET + 2}, 'x', '1') AS Int64) = 1",
    f"SELECT count() FROM trade WHERE intDiv(1, toInt64(size - {SECRET + 5})) = 0",
    f"SELECT sym FROM trade t WHERE t.size IN (SELECT intDiv(10, toInt64(size - {SECRET + 8})) "
    "FROM trade) OR 1",
]


@pytest.mark.parametrize("sql", DENIED_ROWS)
def test_denied_rows_never_come_back(sql, users, columns, data):
    alice = users.authenticate(ALICE_KEY)
    got = run_rewritten(sql, alice, columns, data)
    assert got.num_rows > 0
    assert_no_secret(got)
    assert _rows(got) == _rows(run_visible(sql, alice, data))


def test_row_filter_counts(users, columns, data):
    alice = users.authenticate(ALICE_KEY)
    out = run_rewritten("SELECT count() AS n FROM trade", alice, columns, data)
    assert out.column("n").to_pylist() == [40]
    out = run_rewritten("SELECT groupUniqArray(sym) AS s FROM quote", alice, columns, data)
    assert sorted(out.column("s").to_pylist()[0]) == ["AAPL", "MSFT"]
    out = run_rewritten("SELECT count() AS n FROM trade", users.authenticate(ROOT_KEY), columns, data)
    assert out.column("n").to_pylist() == [60]


# ---------------------------------------------------------------------------- bypasses

BYPASSES = [
    # table functions, in FROM, JOIN, subqueries, CTEs and as scalars
    ("SELECT * FROM file('/etc/passwd', 'CSV')", "table function file()"),
    ("SELECT * FROM url('http://127.0.0.1/', 'CSV')", "table function url()"),
    ("SELECT * FROM s3('http://x/b/k.csv')", "table function s3()"),
    ("SELECT * FROM remote('127.0.0.1', default.trade)", "table function remote()"),
    ("SELECT * FROM remoteSecure('127.0.0.1', default.trade)", "table function remoteSecure()"),
    ("SELECT * FROM cluster('default', default.trade)", "table function cluster()"),
    ("SELECT * FROM merge('default', '^tr')", "table function merge()"),
    ("SELECT * FROM input('a String')", "table function input()"),
    ("SELECT * FROM numbers(10)", "table function numbers()"),
    ("SELECT * FROM python(users)", "table function python()"),
    ("SELECT * FROM view(SELECT * FROM trade)", "table function view()"),
    ("SELECT * FROM executable('x.sh', 'CSV', 'a String')", "table function executable()"),
    ("SELECT * FROM trade t JOIN file('/etc/passwd') f ON 1", "table function file()"),
    ("SELECT * FROM (SELECT * FROM url('http://x', 'CSV')) AS s", "table function url()"),
    ("WITH x AS (SELECT * FROM numbers(3)) SELECT * FROM x", "table function numbers()"),
    ("SELECT sym FROM trade UNION ALL SELECT * FROM file('a')", "table function file()"),
    ("SELECT file('/etc/passwd')", "function file() is not allowed"),
    ("SELECT * APPLY(file) FROM trade", "file()"),
    # system / db-qualified tables
    ("SELECT * FROM system.tables", "database-qualified"),
    ("SELECT * FROM system.users", "database-qualified"),
    ("SELECT * FROM information_schema.columns", "database-qualified"),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "database-qualified"),
    ("SELECT * FROM default.trade", "database-qualified"),
    ('SELECT * FROM "default"."trade"', "database-qualified"),
    ("SELECT * FROM `system`.`tables`", "database-qualified"),
    ("SELECT * FROM trade WHERE sym IN (SELECT name FROM system.tables)", "database-qualified"),
    ("SELECT sym FROM trade WHERE sym IN quote", "a bare name after IN reads a table"),
    ("SELECT sym FROM trade WHERE sym IN (quote)", "a bare name after IN reads a table"),
    # clauses
    ("SELECT * FROM trade SETTINGS max_threads = 64", "SETTINGS is not allowed"),
    ("SELECT * FROM (SELECT * FROM trade SETTINGS readonly = 0) AS s", "SETTINGS is not allowed"),
    ("SELECT * FROM trade FORMAT JSON", "FORMAT is not allowed"),
    ("SELECT * FROM trade INTO OUTFILE '/tmp/x.csv'", "INTO OUTFILE is not allowed"),
    ("SELECT * FROM trade INTO /* x */ OUTFILE '/tmp/x.csv'", "INTO OUTFILE is not allowed"),
    ("SELECT {p:String}", "query parameters are not supported"),
    # statements
    ("INSERT INTO trade VALUES (1)", "only SELECT statements run; this is INSERT"),
    ("ALTER TABLE trade DELETE WHERE 1", "only SELECT statements run; this is ALTER"),
    ("DROP TABLE trade", "only SELECT statements run; this is DROP"),
    ("CREATE TABLE x (a Int8) ENGINE = Memory", "only SELECT statements run; this is CREATE"),
    ("SET readonly = 0", "only SELECT statements run; this is SET"),
    ("SYSTEM FLUSH LOGS", "only SELECT statements run; this is SYSTEM"),
    ("KILL QUERY WHERE 1", "only SELECT statements run; this is KILL"),
    ("ATTACH TABLE x", "only SELECT statements run; this is ATTACH"),
    ("OPTIMIZE TABLE trade FINAL", "only SELECT statements run; this is OPTIMIZE"),
    ("EXPLAIN SELECT * FROM trade", "only SELECT statements run; this is EXPLAIN"),
    ("DESCRIBE trade", "only SELECT statements run; this is DESCRIBE"),
    ("SHOW TABLES", "only SELECT statements run; this is SHOW"),
    ("TRUNCATE TABLE trade", "only SELECT statements run; this is TRUNCATE"),
    ("RENAME TABLE trade TO t2", "only SELECT statements run; this is RENAME"),
    ("GRANT SELECT ON *.* TO alice", "only SELECT statements run; this is GRANT"),
    ("USE system", "only SELECT statements run; this is USE"),
    # several statements, comments hiding them
    ("SELECT 1; DROP TABLE trade", "one statement per query; got 2"),
    ("SELECT 1; SELECT 2", "one statement per query; got 2"),
    ("SELECT sym FROM trade; -- x\n SELECT cond FROM trade", "one statement per query; got 2"),
    ("SELECT sym FROM trade /* ; */ ; DROP TABLE trade", "one statement per query; got 2"),
    ("/* SELECT */ DROP TABLE trade", "only SELECT statements run; this is DROP"),
    ("-- SELECT\nDROP TABLE trade", "only SELECT statements run; this is DROP"),
    # dangerous functions
    ("SELECT dictGet('d', 'a', toUInt64(1))", "function dictGet() is not allowed"),
    ("SELECT dictGetString('d', 'a', toUInt64(1))", "function dictGetString() is not allowed"),
    ("SELECT dictHas('d', 1)", "dictHas() is not allowed"),
    ("SELECT joinGet('j', 'v', 1)", "joinGet() is not allowed"),
    ("SELECT getSetting('readonly')", "getSetting() is not allowed"),
    ("SELECT hasColumnInTable('default', 'trade', 'cond')", "hasColumnInTable() is not allowed"),
    ("SELECT currentUser()", "currentUser() is not allowed"),
    ("SELECT hostName()", "hostName() is not allowed"),
    ("SELECT version()", "version() is not allowed"),
    ("SELECT getMacro('shard')", "getMacro() is not allowed"),
    ("SELECT sym FROM trade WHERE throwIf(price > 1000)", "throwIf() is not allowed"),
    ("SELECT sleep(3)", "sleep() is not allowed"),
    ("SELECT __getScalar('x')", "__getScalar() is not allowed"),
    ("SELECT logTrace('x')", "logTrace() is not allowed"),
    ("SELECT arrayMap(x -> file(x), ['/etc/passwd'])", "file() is not allowed"),
    ("SELECT sym FROM trade WHERE globalIn(sym, quote)", "globalIn() is not allowed"),
    ("SELECT arrayJoin([file('/etc/passwd')])", "file() is not allowed"),
]


@pytest.mark.parametrize("sql, reason", BYPASSES)
def test_bypass_attempts_are_forbidden_with_the_reason(sql, reason, users, columns):
    root = users.authenticate(ROOT_KEY)  # refused even for admins: no one runs these
    with pytest.raises(Forbidden, match="(?i)" + reason.replace("(", r"\(").replace(")", r"\)")):
        authorize(parse_select(sql), root, columns)


CTE_SHADOWING = [
    ("WITH trade AS (SELECT * FROM quote) SELECT * FROM trade", "CTE name 'trade' is also a table name"),
]


@pytest.mark.parametrize("sql, reason", CTE_SHADOWING)
def test_cte_shadowing_a_table_is_forbidden(sql, reason, users, columns):
    with pytest.raises(Forbidden, match=reason):
        authorize(parse_select(sql), users.authenticate(ALICE_KEY), columns)


UNKEPT_MODIFIERS = [
    ("SELECT * FROM trade FINAL", "FINAL is not supported"),
    ("SELECT * FROM trade SAMPLE 0.1", "SAMPLE is not supported"),
    ("SELECT * FROM (trade JOIN quote USING sym)", "parenthesised joins"),
]


@pytest.mark.parametrize("sql, reason", UNKEPT_MODIFIERS)
def test_table_modifiers_the_rewrite_cannot_keep_are_400(sql, reason, users, columns):
    with pytest.raises(SqlError, match=reason):
        authorize(parse_select(sql), users.authenticate(ALICE_KEY), columns)


INVALID_SQL = [
    ("SELEC * FROM trade", "line 1"),
    ("SELECT * FROM trade WHERE", "line 1"),
    ("SELECT (1 FROM trade", "line 1"),
    ("SELECT 'unterminated FROM trade", "cannot read the query"),
    ("", "the query is empty"),
    (" ; ", "the query is empty"),
    ("SELECT * FROM trade\nWHERE price >", "line 2"),
    ("SELECT " + "(" * 3000 + "1" + ")" * 3000, "nests too deeply"),
    ("SELECT * FROM " + "(SELECT * FROM " * 400 + "trade" + ") AS s" * 400, "nests too deeply"),
]


@pytest.mark.parametrize("sql, where", INVALID_SQL)
def test_invalid_sql_is_400_with_the_parsers_position(sql, where):
    with pytest.raises((SqlError, Forbidden), match=where):
        parse_select(sql)


def test_comments_never_reach_clickhouse(users, columns):
    alice = users.authenticate(ALICE_KEY)
    sql = "SELECT sym -- */ , cond /*\nFROM trade /* note */ WHERE price > 1 # tail"
    out = render(authorize(parse_select(sql), alice, columns))
    assert "/*" not in out and "--" not in out and "cond" not in out
    assert "note" not in out and "tail" not in out


def test_quoting_round_trips_through_clickhouse(users, columns, data):
    """Literals and identifiers the generator re-quotes mean the same to ClickHouse."""
    alice = users.authenticate(ALICE_KEY)
    tricky = ["it's", "a\\b", "\\'", "'; DROP TABLE trade; --", "*/ cond /*", "x\ny", '"q"', "`b`"]
    for value in tricky:
        literal = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        sql = f"SELECT {literal} AS v, count() AS n FROM trade"
        out = run_rewritten(sql, alice, columns, data)
        assert out.column("v").to_pylist() == [value]
        assert out.column("n").to_pylist() == [40]
    out = run_rewritten('SELECT sym AS "we""ird`name" FROM trade LIMIT 1', alice, columns, data)
    assert out.column_names == ['we"ird`name']


@pytest.mark.parametrize("literal", [
    "$$it's$$", "$$a\\'b$$", "$$x\\$$", "$tag$a$$b$tag$", "'a\\x27b'", "'a\\u0027b'",
    "'a\\\\'", "'\\n\\t\\0'", "'*/ --'", "`x` = 'y'",
])
def test_generated_sql_means_what_clickhouse_reads_from_the_user_text(literal):
    """A differential check: ClickHouse evaluates our regenerated SQL and the user's
    own text to the same value (strings, heredocs, escapes)."""
    sql = f"SELECT {literal} AS v" if not literal.startswith("`") else "SELECT 1 AS `x`, `x` = 1"
    direct = chdb.query(sql, "ArrowTable")
    regenerated = chdb.query(render(parse_select(sql)), "ArrowTable")
    assert direct.to_pylist() == regenerated.to_pylist()


# ---------------------------------------------------------------------------- fuzz

TRADE_GRANTED = ["time", "sym", "price", "size", "date"]
TRADE_DENIED = ["exchange", "cond"]
QUOTE_COLS = ["time", "sym", "bid", "ask", "bsize", "asize", "exchange", "date"]


@st.composite
def fuzz_query(draw) -> tuple[str, bool]:
    """A SELECT over trade/quote; returns (sql, uses a denied column)."""
    table = draw(st.sampled_from(["trade", "quote"]))
    pool = TRADE_GRANTED + TRADE_DENIED if table == "trade" else QUOTE_COLS
    denied_pool = set(TRADE_DENIED) if table == "trade" else set()
    alias = draw(st.sampled_from([None, "t", "x1", "`odd alias`", table]))
    qual = draw(st.sampled_from(["", "alias"]))
    prefix = (alias or table) + "." if qual and alias != "`odd alias`" else ""
    cols = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    used_denied = bool(set(cols) & denied_pool)
    items = []
    for i, c in enumerate(cols):
        wrap = draw(st.sampled_from(["{}", "toString({})", "length(toString({}))", "{} AS a{i}"]))
        items.append(wrap.format(f"{prefix}{c}", i=i))
    star = draw(st.sampled_from([None, "*", "COLUMNS('.*')"]))
    select_list = star if star else ", ".join(items)
    if star:
        used_denied = False
    source = table + (f" AS {alias}" if alias else "")
    where_col = draw(st.sampled_from([None, *pool]))
    where = ""
    if where_col:
        where = f" WHERE toString({prefix}{where_col}) != 'zzz'"
        used_denied |= where_col in denied_pool
    order_col = draw(st.sampled_from([None, *pool]))
    order = ""
    if order_col:
        order = f" ORDER BY toString({prefix}{order_col})"
        used_denied |= order_col in denied_pool
    sql = f"SELECT {select_list} FROM {source}{where}{order}"
    shape = draw(st.sampled_from(["plain", "subquery", "cte", "union", "scalar_in", "selfjoin"]))
    if shape == "subquery":
        sql = f"SELECT * FROM ({sql}) AS s"
    elif shape == "cte":
        sql = f"WITH c AS ({sql}) SELECT * FROM c"
    elif shape == "union":
        sql = f"{sql} UNION ALL {sql}"
    elif shape == "scalar_in":
        sql = f"SELECT count() AS n FROM ({sql}) AS s"
    elif shape == "selfjoin":
        right = draw(st.sampled_from(pool))
        used_denied |= right in denied_pool
        sql = f"SELECT l.*, r.{right} FROM ({sql}) AS l CROSS JOIN {table} AS r"
    return sql, used_denied


@st.composite
def fuzz_join(draw) -> tuple[str, bool]:
    """trade joined to quote (or to itself) with qualified columns, aggregates and aliases."""
    right = draw(st.sampled_from(["quote", "trade"]))
    ta, ra = draw(st.sampled_from([("t", "q"), ("a", "b"), ("trade", "r")]))
    right_pool = QUOTE_COLS if right == "quote" else TRADE_GRANTED + TRADE_DENIED
    right_denied = set() if right == "quote" else set(TRADE_DENIED)
    picks = draw(st.lists(st.one_of(
        st.tuples(st.just(ta), st.sampled_from(TRADE_GRANTED + TRADE_DENIED)),
        st.tuples(st.just(ra), st.sampled_from(right_pool)),
    ), min_size=1, max_size=4))
    used_denied = any(
        (q == ta and c in TRADE_DENIED) or (q == ra and c in right_denied) for q, c in picks
    )
    aggregate = draw(st.booleans())
    if aggregate:
        items = [f"count() AS n{i}" if i % 2 else f"max(toString({q}.{c})) AS m{i}"
                 for i, (q, c) in enumerate(picks)]
        used_denied = any(
            ((q == ta and c in TRADE_DENIED) or (q == ra and c in right_denied))
            for i, (q, c) in enumerate(picks) if i % 2 == 0
        )
    else:
        items = [f"{q}.{c} AS c{i}" for i, (q, c) in enumerate(picks)]
    kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "ASOF LEFT JOIN"]))
    on = f"{ta}.sym = {ra}.sym" + (f" AND {ta}.time >= {ra}.time" if "ASOF" in kind else "")
    sql = f"SELECT {', '.join(items)} FROM trade AS {ta} {kind} {right} AS {ra} ON {on}"
    if draw(st.booleans()):
        sql = f"SELECT * FROM ({sql}) AS j"
    return sql, used_denied


@hsettings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(fuzz_query(), fuzz_join()))
def test_fuzz_never_leaks_denied_columns_or_rows(users, columns, data, generated):
    sql, used_denied = generated
    alice = users.authenticate(ALICE_KEY)
    try:
        ast = authorize(parse_select(sql), alice, columns)
    except Forbidden as err:
        assert used_denied, f"{sql!r} refused: {err}"
        return
    except SqlError as err:
        raise AssertionError(f"{sql!r}: unexpected SqlError {err}") from err
    assert not used_denied, f"{sql!r} was not refused"
    text = render(ast)
    from gateway.sql import parse_select as reparse

    assert render(reparse(text)) == text  # the SQL we send means what we checked
    got = run_rewritten(sql, alice, columns, data)
    assert_no_secret_for(got, sql)
    want = run_visible(sql, alice, data)
    assert got.column_names == want.column_names
    assert _rows(got) == _rows(want)


def assert_no_secret_for(table: pa.Table, sql: str) -> None:
    """No denied trade row's marker value and no cond value appears (quote bids of
    hidden syms are also >= SECRET)."""
    for value in _values(table):
        if isinstance(value, str):
            assert "secretcond" not in value, (sql, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert value < SECRET, (sql, value)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("SELECT FROM trade WHERE ;'\"`()*,/-#\n\\x=1") + [
    "SELECT", " FROM ", "trade", "quote", " UNION ALL ", "(", ")", ";", "/*", "*/", "--", "'",
    " WHERE ", "file(", "system.", "SETTINGS ", " AS ", "cond", "exchange", "DROP ", "INTO ",
    "OUTFILE ", "WITH ", "{", "}", "$$", "`", "\"", "\\", "\n"]), max_size=40).map("".join))
def test_fuzz_garbage_only_raises_sqlerror_or_forbidden(text):
    alice = User("alice", {"trade": Grant("trade", frozenset({"sym", "price"}))})
    cols = {"trade": ["time", "sym", "price", "exchange", "cond", "date"]}
    try:
        ast = authorize(parse_select(text), alice, cols)
    except (SqlError, Forbidden):
        return
    for table in table_refs(ast):  # every table read sits in its restricted subquery
        assert table.name == "trade"
        inner = table.parent.parent
        assert isinstance(inner, exp.Select) and isinstance(inner.parent, exp.Subquery)
        assert [c.name for c in inner.expressions] == ["sym", "price", "date"]


def test_hash_key_matches_sha256():
    assert hash_key("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("sql", [
    "SELECT '__tickplant_source_0__' AS s FROM trade",
    "SELECT sym AS `__tickplant_source_0__` FROM trade",
    "SELECT sym FROM __TICKPLANT_source_1__",
])
def test_engine_placeholder_names_are_reserved(sql):
    with pytest.raises(Forbidden, match="reserved for the gateway"):
        parse_select(sql)


def test_subscriptions_need_an_unrestricted_grant(users, columns):
    from gateway.policy import check_subscription

    check_subscription(users.authenticate(BOB_KEY), "trade", columns)
    check_subscription(users.authenticate(ROOT_KEY), "quote", columns)
    alice = users.authenticate(ALICE_KEY)
    with pytest.raises(Forbidden, match="limited to some columns and rows of 'trade'"):
        check_subscription(alice, "trade", columns)
    with pytest.raises(Forbidden, match="'alice' is limited to some rows of 'quote'"):
        check_subscription(alice, "quote", columns)
    # an engine's output is computed from every row of the tables it reads: it needs their
    # whole grants (alice's vwap would tell her of the exchanges she may not see)
    plant = ["trade", "quote"]
    check_subscription(users.authenticate(ROOT_KEY), "analytics", columns, derived_from=plant)
    check_subscription(users.authenticate(BOB_KEY), "bars", columns, derived_from=["trade"])
    with pytest.raises(Forbidden, match="'analytics', computed from every row of 'trade', needs an unrestricted"):
        check_subscription(alice, "analytics", columns, derived_from=plant)
    with pytest.raises(Forbidden, match="user 'bob' has no grant on table 'quote'"):
        check_subscription(users.authenticate(BOB_KEY), "analytics", columns, derived_from=plant)
    with pytest.raises(Forbidden, match="user 'bob' has no grant on table 'quote'"):
        check_subscription(users.authenticate(BOB_KEY), "quote", columns)


def test_restrict_table_applies_the_grant_to_a_live_batch(users, data):
    from gateway.policy import restrict_table

    alice = users.authenticate(ALICE_KEY)
    batch = data.full["trade"].drop_columns(["date"])
    out = restrict_table(alice.grant_for("trade"), batch)
    assert out.column_names == ["time", "sym", "price", "size"]
    assert out.num_rows == 40
    assert_no_secret(out)
    assert sorted(out.column("size").to_pylist()) == [10 + i for i in range(60) if i % 3 != 2]
    bob = users.authenticate(BOB_KEY)
    assert restrict_table(bob.grant_for("trade"), batch).equals(batch)


def test_format_the_scalar_is_allowed_and_format_the_table_function_is_not():
    """``format('{} {}', a, b)`` formats values the statement may read; ``format(CSV, '...')``
    in FROM makes a table out of text, refused like every table function."""
    assert "format('{} {}', sym" in render(parse_select("SELECT format('{} {}', sym, toString(price)) AS s FROM trade"))
    for attack in ("SELECT * FROM format(JSONEachRow, '{\"a\":1}')",
                   "SELECT (SELECT count() FROM format(CSV, '1')) AS n FROM trade"):
        with pytest.raises(Forbidden, match="(?i)table function FORMAT"):
            parse_select(attack)
