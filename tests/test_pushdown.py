"""The split of an aggregate (gateway/pushdown.py) against the statement run whole.

Rows are cut into parts as RDB nodes and the HDB hold them; each part's partial
runs in chDB over that part, the final merges them, and the answer must be the
unsplit statement's over all the rows (floating sums to rounding: the parts add
in another order). Statements the split cannot keep the meaning of do not split.
"""

from __future__ import annotations

import chdb
import numpy as np
import pyarrow as pa
import pytest
import sqlglot

from gateway.pushdown import merge_sql, split, union_sql
from gateway.sql import DIALECT

SOURCE = "__tickplant_source_test_0__"
PARTIALS = "__tickplant_partials_test__"
COLUMNS = {"time", "sym", "price", "size", "date"}


@pytest.fixture(scope="module")
def engine():
    return chdb.connect(":memory:")


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(7)
    n = 20_000
    times = np.sort(rng.integers(0, 6 * 3600, n)) * 1_000_000_000 + 1_796_000_000_000_000_000
    times[100:140] = times[100]  # ties
    return pa.table({"time": pa.array(times, pa.timestamp("ns", "UTC")),
                     "sym": rng.choice(["A", "AB", "B", "C"], n),
                     "price": rng.random(n) * 100, "size": rng.integers(1, 500, n)})


def _source(name: str, day: str = "2026-12-07") -> str:
    return f"(SELECT time, CAST(sym, 'LowCardinality(String)') AS sym, price, size, toDate('{day}') AS date FROM Python({name}))"


def _run(engine, sql: str, **tables: pa.Table) -> pa.Table:
    scope = dict(tables)
    scope["engine"], scope["sql"] = engine, sql
    exec("answer = engine.query(sql, 'ArrowTable')", {}, scope)  # Python(name) finds the caller's names
    return scope["answer"]


SPLIT = [
    "SELECT sym, count() AS n, sum(price * size) / sum(size) AS vwap FROM T WHERE size > 10 GROUP BY sym ORDER BY sym",
    ("SELECT date, sym, toDateTime64(toStartOfInterval(time, INTERVAL 5 MINUTE), 9, 'UTC') AS bar, "
     "argMin(price, time) AS open, max(price) AS high, argMax(price, time) AS close, count() AS trades "
     "FROM T GROUP BY date, sym, bar ORDER BY date, sym, bar"),
    "SELECT count(), uniqExact(size), quantileExact(0.5)(price), min(time) FROM T",  # quantile() samples
    "SELECT sym, count(*) FROM T GROUP BY 1 HAVING count() > 4000 ORDER BY 2 DESC",
    "SELECT sym, sum(size) AS size FROM T GROUP BY sym ORDER BY size",
    "SELECT sym, argMax(price, time) AS p FROM T GROUP BY sym ORDER BY sym LIMIT 1 BY sym",
    "SELECT sym, max(time) - min(time) AS span, lower(sym) AS l FROM T WHERE sym IN ('A', 'B') GROUP BY sym ORDER BY sym",
    ("SELECT * FROM (SELECT sym, count() AS c FROM (SELECT time, sym, price, size, date FROM T WHERE sym != 'C' "
     "LIMIT 18446744073709551615) AS trade GROUP BY sym) ORDER BY c"),
    "SELECT sym, countIf(size > 250) AS big, sum(size) / count() AS mean FROM T GROUP BY sym ORDER BY sym",
    "SELECT sym FROM T GROUP BY sym ORDER BY sym",
    "SELECT count() FROM T WHERE sym = 'nobody'",
]

UNSPLIT = [
    "SELECT sym, price FROM T GROUP BY sym",  # a bare column that is no key
    "SELECT sym, count(DISTINCT size) FROM T GROUP BY sym",
    "SELECT price * 2 AS p2, count() FROM T WHERE p2 > 10 GROUP BY p2",  # an alias the WHERE uses
    "SELECT sym, count() OVER (PARTITION BY sym) FROM T",
    "SELECT DISTINCT sym, count() FROM T GROUP BY sym",
    "SELECT sym, count() FROM T GROUP BY sym WITH TOTALS",
    "SELECT sym, sumMerge(s) FROM T GROUP BY sym",
    "SELECT sym, count() FROM T WHERE size IN (SELECT size FROM T2) GROUP BY sym",
    "SELECT time, price FROM T ORDER BY time LIMIT 3",
]


def _parse(statement: str) -> sqlglot.exp.Expression:
    return sqlglot.parse_one(statement.replace("FROM T", f"FROM {SOURCE} AS trade", 1), read=DIALECT)


@pytest.mark.parametrize("statement", SPLIT)
def test_the_split_answers_as_the_statement_run_whole(engine, rows, statement):
    plan = split(_parse(statement), [SOURCE], PARTIALS, COLUMNS)
    assert plan is not None
    empty = rows.slice(0, 0)
    probed = _run(engine, plan.probe.replace(SOURCE, _source("empty")), empty=empty).to_pylist()[0]
    types = list(probed.values())
    names = _run(engine, plan.names.replace(SOURCE, _source("empty")), empty=empty).schema.names
    final = merge_sql(plan.final, types[:plan.aggregates], names, plan.unnamed)
    # three RDB nodes' parts of today, and yesterday as the HDB part (another day)
    parts = {"p0": rows.slice(0, 5000), "p1": rows.slice(5000, 9000), "p2": rows.slice(14_000)}
    partials = pa.concat_tables([_run(engine, plan.partial.replace(SOURCE, _source(n)) +
                                      " SETTINGS output_format_arrow_string_as_string = 0", **{n: t})
                                 for n, t in parts.items()])
    hdb = plan.partial.replace(SOURCE, _source("yesterday", "2026-12-06"))
    union = union_sql([f"({hdb})", "Python(partials)"], types[plan.aggregates:], plan.aggregates)
    got = _run(engine, final.replace(PARTIALS, f"({union})"), partials=partials,
               yesterday=rows.slice(9000, 5000))
    everything = pa.concat_tables([
        _run(engine, f"SELECT * FROM {_source('y', '2026-12-06')}", y=rows.slice(9000, 5000)),
        _run(engine, f"SELECT * FROM {_source('t')}", t=pa.concat_tables(parts.values()))])
    whole_sql = _parse(statement).sql(dialect=DIALECT).replace(SOURCE, "Python(everything)")
    want = _run(engine, whole_sql, everything=everything)
    assert got.column_names == want.column_names
    g, w = got.to_pylist(), want.to_pylist()
    assert len(g) == len(w)
    for a, b in zip(g, w, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == (pytest.approx(b[k], rel=1e-9) if isinstance(b[k], float) else b[k]), (k, a, b)


@pytest.mark.parametrize("statement", UNSPLIT)
def test_what_cannot_keep_its_meaning_does_not_split(statement):
    assert split(_parse(statement), [SOURCE], PARTIALS, COLUMNS) is None


QUOTE = "__tickplant_source_test_1__"
JOINED = [
    ("SELECT t.sym, avg(q.ask - q.bid) AS spread, count() AS n FROM T t ASOF LEFT JOIN Q q "
     "ON t.sym = q.sym AND t.time >= q.time GROUP BY t.sym ORDER BY t.sym"),
    "SELECT count(), sum(q.bid) FROM T AS t INNER JOIN Q AS q ON t.time = q.time AND q.sym = t.sym",
    ("SELECT t.sym, toStartOfHour(t.time) AS h, max(t.price - q.ask) FROM T t ASOF JOIN Q q "
     "ON t.sym = q.sym AND t.time >= q.time WHERE t.size > 100 GROUP BY t.sym, h ORDER BY t.sym, h"),
]
NOT_JOINED = [
    "SELECT count() FROM T t ASOF LEFT JOIN Q q ON t.time >= q.time AND t.price > 0 GROUP BY t.sym",
    "SELECT t.sym, count() FROM T t JOIN Q q ON t.sym = q.sym OR t.time = q.time GROUP BY t.sym",
    "SELECT t.sym, count() FROM T t JOIN Q q ON t.size = q.bid AND t.time = q.time GROUP BY t.sym",
]


def _joined(statement: str) -> sqlglot.exp.Expression:
    text = statement.replace("FROM T", f"FROM {SOURCE}", 1).replace("JOIN Q", f"JOIN {QUOTE}", 1)
    return sqlglot.parse_one(text, read=DIALECT)


@pytest.mark.parametrize("statement", JOINED)
def test_a_join_on_sym_splits_node_by_node_as_the_statement_run_whole(engine, rows, statement):
    """Trades and quotes cut by sym as partitions are (every node holds both tables' rows of
    its syms): each part joins and aggregates its own, the merge equals the whole join."""
    rng = np.random.default_rng(3)
    n = 30_000
    quotes = pa.table({"time": pa.array(np.sort(rng.integers(0, 6 * 3600, n)) * 1_000_000_000 + 1_796_000_000_000_000_000,
                                        pa.timestamp("ns", "UTC")),
                       "sym": rng.choice(["A", "AB", "B", "C"], n), "bid": rng.random(n) * 100,
                       "ask": rng.random(n) * 100 + 100})
    plan = split(_joined(statement), [SOURCE, QUOTE], PARTIALS, COLUMNS | {"bid", "ask"})
    assert plan is not None

    def q_source(name: str) -> str:
        return f"(SELECT time, CAST(sym, 'LowCardinality(String)') AS sym, bid, ask, toDate('2026-12-07') AS date FROM Python({name}))"

    def both(sql: str, t: str, q: str) -> str:
        return sql.replace(SOURCE, _source(t)).replace(QUOTE, q_source(q))

    empty_t, empty_q = rows.slice(0, 0), quotes.slice(0, 0)
    types = list(_run(engine, both(plan.probe, "empty_t", "empty_q"), empty_t=empty_t, empty_q=empty_q)
                 .to_pylist()[0].values())
    names = _run(engine, both(plan.names, "empty_t", "empty_q"), empty_t=empty_t, empty_q=empty_q).schema.names
    final = merge_sql(plan.final, types[:plan.aggregates], names, plan.unnamed)
    partials = []
    for syms in (["A", "B"], ["AB", "C"]):  # two nodes' partitions
        t_part = rows.filter(pa.compute.is_in(rows["sym"], pa.array(syms)))
        q_part = quotes.filter(pa.compute.is_in(quotes["sym"], pa.array(syms)))
        partials.append(_run(engine, both(plan.partial, "tp", "qp") + " SETTINGS output_format_arrow_string_as_string = 0",
                             tp=t_part, qp=q_part))
    partials = pa.concat_tables(partials)
    got = _run(engine, final.replace(PARTIALS, f"({union_sql(['Python(partials)'], types[plan.aggregates:], plan.aggregates)})"),
               partials=partials)
    want = _run(engine, both(_joined(statement).sql(dialect=DIALECT), "rows", "quotes"), rows=rows, quotes=quotes)
    assert got.column_names == want.column_names and got.num_rows == want.num_rows > 0
    for a, b in zip(got.to_pylist(), want.to_pylist(), strict=True):
        for k in a:
            assert a[k] == (pytest.approx(b[k], rel=1e-9) if isinstance(b[k], float) else b[k]), (k, a, b)


@pytest.mark.parametrize("statement", NOT_JOINED)
def test_a_join_not_on_equal_syms_does_not_split(statement):
    assert split(_joined(statement), [SOURCE, QUOTE], PARTIALS, COLUMNS | {"bid", "ask"}) is None


PARTIALS_OVER_SYMS = [
    # states that do not depend on the order rows are added in (a float sum's last bits do,
    # on any input: the engine's threads take blocks in any order)
    ("SELECT sym AS k, CAST(countState() AS String) AS a, CAST(sumState(size) AS String) AS b "
     "FROM {s} AS trade GROUP BY sym"),
    ("SELECT sym AS k, toStartOfMinute(time) AS m, CAST(argMinState(price, time) AS String) AS a, "
     "CAST(maxState(sym) AS String) AS b, CAST(argMaxState(exchange, time) AS String) AS c FROM {s} AS trade "
     "WHERE sym IN ('AA', 'IBM') GROUP BY sym, m"),
    ("SELECT CAST(uniqExactState(sym) AS String) AS a, CAST(minState(sym) AS String) AS b, "
     "CAST(maxState(sym) AS String) AS c FROM {s} AS trade WHERE sym != 'Z'"),
]


@pytest.mark.parametrize("statement", PARTIALS_OVER_SYMS)
def test_a_partial_over_dictionary_syms_makes_the_states_of_plain_ones(catalog, tmp_path, statement):
    """An RDB node hands its engine ``sym`` as one dictionary column, its codes made from each
    stored chunk's sym, read off its key (streams/query.py): the same rows, and aggregate
    states identical byte for byte to those made over plain strings, which the HDB's are
    merged with."""
    import datetime as dt

    from streams.partial import run_partial
    from streams.query import RowsQuery, read_rows
    from streams.shard import Resources, Shard

    schema = catalog["trade"]
    rng = np.random.default_rng(11)
    shard = Shard(tmp_path / "s", Resources(8 << 20, 8 << 20, resident_bytes=1 << 30))
    day = "2026-12-07"
    for offset in range(6):  # several chunks per sym, old and new
        n = int(rng.integers(50, 400))
        shard.apply(offset, day, schema.to_arrow([
            {"time": 1_796_000_000_000_000_000 + offset * 10**9 + i, "sym": str(rng.choice(["A", "AA", "IBM", "Z"])),
             "price": float(rng.random()), "size": int(rng.integers(1, 9)), "exchange": str(rng.choice(["N", "Q"])),
             "cond": ""} for i in range(n)]))
    stored = schema.stored_schema
    query = RowsQuery("trade", day, None, None, None, ["time", "sym", "price", "size", "exchange"])
    plain = read_rows([shard], query, stored)
    keyed = read_rows([shard], query, stored, sym_dictionary=True)
    assert pa.types.is_dictionary(keyed.schema.field("sym").type) and not pa.types.is_dictionary(plain.schema.field("sym").type)
    assert keyed.column("sym").to_pylist() == plain.column("sym").to_pylist() and keyed.num_rows > 1000
    assert keyed.column("sym").num_chunks == 1  # one dictionary for all chunks: none to unify
    assert keyed.column("sym").chunk(0).dictionary.to_pylist() == sorted(set(plain.column("sym").to_pylist()))
    sql = statement.format(s=SOURCE)
    got = [run_partial(sql, [(SOURCE, rows, stored)], dt.date(2026, 12, 7), None, 1024) for rows in (keyed, plain)]

    def rows_of(table: pa.Table) -> list:
        return sorted(tuple(v.as_py() for v in row.values()) for row in
                      (dict(zip(table.column_names, r, strict=True)) for r in zip(*table.columns, strict=True)))

    assert got[0].schema == got[1].schema and got[0].num_rows > 0
    assert rows_of(got[0]) == rows_of(got[1])
    shard.close()
