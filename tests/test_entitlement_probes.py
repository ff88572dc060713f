"""Entitlements against an attacker's probes: spellings of refused functions, the engine's
placeholder names, bare tables after IN, and errors raised on rows a row filter hides.

The probes of hidden rows run the rewritten statement on chDB over an HDB laid out as the
PDB writes it (``<table>/date=D/*.parquet``, several row groups, read through
``HdbQuery.source_days`` with hive partitioning): where ClickHouse's optimiser once moved
a user's predicate ahead of the row filter (into PREWHERE), so an error raised on a
hidden row named it. Every probe must either answer exactly what the user's visible rows
give (the oracle: the same statement over a file of only those rows) or fail with an
error naming nothing hidden.
"""

from __future__ import annotations

import datetime as dt
import re

import chdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlglot import exp

from gateway.auth import Users
from gateway.policy import authorize
from gateway.sql import Forbidden, SqlError, parse_select, render, table_refs
from sinks.hdb import HdbQuery
from tickplant.config import Settings

VISIBLE = ("AAPL", "MSFT")
HIDDEN = ("HIDDENONE", "HIDDENTWO", "ZZSECRET")
DAYS = (dt.date(2026, 11, 19), dt.date(2026, 11, 20))
KEY = "carol-key-0123456789abcdef"
USERS = f"""
[users.carol]
keys = ["{KEY}"]
[users.carol.tables.trade]
rows = "sym IN ('AAPL', 'MSFT')"
"""


@pytest.fixture(scope="module")
def carol(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.toml"
    path.write_text(USERS)
    return Users.load(path).authenticate(KEY)


@pytest.fixture(scope="module")
def hdb(tmp_path_factory, catalog):
    """Two days of trades, hidden syms interleaved, several row groups per file."""
    root = tmp_path_factory.mktemp("hdb")
    schema = catalog["trade"].arrow_schema
    syms = VISIBLE + HIDDEN
    for n, day in enumerate(DAYS):
        rows = [{"time": 1_763_500_000_000_000_000 + n * 86_400_000_000_000 + i, "sym": syms[i % len(syms)],
                 "price": 100.0 + i, "size": i, "exchange": "N", "cond": ""} for i in range(3000)]
        table = pa.Table.from_pylist(rows, schema=schema)
        path = root / "trade" / f"date={day}"
        path.mkdir(parents=True)
        pq.write_table(table, path / "part-00000.parquet", row_group_size=400)
    settings = Settings(data_dir=root / "plant", hdb_root=str(root))
    query = HdbQuery(settings, catalog=catalog)
    visible = root / "visible.parquet"
    chdb.query(f"SELECT * FROM {query.source_days('trade', DAYS)} WHERE sym IN {VISIBLE} "
               f"INTO OUTFILE '{visible}' FORMAT Parquet SETTINGS use_hive_partitioning = 1")
    return query, str(visible)


@pytest.fixture(scope="module")
def columns(catalog) -> dict[str, list[str]]:
    return {t.name: [*t.columns, "date"] for t in catalog}


def as_carol(sql: str, carol, columns, hdb) -> pa.Table:
    """The statement checked and rewritten for carol, each table read from the HDB."""
    query, _ = hdb
    ast = authorize(parse_select(sql), carol, columns)
    sources = {}
    for i, table in enumerate(table_refs(ast)):
        name = f"hdbsource{i}"
        sources[name] = query.source_days(table.name, DAYS)
        table.replace(exp.Table(this=exp.to_identifier(name), alias=table.args.get("alias")))
    text = render(ast)
    for name, source in sources.items():
        text = text.replace(name, source)
    return query.pool.run(text)


def oracle(sql: str, hdb) -> pa.Table:
    _, visible = hdb
    ast = parse_select(sql)
    for table in table_refs(ast):
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
        table.replace(exp.Table(this=exp.Anonymous(this="file", expressions=[
            exp.Literal.string(visible), exp.Literal.string("Parquet")]), alias=alias.copy()))
    return chdb.query(render(ast), "ArrowTable")


PROBES = [
    "SELECT count() AS n FROM trade WHERE toInt64(if(sym IN ('AAPL', 'MSFT'), '0', sym)) = 0",
    "SELECT count() AS n FROM trade WHERE date = '2026-11-20' AND toInt64(if(sym IN ('AAPL', 'MSFT'), '0', sym)) = 0",
    "SELECT count() AS n FROM trade WHERE size > 5 AND intDiv(1, if(sym = 'ZZSECRET', 0, 1)) = 1",
    "SELECT count() AS n FROM trade PREWHERE toInt64(if(sym IN ('AAPL', 'MSFT'), '0', sym)) = 0",
    "SELECT sym, count() AS n FROM trade WHERE price > 0 GROUP BY sym "
    "HAVING toInt64(if(sym IN ('AAPL', 'MSFT'), '0', sym)) = 0 ORDER BY sym",
    "SELECT count() AS n FROM trade AS a JOIN trade AS b ON a.time = b.time "
    "WHERE toInt64(if(a.sym IN ('AAPL', 'MSFT'), '0', a.sym)) = 0",
    "SELECT count() AS n FROM (SELECT * FROM trade WHERE size >= 0) AS s "
    "WHERE toDate(if(sym IN ('AAPL', 'MSFT'), '2026-01-01', sym)) > '2000-01-01'",
    "SELECT count() AS n FROM trade WHERE sym NOT IN ('AAPL') AND toUInt8(if(sym = 'MSFT', '1', sym)) = 1",
    "SELECT max(toInt64(if(sym IN ('AAPL', 'MSFT'), '1', sym))) AS m FROM trade",
    "SELECT count() AS n FROM trade WHERE (sym = 'HIDDENONE') = assumeNotNull(CAST(NULL, 'Nullable(UInt8)'))",
]


@pytest.mark.parametrize("sql", PROBES)
def test_a_probe_sees_only_visible_rows(sql, carol, columns, hdb):
    """Each probe raises on a hidden row if it ever sees one: it must answer as the oracle."""
    assert as_carol(sql, carol, columns, hdb).to_pylist() == oracle(sql, hdb).to_pylist()


THROWING = ["toInt64({v})", "toDate({v})", "toUInt8({v})", "intDiv(1, length({v}) - 8)",
            "toDecimal32({v}, 2)", "toIPv4({v})", "toUUID({v})", "arrayElement([1], length({v}) - 7)"]


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fn=st.sampled_from(THROWING), where=st.sampled_from(["", "size > 10 AND ", "date = '2026-11-19' AND "]),
       shape=st.sampled_from(["WHERE", "GROUP", "SELECT"]))
def test_fuzzed_probes_never_tell_of_hidden_rows(fn, where, shape, carol, columns, hdb):
    """Throwing conversions over ``sym`` in every clause: an answer equals the oracle's,
    and an error (a visible row can fail too) names no hidden sym."""
    probe = fn.format(v="sym")
    sql = {"WHERE": f"SELECT count() AS n FROM trade WHERE {where}{probe} IS NOT NULL",
           "GROUP": f"SELECT {probe} AS k, count() AS n FROM trade WHERE {where}1 GROUP BY k ORDER BY k",
           "SELECT": f"SELECT {probe} AS v FROM trade WHERE {where}1 ORDER BY time LIMIT 5"}[shape]
    try:
        want = oracle(sql, hdb).to_pylist()
    except Exception as exc:  # the visible rows alone fail this probe: so may the rewrite
        with pytest.raises(Exception) as got:
            as_carol(sql, carol, columns, hdb)
        for hidden in HIDDEN:
            assert hidden not in str(got.value), (sql, str(got.value)[:300])
        assert type(got.value) is not AssertionError, exc
        return
    assert as_carol(sql, carol, columns, hdb).to_pylist() == want, sql


# -- names that decode to refused functions ------------------------------------------------------

SPELLINGS = [
    "{f}", '"{f}"', "`{f}`", "{F}", '"{F}"', "/* x */ {f}", "{f} /* x */",
    "`{esc}`", '"{esc}"',
]
REFUSED = ["file", "getSetting", "getServerSetting", "hostName", "sleep", "throwIf", "dictGet", "joinGet",
           "currentUser", "version", "logTrace", "hasColumnInTable", "in", "globalIn", "__getScalar",
           "aiGenerate", "filesystemAvailable", "getMacro", "currentDatabase", "DATABASE", "user"]


def _escaped(name: str) -> str:
    return "".join(f"\\x{ord(c):02x}" for c in name)


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("name", REFUSED)
def test_refused_functions_are_refused_however_spelled(name, spelling):
    call = spelling.format(f=name, F=name.upper(), esc=_escaped(name))
    for sql in (f"SELECT {call}('x')", f"SELECT sym FROM trade WHERE {call}('x', sym) = 1",
                f"SELECT arrayMap(x -> {call}(x), ['a'])", f"SELECT * APPLY({call}) FROM trade"):
        with pytest.raises((Forbidden, SqlError)):
            parse_select(sql)


def test_aggregate_names_in_strings_and_types_are_checked():
    for sql in ("SELECT arrayReduce('aggThrow', [1])", "SELECT initializeAggregation('aggThrow', 1)",
                "SELECT arrayReduce(concat('agg', 'Throw'), [1])", "SELECT CAST(1, 'AggregateFunction(aggThrow, UInt8)')",
                "SELECT aggThrowIf(0.5, 1)", "SELECT sumIf(1, 1) + aggThrowOrNull(1)"):
        with pytest.raises(Forbidden):
            parse_select(sql)
    for sql in ("SELECT arrayReduce('sumIf', [1], [1])", "SELECT sumIf(1, 1)", "SELECT uniqStateMerge(x) FROM t",
                "SELECT quantilesIf(0.5, 0.9)(price, size > 1) FROM trade"):
        parse_select(sql)


@pytest.mark.parametrize("sql", [
    "SELECT `\\x5f\\x5ftickplant_source_0__`.price FROM trade",
    'SELECT "\\x5f\\x5fTICKPLANT_source_0__" FROM trade',
    "SELECT '\\x5f\\x5ftickplant_source_0__' AS s FROM trade",
    "SELECT * FROM trade AS `__tickplant_source_0__`",
    "SELECT 'a__tickplant' AS s",
])
def test_placeholder_names_cannot_be_written_by_users(sql):
    with pytest.raises(Forbidden, match="reserved"):
        parse_select(sql)


@pytest.mark.parametrize("sql", [
    "SELECT sym FROM trade WHERE sym IN ((system.one))",
    "SELECT sym FROM trade WHERE sym IN (((quote)))",
    "SELECT sym FROM trade WHERE sym NOT IN ((quote))",
    "SELECT sym FROM trade WHERE sym GLOBAL IN ((quote))",
])
def test_a_bare_table_after_in_is_refused_in_any_parentheses(sql):
    with pytest.raises(Forbidden, match="bare name after IN"):
        parse_select(sql)


def test_refusals_quote_names_on_one_line():
    with pytest.raises(SqlError) as err:
        parse_select('SELECT "fi\\nle"(1)')
    assert "\n" not in str(err.value)
    with pytest.raises(SqlError, match=re.escape("unknown function nosuchfunction()")):
        parse_select("SELECT nosuchfunction(1)")


# -- errors tell the caller about their statement, nothing of the plant ---------------------------

def test_clickhouse_errors_reach_users_without_internals(carol, columns, hdb):
    """Real ClickHouse errors of rewritten statements over the HDB: no generated SQL, no file
    path, no internal name, no hidden sym, one line."""
    from gateway.failures import clickhouse_failure

    query, _ = hdb
    for sql in ("SELECT toDate(sym) AS d FROM trade", "SELECT intDiv(size, 0) AS d FROM trade",
                "SELECT nosuchcolumn FROM trade", "SELECT toInt64(sym) FROM trade WHERE date = '2026-11-20'",
                "SELECT toUUID(t.sym) AS u FROM trade AS t JOIN trade AS v ON t.time = v.time"):
        with pytest.raises(Exception) as err:
            as_carol(sql, carol, columns, hdb)
        failed = clickhouse_failure(str(err.value).strip())
        text = str(failed)
        assert failed.status == 400 and "\n" not in text and len(text) < 400, text
        for leak in ("SELECT", "file(", "parquet", str(query.store.base), "__table", "__set", "__tickplant",
                     "In scope", "sym IN", *HIDDEN):
            assert leak not in text, (sql, text)


def test_an_unknown_table_lists_only_the_callers_tables(carol, columns):
    wider = {**columns, "secret_positions": ["sym", "qty", "date"]}
    with pytest.raises(SqlError) as err:
        authorize(parse_select("SELECT * FROM nosuch"), carol, wider)
    assert "trade" in str(err.value) and "secret_positions" not in str(err.value) and "quote" not in str(err.value)
