"""What the gateway reads off a statement to prune: days, syms (gateway/plan.py)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlglot

from gateway.plan import (
    DateFilter,
    column_names,
    columns_needed,
    need_of,
    plant_tables,
    replace_today,
)

OPEN = dt.date(2026, 11, 23)
D = dt.date.fromisoformat


def needs(sql: str) -> dict[str, tuple[DateFilter, set[str] | None]]:
    ast = replace_today(sqlglot.parse_one(sql, read="clickhouse"), OPEN)
    return {ref.alias_or_name: (n.dates, n.syms) for ref in plant_tables(ast, {"trade", "quote"})
            for n in [need_of(ref)]}


@pytest.mark.parametrize("where, lo, hi, days", [
    ("date = today()", None, None, {OPEN}),
    ("date = yesterday()", None, None, {OPEN - dt.timedelta(days=1)}),
    ("date >= today() - 3 AND date < today()", D("2026-11-20"), D("2026-11-22"), None),
    ("date BETWEEN '2026-11-01' AND toDate('2026-11-05')", D("2026-11-01"), D("2026-11-05"), None),
    ("date IN ('2026-11-02', '2026-11-04')", None, None, {D("2026-11-02"), D("2026-11-04")}),
    ("'2026-11-10' <= date", D("2026-11-10"), None, None),
    ("date = today() OR sym = 'X'", None, None, None),  # an OR prunes nothing
    ("toYYYYMM(date) = 202611", None, None, None),      # a function of the column neither
])
def test_date_predicates(where, lo, hi, days):
    dates, _ = needs(f"SELECT * FROM trade WHERE {where}")["trade"]
    assert (dates.lo, dates.hi, dates.days) == (lo, hi, days)


def test_syms_per_reference_through_aliases_and_pass_through_subqueries():
    got = needs("SELECT * FROM trade t ASOF JOIN quote q ON t.sym = q.sym AND t.time >= q.time "
                "WHERE t.sym IN ('A', 'B') AND q.sym = 'A' AND t.date = today()")
    assert got["t"][1] == {"A", "B"} and got["q"][1] == {"A"}
    assert got["t"][0].days == {OPEN} and got["q"][0].days is None  # unqualified would be ambiguous
    wrapped = needs("SELECT * FROM (SELECT time, price, date FROM trade WHERE exchange = 'N') AS trade "
                    "WHERE date = today() AND sym = 'A'")["trade"]
    assert wrapped[0].days == {OPEN} and wrapped[1] is None  # sym is not handed on by the sub-query
    grouped = needs("SELECT * FROM (SELECT sym, date, max(price) AS p FROM trade GROUP BY sym, date) "
                    "WHERE date = today()")
    assert grouped["trade"][0].days is None  # not row for row: no pruning through it


def test_columns_needed():
    cols = ["time", "sym", "price", "size", "exchange", "cond"]
    ast = sqlglot.parse_one("SELECT sym, count(*), max(price) FROM trade GROUP BY sym", read="clickhouse")
    assert columns_needed(ast, cols) == ["sym", "price"]
    assert columns_needed(sqlglot.parse_one("SELECT * FROM trade", read="clickhouse"), cols) is None
    assert columns_needed(sqlglot.parse_one("SELECT count() FROM trade WHERE date = today()", read="clickhouse"),
                          cols) == ["sym"]  # no column named: the narrowest still counts the rows


def test_column_names_once_for_every_reference():
    ast = sqlglot.parse_one("SELECT t.sym, q.bid FROM trade t ASOF JOIN quote q ON t.sym = q.sym "
                            "AND t.time >= q.time WHERE t.date = today()", read="clickhouse")
    names = column_names(ast)
    assert names == {"sym", "bid", "time", "date"}
    assert columns_needed(ast, ["time", "sym", "price", "size"], names) == ["time", "sym"]
    assert columns_needed(ast, ["time", "sym", "bid", "ask"], names) == ["time", "sym", "bid"]
    assert column_names(sqlglot.parse_one("SELECT count(*), t.* FROM trade t", read="clickhouse")) is None
    assert column_names(sqlglot.parse_one("SELECT count(*) FROM trade", read="clickhouse")) == set()


def test_replace_today_rewrites_the_tree_in_place():
    ast = sqlglot.parse_one("SELECT * FROM trade WHERE date = today() OR date = yesterday()", read="clickhouse")
    assert replace_today(ast, OPEN) is ast  # no copy of the tree per query
    assert "'2026-11-23'" in ast.sql("clickhouse") and "'2026-11-22'" in ast.sql("clickhouse")
    assert "today" not in ast.sql("clickhouse").lower()


def test_the_sql_written_back_from_the_checked_tree_means_what_the_user_wrote():
    """ClickHouse runs SQL generated from the parsed tree: it must give what the user's
    text gives (sqlglot wrote DIV as a float division and rand() as randCanonical())."""
    import chdb

    from gateway.sql import parse_select, render

    for text in ("SELECT 1763700000999999999 DIV 1000000000 AS s",
                 "SELECT countIf(rand(n) % 2 = 0) > 0 AS some, countIf(rand(n) % 2 = 1) > 0 AS others "
                 "FROM (SELECT arrayJoin(range(1000)) AS n)"):
        written = render(parse_select(text))
        assert chdb.query(written, "CSV").bytes() == chdb.query(text, "CSV").bytes(), written


ALL = DateFilter()
DAY = DateFilter(days={D("2026-01-01")})


@pytest.mark.parametrize("sql, expected", [
    # a predicate on a join's result: its date is one table's (t's), not both
    ("SELECT * FROM (SELECT * FROM trade t ASOF LEFT JOIN quote q ON t.sym = q.sym AND t.time >= q.time) "
     "WHERE date = '2026-01-01'", {"t": (ALL, None), "q": (ALL, None)}),
    ("SELECT * FROM (SELECT * FROM trade t JOIN quote q ON t.time = q.time) WHERE sym = 'X'",
     {"t": (ALL, None), "q": (ALL, None)}),
    # the null-supplying side of an outer join: its missing rows have date 1970-01-01
    ("SELECT * FROM quote q LEFT JOIN trade t ON q.sym = t.sym WHERE t.date <= '2026-01-01' "
     "AND q.date = '2026-01-01'", {"q": (DAY, None), "t": (ALL, None)}),
    ("SELECT * FROM quote q RIGHT JOIN trade t ON q.sym = t.sym WHERE q.date = '2026-01-01' "
     "AND t.date = '2026-01-01' AND t.sym = 'X'", {"q": (ALL, None), "t": (DAY, {"X"})}),
    ("SELECT * FROM quote q FULL JOIN trade t ON q.sym = t.sym WHERE q.date = '2026-01-01' "
     "AND t.date = '2026-01-01'", {"q": (ALL, None), "t": (ALL, None)}),
    # ... its own sub-query's WHERE still prunes it (the named aj)
    ("SELECT * FROM trade t ASOF LEFT JOIN (SELECT * FROM quote WHERE date = '2026-01-01') AS q "
     "ON t.sym = q.sym AND t.time >= q.time WHERE t.date = '2026-01-01'", {"t": (DAY, None), "quote": (DAY, None)}),
    # ARRAY JOIN ... AS sym and * REPLACE (... AS date) make new columns of those names
    ("SELECT * FROM (SELECT * FROM trade ARRAY JOIN ['X'] AS sym) WHERE sym = 'X'", {"trade": (ALL, None)}),
    ("SELECT * FROM (SELECT * REPLACE (toDate('2026-01-01') AS date) FROM trade) WHERE date = '2026-01-01'",
     {"trade": (ALL, None)}),
])
def test_predicates_that_do_not_hold_one_tables_rows_prune_nothing(sql, expected):
    assert needs(sql) == expected


def test_a_scalar_cte_named_like_a_table_leaves_the_table_a_plant_table():
    """``WITH 1 AS trade`` names a value: ``FROM trade`` still reads the plant's table (the
    entitlement check rewrites it as one; the engine must replace it as one too, or the raw
    name would reach ClickHouse)."""
    assert needs("WITH 1 AS trade SELECT * FROM trade WHERE date = '2026-01-01'") == {"trade": (DAY, None)}
    assert needs("WITH trade AS (SELECT 1 AS x) SELECT * FROM trade") == {}
