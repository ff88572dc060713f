"""The HDB: partitions as the write-down lays them, read through ClickHouse (chdb), on a local
directory and on S3 (SeaweedFS); answers checked against pandas on the same rows."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3server import s3  # noqa: F401 - the SeaweedFS fixture

from ingest.schemas import SchemaCatalog
from sinks.hdb import HdbQuery, HdbQueryError
from sinks.manifest import LATEST_FILE, MANIFEST_NAME
from sinks.sort import DaySorter
from sinks.store import HdbStore
from sinks.writedown import WriteOptions, write_partition
from tickplant.config import REPO_ROOT, Settings

DATES = [dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
SYMS = [f"S{i:02d}" for i in range(12)]


def day_ns(date: dt.date) -> int:
    return int(dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()) * 10**9


def random_day(date: dt.date, seed: int, trades: int = 4000, quotes: int = 6000) -> tuple[pa.Table, pa.Table]:
    """A day of quotes and trades over 20 minutes, in time order (the feed's order).

    Times are unique within each table; some trades share a quote's exact time
    (an exact match counts), and the first trades of some syms come before any
    of their quotes (no quote yet: nulls).
    """
    rng = np.random.default_rng(seed)
    start = day_ns(date) + 9 * 3600 * 10**9
    span = 20 * 60 * 10**9
    qt = np.sort(rng.choice(span, quotes, replace=False)) + start + 10**9
    qs = rng.integers(0, len(SYMS), quotes)
    tt = rng.choice(span, trades, replace=False) + start
    ts = rng.integers(0, len(SYMS), trades)
    exact = rng.choice(quotes, trades // 10, replace=False)  # trades at a quote's very time
    tt[: len(exact)], ts[: len(exact)] = qt[exact], qs[exact]
    tt[len(exact): len(exact) + 5] = start + np.arange(5)  # before any quote of the day
    tt, ts = tt[np.argsort(tt, kind="stable")], ts[np.argsort(tt, kind="stable")]
    tt, keep = np.unique(tt, return_index=True)
    ts = ts[keep]
    mid = 100 + rng.standard_normal(quotes).cumsum() * 0.05
    quote = pa.table({
        "time": pa.array(qt).cast(pa.timestamp("ns", tz="UTC")),
        "sym": pa.array(np.array(SYMS)[qs]),
        "bid": np.round(mid - 0.01, 2), "ask": np.round(mid + 0.01, 2),
        "bsize": rng.integers(1, 50, quotes) * 100, "asize": rng.integers(1, 50, quotes) * 100,
        "exchange": pa.array(np.array(list("NQA"))[rng.integers(0, 3, quotes)]),
    })
    n = len(tt)
    trade = pa.table({
        "time": pa.array(tt).cast(pa.timestamp("ns", tz="UTC")),
        "sym": pa.array(np.array(SYMS)[ts]),
        "price": np.round(100 + rng.standard_normal(n), 2), "size": rng.integers(1, 20, n) * 100,
        "exchange": pa.array(np.array(list("NQA"))[rng.integers(0, 3, n)]),
        "cond": pa.array([""] * n),
    })
    return trade, quote


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load(REPO_ROOT / "schemas")


@pytest.fixture(scope="module")
def days(catalog) -> dict[dt.date, tuple[pa.Table, pa.Table]]:
    out = {}
    for i, date in enumerate(DATES):
        trade, quote = random_day(date, seed=i + 1)
        out[date] = (trade.cast(catalog["trade"].arrow_schema), quote.cast(catalog["quote"].arrow_schema))
    return out


SMALL_GROUPS = WriteOptions(row_group_rows=512)


def publish(store: HdbStore, catalog, days, options: WriteOptions = SMALL_GROUPS) -> None:
    for date, (trade, quote) in days.items():
        for name, table in (("trade", trade), ("quote", quote)):
            write_partition(store, catalog[name], date, table.to_batches(max_chunksize=700), {0: (0, 1)},
                            options=options)


@pytest.fixture(scope="module", params=["local", "s3"])
def hdb(request, tmp_path_factory, catalog, days) -> HdbQuery:
    """The same three days published to a local root or to S3; a query object over them."""
    base = tmp_path_factory.mktemp(f"hdb-{request.param}")
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        settings = Settings(data_dir=base, hdb_root=f"s3://{server.bucket}/hdb-tests", s3_endpoint=server.endpoint)
    else:
        settings = Settings(data_dir=base, hdb_root=str(base / "hdb"))
    store = HdbStore.from_settings(settings)
    publish(store, catalog, days)
    return HdbQuery(settings, store=store, catalog=catalog)


def frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(str)
    return df


def test_aj_is_merge_asof_by_sym_with_no_look_ahead(hdb, days):
    got = frame(hdb.aj(DATES[0], DATES[-1], quote_columns=("bid", "ask", "bsize", "asize"), ordered=True))
    keys = list(zip(got["date"], got["sym"], got["time"], strict=True))
    assert keys == sorted(keys), "ordered=True: by date, sym, time"
    refs = []
    for date, (trade, quote) in days.items():
        t = frame(trade)
        q = frame(quote)[["time", "sym", "bid", "ask", "bsize", "asize"]]
        q["quote_time"] = q["time"]
        ref = pd.merge_asof(t.sort_values("time"), q.sort_values("time"), on="time", by="sym",
                            direction="backward", allow_exact_matches=True)
        ref["date"] = date
        refs.append(ref)
    ref = pd.concat(refs).sort_values(["date", "sym", "time"], kind="stable").reset_index(drop=True)
    got = got.sort_values(["date", "sym", "time"], kind="stable").reset_index(drop=True)
    assert len(got) == len(ref) == sum(t.num_rows for t, _ in days.values())
    assert list(got["sym"]) == list(ref["sym"])
    assert (got["time"] == ref["time"]).all()
    for col in ("bid", "ask", "bsize", "asize"):
        a, b = got[col].astype(float).to_numpy(), ref[col].astype(float).to_numpy()
        assert ((a == b) | (np.isnan(a) & np.isnan(b))).all(), col
    unmatched = got["quote_time"].isna()
    assert unmatched.sum() == ref["quote_time"].isna().sum() >= 5  # trades before the day's first quote
    matched = got[~unmatched]
    assert (matched["quote_time"] <= matched["time"]).all(), "a quote from after the trade"
    assert (matched["quote_time"] == ref.loc[~unmatched, "quote_time"]).all()
    assert (matched["quote_time"] == matched["time"]).sum() >= 100  # exact-time matches count
    one_day = frame(hdb.aj(DATES[1], syms=["S01", "S02"]))  # one day, some syms, default columns
    want = ref[(ref.date == DATES[1]) & ref.sym.isin(["S01", "S02"])]
    assert len(one_day) == len(want) > 0
    assert one_day.columns.tolist()[-3:] == ["bid", "ask", "quote_time"]
    assert sorted(one_day["bid"].fillna(-1)) == sorted(want["bid"].fillna(-1))


def test_bars_and_vwap_over_days_match_pandas(hdb, days):
    syms = ["S03", "S07"]
    got = frame(hdb.bars(syms, DATES[0], DATES[-1]))
    t = pd.concat([frame(trade).assign(date=date) for date, (trade, _) in days.items()])
    t = t[t.sym.isin(syms)].sort_values("time")
    t["bar"] = t["time"].dt.floor("1min")
    t["pv"] = t.price * t["size"]
    ref = t.groupby(["sym", "bar"]).agg(date=("date", "first"), open=("price", "first"), high=("price", "max"),
                                        low=("price", "min"), close=("price", "last"), volume=("size", "sum"),
                                        pv=("pv", "sum"), trades=("price", "size")).reset_index()
    ref["vwap"] = ref.pv / ref.volume
    assert len(got) == len(ref) > 3 * 2 * 15
    assert list(got["sym"]) == list(ref["sym"])
    assert (got["bar"] == ref["bar"]).all()
    for col in ("open", "high", "low", "close", "volume", "trades"):
        assert (got[col].to_numpy() == ref[col].to_numpy()).all(), col
    assert np.allclose(got["vwap"], ref["vwap"], rtol=1e-12)
    vw = frame(hdb.vwap(syms, DATES[0], DATES[-1]))
    ref_day = t.groupby(["date", "sym"]).agg(pv=("pv", "sum"), volume=("size", "sum")).reset_index()
    assert len(vw) == len(ref_day) == 6
    assert np.allclose(vw["vwap"], ref_day.pv / ref_day.volume, rtol=1e-12)
    assert list(vw["volume"]) == list(ref_day["volume"])


def test_table_rows_for_syms_and_dates(hdb, days):
    got = hdb.table("trade", DATES[1], syms=["S05"])
    trade = days[DATES[1]][0]
    want = trade.filter(pa.compute.equal(trade.column("sym"), "S05"))
    assert got.num_rows == want.num_rows > 0
    assert got.column("time").to_pylist() == sorted(want.column("time").to_pylist())
    assert set(got.column("date").to_pylist()) == {DATES[1]}
    both = hdb.table("trade", DATES[0], DATES[1], syms=["S05", "S06"], columns=["sym", "time", "price"])
    assert both.column_names == ["date", "sym", "time", "price"]
    expected = sum(pa.compute.sum(pa.compute.is_in(days[d][0].column("sym"), pa.array(["S05", "S06"]))).as_py()
                   for d in DATES[:2])
    assert both.num_rows == expected
    total = hdb.sql("SELECT count() AS n, uniqExact(date) AS days FROM {trade}").to_pylist()[0]
    assert total == {"n": sum(t.num_rows for t, _ in days.values()), "days": 3}
    # the files' strings are read as plain String (sinks.hdb.FILE_STRINGS), the cheaper read,
    # and so is the empty source of a table with no day in range
    types = hdb.sql("SELECT toTypeName(sym) AS t, toTypeName(exchange) AS e FROM {trade} LIMIT 1").to_pylist()
    assert types == [{"t": "String", "e": "String"}]
    empty = hdb.sql(f"SELECT toTypeName(any(sym)) AS t, count() AS n FROM {hdb.source_days('trade', [])}")
    assert empty.to_pylist() == [{"t": "String", "n": 0}]


def test_a_days_latest_rows_are_read_from_its_own_file(hdb, days):
    """What the gateway answers ``select by sym`` of a history day with (gateway/latest.py):
    the day's file of each sym's latest row, from a directory or from S3."""
    trade = frame(days[DATES[1]][0]).sort_values("time", kind="stable").groupby("sym").tail(1).sort_values("sym")
    rows = hdb.latest_rows("trade", DATES[1])
    assert rows is not None
    got = frame(rows).sort_values("sym")
    assert got.sym.tolist() == trade.sym.tolist() and got.price.tolist() == trade.price.tolist()
    assert hdb.latest_rows("trade", dt.date(2026, 1, 2)) is None  # no such day: the statement reads it


def test_only_manifested_days_are_seen_and_date_predicates_prune(tmp_path, catalog, days):
    settings = Settings(data_dir=tmp_path, hdb_root=str(tmp_path / "hdb"))
    store = HdbStore.from_settings(settings)
    publish(store, catalog, days)
    q = HdbQuery(settings, store=store, catalog=catalog)
    n = {d: days[d][0].num_rows for d in DATES}
    # a day being written (files, no manifest yet) does not exist for readers
    hidden = dt.date(2026, 11, 19)
    Path(store.partition_dir("trade", hidden)).mkdir(parents=True)
    pq.write_table(days[DATES[0]][0], f"{store.partition_dir('trade', hidden)}/part-00000.parquet")
    assert store.dates("trade") == DATES
    assert q.sql("SELECT count() AS n FROM {trade}").column("n")[0].as_py() == sum(n.values())
    # damage one published day's file: a query on another date never opens it (pruned by date) ...
    victim = Path(store.partition_dir("trade", DATES[1])) / "part-00000.parquet"
    victim.write_bytes(b"not parquet at all" * 100)
    one = q.sql(f"SELECT count() AS n FROM {{trade}} WHERE date = '{DATES[2]}'")
    assert one.column("n")[0].as_py() == n[DATES[2]]
    assert q.table("trade", DATES[0]).num_rows == n[DATES[0]]
    # ... while one that needs it does
    with pytest.raises(HdbQueryError):
        q.sql("SELECT count() AS n FROM {trade} WHERE price > 0")
    assert store.verify(store.manifest("trade", DATES[1]))  # and the manifest's sizes catch it


def test_a_table_with_no_partitions_reads_empty(tmp_path, catalog):
    settings = Settings(data_dir=tmp_path)
    q = HdbQuery(settings, catalog=catalog)
    got = q.sql("SELECT * FROM {quote}")
    assert got.num_rows == 0 and got.column_names[:2] == ["time", "sym"] and "date" in got.column_names
    assert q.aj(DATES[0]).num_rows == 0
    with pytest.raises(HdbQueryError, match="unknown table"):
        q.source("nosuch")


def test_write_down_is_repeatable_clears_leftovers_and_external_sort_is_identical(tmp_path, catalog):
    """Same rows -> same files, whatever the budget; ties in (sym, time) keep log order."""
    rng = np.random.default_rng(7)
    n = 60_000
    # coarse times: many rows share a (sym, time), so only log order can order them
    times = day_ns(DATES[0]) + np.sort(rng.integers(0, 2000, n)) * 10**6
    table = pa.table({
        "time": pa.array(times).cast(pa.timestamp("ns", tz="UTC")),
        "sym": pa.array(np.array(SYMS)[rng.integers(0, len(SYMS), n)]),
        "price": np.arange(n, dtype=np.float64),  # the log position, to check tie order
        "size": rng.integers(1, 9, n), "exchange": pa.array(["N"] * n), "cond": pa.array([""] * n),
    }).cast(catalog["trade"].arrow_schema)
    options = WriteOptions(row_group_rows=2048, file_row_groups=5)
    a, b = HdbStore(str(tmp_path / "a")), HdbStore(str(tmp_path / "b"))
    in_memory = write_partition(a, catalog["trade"], DATES[0], table.to_batches(1000), {}, options=options)
    # leftovers of a crashed attempt in b: removed by the write-down
    Path(b.partition_dir("trade", DATES[0])).mkdir(parents=True)
    (Path(b.partition_dir("trade", DATES[0])) / "part-00009.parquet").write_bytes(b"half a file")
    external = write_partition(b, catalog["trade"], DATES[0], table.to_batches(1000), {}, options=options,
                               memory_bytes=3 * table.nbytes // 10, tmp_dir=tmp_path)
    assert in_memory.identity() == external.identity()
    assert sorted(b.files("trade", DATES[0])) == sorted([f.name for f in in_memory.files] + [MANIFEST_NAME, LATEST_FILE])
    assert len(in_memory.files) == math.ceil(n / (2048 * 5))
    # each sym's latest row, kept apart: of its rows at its latest time, the last in the log
    latest = pq.read_table(Path(a.partition_dir("trade", DATES[0])) / LATEST_FILE).to_pandas()
    want = table.to_pandas().sort_values(["sym", "time", "price"], kind="stable").groupby("sym").tail(1)
    assert latest["sym"].astype(str).tolist() == want["sym"].tolist() == SYMS
    assert latest["price"].tolist() == want["price"].tolist() and latest["time"].tolist() == want["time"].tolist()
    assert (latest["time"].map(lambda t: int((times == t.value).sum())) > 1).sum() >= len(SYMS) // 2  # tied times
    assert in_memory.latest is not None and in_memory.latest.rows == len(SYMS) and a.verify(in_memory) == []
    # a day with no rows: its latest file has none either, and reads as such
    empty = write_partition(a, catalog["trade"], DATES[1], [], {}, options=options)
    assert empty.latest is not None and empty.latest.rows == 0
    q = HdbQuery(Settings(data_dir=tmp_path, hdb_root=a.root), store=a, catalog=catalog)
    read = q.pool.run(f"SELECT date, sym, price FROM {q.source_days('trade', DATES[:2], ['sym', 'price'], DATES[:2])} "
                      "ORDER BY sym")
    assert read.column("price").to_pylist() == want["price"].tolist()
    back = pq.read_table(a.partition_dir("trade", DATES[0]))
    keys = list(zip(back.column("sym").cast(pa.string()).to_pylist(), back.column("time").to_pylist(),
                    back.column("price").to_pylist(), strict=True))
    assert keys == sorted(keys)  # (sym, time, log position): ties keep the log's order
    # the external path really spilled runs and merged them
    sorter = DaySorter(run_bytes=table.nbytes // 5, tmp_dir=tmp_path / "runs")
    sorter.extend(table.to_batches(1000))
    merged = pa.concat_tables(list(sorter.sorted()))
    assert sorter.runs == [] and merged.num_rows == n
    assert merged.column("price").to_pylist() == back.column("price").to_pylist()
    # a row group covers a narrow sym range: one sym's rows sit in a few of them
    meta = pq.ParquetFile(Path(a.partition_dir("trade", DATES[0])) / "part-00000.parquet").metadata
    sym_idx = meta.schema.names.index("sym")
    covering = [i for i in range(meta.num_row_groups)
                if meta.row_group(i).column(sym_idx).statistics.min <= "S00" <= meta.row_group(i).column(sym_idx).statistics.max]
    s00 = int(pa.compute.sum(pa.compute.equal(table.column("sym"), "S00")).as_py())
    assert len(covering) <= math.ceil(s00 / 2048) + 1


def test_settings_apply_to_a_statement_that_says_settings(tmp_path):
    """The limits go inline with every statement, whatever words it contains: a statement
    reading a column or string named ``settings`` is limited like any other."""
    from sinks.hdb import pool

    run = pool("chdb://").run
    limited = {"max_result_rows": 3, "result_overflow_mode": "throw"}
    assert run("SELECT 'settings' AS word FROM numbers(3)", settings=limited).num_rows == 3
    for statement in ("SELECT number AS settings FROM numbers(10)", "SELECT 'SETTINGS' AS w FROM numbers(10)"):
        with pytest.raises(Exception, match="Limit for result exceeded"):
            run(statement, settings=limited)
