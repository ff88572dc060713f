"""kdb+'s order on equal time stamps: ``seq``, a row's place in the log (ingest/seq.py).

Ticks often share a time stamp; kdb+'s ``aj`` takes the last quote published at or
before a trade's time, a bar's open and close are the first and last trades
published. Checked here on data where most time stamps are shared, against an
independent implementation (pandas: ``merge_asof`` and ``first``/``last`` after a
stable sort by time of the rows in publish order), in the HDB's files (new ones, and
ones written before ``seq`` existed), and through the real plant: a broker, the
tickerplant publishing in blocks and row by row, an RDB worker holding today, the PDB
writing yesterday down at end of day, the gateway's named queries and SQL over both.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from procs import Worker, wait_until

from gateway.app import create_app
from gateway.auth import Users, hash_key
from ingest.eod import open_first_day, read_day_state, roll_day
from ingest.intake import Intake
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaError, TableSchema
from ingest.seq import SEQ, number, offset_of, seq_array, seq_of, seqs_of_offsets
from ingest.validate import RowRules
from sinks.hdb import HdbQuery
from sinks.pdb import Pdb
from sinks.store import HdbStore
from sinks.writedown import WriteOptions, write_partition
from tickplant.clock import ManualClock
from tickplant.config import Settings

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
D1, D2 = dt.date(2026, 11, 22), dt.date(2026, 11, 23)
SYMS = ["AAPL", "MSFT", "IBM", "TSLA", "XOM"]
ARROW = {"Accept": "application/vnd.apache.arrow.stream"}

# What the README tells SQL users to write for kdb+'s aj: ASOF on the packed (time, seq) key.
KDB_AJ_SQL = """
SELECT t.date AS date, t.sym AS sym, t.time AS time, t.seq AS seq, q.bid AS bid, q.ask AS ask
FROM (SELECT date, sym, time, seq,
             bitShiftLeft(toInt128(toUnixTimestamp64Nano(time)), 63) + 9223372036854775807 AS k
      FROM trade WHERE date = '{d}') AS t
ASOF LEFT JOIN (SELECT date, sym, bid, ask,
                       bitShiftLeft(toInt128(toUnixTimestamp64Nano(time)), 63) + seq AS k
                FROM quote WHERE date = '{d}') AS q
ON t.sym = q.sym AND t.k >= q.k
ORDER BY sym, time, seq
"""
# ... and what an ASOF JOIN on time alone gives (the tie is then ClickHouse's pick)
TIME_ONLY_AJ_SQL = """
SELECT t.sym AS sym, t.time AS time, t.seq AS seq, q.bid AS bid
FROM (SELECT sym, time, seq FROM trade WHERE date = '{d}') AS t
ASOF LEFT JOIN (SELECT sym, time, bid FROM quote WHERE date = '{d}') AS q
ON t.sym = q.sym AND t.time >= q.time
ORDER BY sym, time, seq
"""


def tied_day(start: int, seed: int, quotes: int = 4000, trades: int = 2000) -> tuple[list[dict], list[dict]]:
    """A day of quotes and trades in publish order, time stamps on a coarse grid: 600 instants
    over ten minutes for five syms, so nearly every quote and trade shares its time with
    others of its sym; trades land on quotes' instants (an exact match is the prevailing
    quote) and some before any quote. Every bid and price is distinct: a wrong pick shows."""
    rng = np.random.default_rng(seed)
    grid = 600
    step = 10 * 60 * 10**9 // grid
    qt = np.sort(rng.integers(2, grid, quotes)) * step + start
    tt = np.sort(rng.integers(0, grid, trades)) * step + start
    qs, ts = rng.integers(0, len(SYMS), quotes), rng.integers(0, len(SYMS), trades)
    quote_rows = [{"time": int(t), "sym": SYMS[s], "bid": round(100 + i * 0.001, 3), "ask": round(101 + i * 0.001, 3),
                   "bsize": 100 + i, "asize": 200 + i, "exchange": "N"} for i, (t, s) in enumerate(zip(qt, qs, strict=True))]
    trade_rows = [{"time": int(t), "sym": SYMS[s], "price": round(100 + i * 0.001, 3), "size": 1 + i % 97,
                   "exchange": "NQ"[i % 2], "cond": ""} for i, (t, s) in enumerate(zip(tt, ts, strict=True))]
    return trade_rows, quote_rows


def reference_aj(trades: list[dict], quotes: list[dict]) -> pd.DataFrame:
    """kdb+'s aj by pandas: the rows in publish order, sorted stably by time, merge_asof backward
    (which takes the last of the right rows at an equal time). By sym, time, publish order."""
    t = pd.DataFrame(trades).reset_index(names="order").sort_values("time", kind="stable")
    q = pd.DataFrame(quotes).sort_values("time", kind="stable")[["time", "sym", "bid", "ask"]]
    joined = pd.merge_asof(t, q, on="time", by="sym", direction="backward", allow_exact_matches=True)
    return joined.sort_values(["sym", "time", "order"], kind="stable").reset_index(drop=True)


def reference_bars(trades: list[dict], minutes: int = 1) -> pd.DataFrame:
    """OHLCV bars by pandas: first/last of each bar's trades in (time, publish) order."""
    df = pd.DataFrame(trades).sort_values("time", kind="stable")
    df["bar"] = df.time // (minutes * 60 * 10**9) * (minutes * 60 * 10**9)
    g = df.groupby(["sym", "bar"], sort=True)
    return pd.DataFrame({"open": g.price.first(), "high": g.price.max(), "low": g.price.min(),
                         "close": g.price.last(), "volume": g["size"].sum(), "trades": g["size"].count()}).reset_index()


def differing(got: pd.DataFrame, want: pd.DataFrame, column: str = "bid", missing: float = -1) -> int:
    """Trades whose ``column`` differs; ``missing``: what no quote yet reads as (an ASOF LEFT JOIN
    in plain SQL gives ClickHouse's default, 0; /v1/aj runs with join_use_nulls: null)."""
    assert len(got) == len(want)
    assert got.time.astype("int64").tolist() == want.time.tolist()
    assert got.sym.astype(str).tolist() == want.sym.tolist()
    return int((got[column].fillna(-1).to_numpy() != want[column].fillna(missing).to_numpy()).sum())


def check_bars(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.assign(bar=got.bar.astype("int64"), sym=got.sym.astype(str)).sort_values(["sym", "bar"])
    got = got.reset_index(drop=True)
    assert got[["sym", "bar"]].values.tolist() == want[["sym", "bar"]].values.tolist()
    for col in ("open", "high", "low", "close", "volume", "trades"):
        assert got[col].tolist() == want[col].tolist(), col


def tie_share(trades: list[dict], quotes: list[dict]) -> float:
    """Share of trades whose prevailing time stamp several quotes of their sym share."""
    q = pd.DataFrame(quotes).groupby(["sym", "time"]).size().rename("n").reset_index().sort_values("time")
    t = pd.DataFrame(trades).sort_values("time")
    joined = pd.merge_asof(t, q, on="time", by="sym")
    return float((joined.n > 1).mean())


# -- the column itself ------------------------------------------------------------------------


def test_seq_numbers_a_message_s_rows_and_orders_as_the_log():
    assert seq_of(7, 0) < seq_of(7, 1) < seq_of(7, (1 << 20) - 1) < seq_of(8, 0)
    assert offset_of(seq_of(123_456, 99)) == 123_456
    with pytest.raises(OverflowError):
        number([{}], 1 << 43)
    assert seq_array(9, 3).tolist() == [seq_of(9, 0), seq_of(9, 1), seq_of(9, 2)]
    assert seq_array(9, np.array([0, 2])).tolist() == [seq_of(9, 0), seq_of(9, 2)]
    offsets = np.array([5, 5, 5, 9, 12, 12])
    assert seqs_of_offsets(offsets).tolist() == [seq_of(5, 0), seq_of(5, 1), seq_of(5, 2), seq_of(9, 0),
                                                 seq_of(12, 0), seq_of(12, 1)]


def test_a_table_may_not_have_a_field_named_seq(catalog):
    avro = dict(catalog["trade"].avro)
    avro["fields"] = [*avro["fields"], {"name": "seq", "type": "long"}]
    with pytest.raises(SchemaError, match="seq"):
        TableSchema.from_dict(avro)
    assert "seq" not in catalog["trade"].columns and catalog["trade"].stored_columns[-1] == SEQ


class _Decoded:
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def decode(self, value: bytes) -> tuple[str, list[dict]]:
        return "trade", [dict(r) for r in self.rows]


def test_a_row_keeps_its_index_in_the_message_when_neighbours_are_refused(tmp_path, catalog, monkeypatch):
    settings = Settings(data_dir=tmp_path, partitions=1)
    rows = [{"time": T0 + i, "sym": "AAPL", "price": float(i), "size": 1, "exchange": "N", "cond": ""}
            for i in range(6)]
    rows[2]["price"] = float("nan")  # refused: the others keep the numbers they had
    intake = Intake(settings, catalog, _Decoded(rows), None, seq=True)  # type: ignore[arg-type]
    kept = intake.rows("trade", 0, 41, b"", D1)
    assert [r[SEQ] for r in kept] == [seq_of(41, i) for i in (0, 1, 3, 4, 5)]
    # a message beyond what seq can number: its rows past the limit are refused, by every reader
    monkeypatch.setattr("ingest.validate.MAX_MESSAGE_ROWS", 4)
    kept, refused = RowRules(settings, catalog).check("trade", "trade", [dict(r) for r in rows], D1, 0)
    assert len(kept) == 3 and sorted(i for i, _, _ in refused.rows) == [2, 4, 5]
    assert "at most 4 rows" in refused.rows[-1][2]


# -- the HDB's files ------------------------------------------------------------------------


def _day_tables(catalog, date: dt.date, seed: int) -> tuple[list[dict], list[dict], pa.Table, pa.Table]:
    start = int(dt.datetime(date.year, date.month, date.day, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
    trades, quotes = tied_day(start, seed)
    return (trades, quotes, catalog["trade"].to_arrow(trades), catalog["quote"].to_arrow(quotes))


@pytest.mark.parametrize("old_files", [False, True], ids=["with-seq", "written-before-seq"])
def test_hdb_aj_and_bars_take_ties_in_publish_order(tmp_path, catalog, old_files):
    """The write-down numbers rows given in log order; files written before seq existed (no
    such column, several files a day) are read with seq derived from their order."""
    settings = Settings(data_dir=tmp_path, hdb_root=str(tmp_path / "hdb"))
    store = HdbStore.from_settings(settings)
    trades, quotes, trade, quote = _day_tables(catalog, D1, seed=3)
    small = WriteOptions(row_group_rows=500, file_row_groups=2)  # several files: a sym spans two
    for name, table in (("trade", trade), ("quote", quote)):
        manifest = write_partition(store, catalog[name], D1, table.to_batches(max_chunksize=333), {0: (0, 1)},
                                   options=small)
        assert len(manifest.files) > 1
        if old_files:  # the same files as an older plant wrote them: no seq column
            for f in manifest.files:
                path = f"{store.partition_dir(name, D1)}/{f.name}"
                old = pq.read_table(store.fs.open_input_file(path)).drop_columns([SEQ])
                pq.write_table(old, path, row_group_size=500)
    hdb = HdbQuery(settings, store=store, catalog=catalog)
    got = hdb.aj(D1, ordered=True).to_pandas()
    assert differing(got, reference_aj(trades, quotes)) == 0
    assert differing(got, reference_aj(trades, quotes), "ask") == 0
    check_bars(hdb.bars(None, D1).to_pandas(), reference_bars(trades))
    seqs = hdb.sql(f"SELECT sym, seq FROM {hdb.source('quote', D1, D1, ['sym', 'seq'])} "
                   "ORDER BY sym, seq").column("seq").to_pylist()
    assert len(set(seqs)) == len(quotes)


# -- through the plant ------------------------------------------------------------------------


@contextmanager
def running_pdb(settings) -> Iterator[Pdb]:
    pdb = Pdb(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pdb.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run, name="pdb", daemon=True)
    thread.start()
    try:
        assert pdb.ready.wait(30), "the PDB got no partitions"
        yield pdb
    finally:
        stop.set()
        thread.join(60)
    if errors:
        raise errors[0]


def publish(settings, catalog, rows: dict[str, list[dict]]) -> None:
    """Half of each table in blocks (small ones: many blocks, rows deep in them), the rest a
    message per row, in order."""
    for table, table_rows in rows.items():
        half = len(table_rows) // 2
        with Tickerplant(settings, catalog, mode="batch") as tp:
            tp.publish_rows(table, table_rows[:half])
        with Tickerplant(settings, catalog, mode="zero") as tp:
            tp.publish_rows(table, table_rows[half:])


USERS = {"users": {
    "ops": {"keys": [hash_key("ops-key-000000000")], "admin": True},
    "alice": {"keys": [hash_key("alice-key-0000000")], "tables": {
        "trade": {"columns": ["time", "sym", "price"]}, "quote": {"columns": ["time", "sym", "bid"]}}},
}}
OPS = {"X-API-Key": "ops-key-000000000", **ARROW}
ALICE = {"X-API-Key": "alice-key-0000000", **ARROW}


@pytest.fixture(scope="module")
def plant(broker, catalog, tmp_path_factory):
    """Yesterday (D1) written down by the PDB at end of day, today (D2) in an RDB worker."""
    tmp = tmp_path_factory.mktemp("ties")
    settings = broker.settings.replace(topic_prefix=f"s{uuid.uuid4().hex[:8]}.", data_dir=tmp / "plant",
                                       batch_interval_ms=20, max_block_rows=97)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    days = {D1: tied_day(T0, seed=11), D2: tied_day(T0 + 24 * 3600 * 10**9, seed=12)}
    worker = Worker(settings, "rdb-ties", tmp).start()
    try:
        with running_pdb(settings) as pdb:
            trades, quotes = days[D1]
            publish(settings, catalog, {"quote": quotes, "trade": trades})
            clock.advance(15 * 3600)
            roll_day(settings, catalog, clock)
            clock.advance(9 * 3600)
            trades, quotes = days[D2]
            publish(settings, catalog, {"quote": quotes, "trade": trades})
            wait_until(lambda: {"trade", "quote"} <= {t for t, ds in read_day_state(settings).published.items()
                                                       if D1 in ds}, 120, "the PDB to write D1", lambda: str(pdb.status()))
        worker.wait_serving()
        wait_until(lambda: sum(worker.client.count("trade", date=D2.isoformat()).values()) == len(days[D2][0])
                   and sum(worker.client.count("quote", date=D2.isoformat()).values()) == len(days[D2][1]),
                   60, "today in the RDB", worker.log_tail)
        with TestClient(create_app(settings, users=Users.from_dict(USERS))) as client:
            wait_until(lambda: client.get("/v1/health", headers=OPS).json()["rdb_nodes"], 30, "the gateway")
            yield settings, client, days, worker
    finally:
        worker.stop()


def arrow(resp) -> pd.DataFrame:
    assert resp.status_code == 200, resp.text
    return pa.ipc.open_stream(resp.content).read_all().to_pandas()


def sql(client, query: str, headers=OPS) -> pd.DataFrame:
    return arrow(client.post("/v1/sql", json={"query": query}, headers=headers))


@pytest.mark.parametrize("day", [D1, D2], ids=["history-from-the-pdb", "today-from-the-rdb"])
def test_aj_bars_and_last_match_pandas_on_tied_time_stamps(plant, day):
    settings, client, days, _ = plant
    trades, quotes = days[day]
    assert tie_share(trades, quotes) > 0.5, "the data should tie most trades' prevailing quotes"
    want = reference_aj(trades, quotes)
    got = arrow(client.get("/v1/aj", params={"start": day.isoformat()}, headers=OPS))
    assert differing(got, want) == 0 and differing(got, want, "ask") == 0
    # the SQL the README gives users for the same
    assert differing(sql(client, KDB_AJ_SQL.format(d=day)), want, missing=0) == 0
    # what an ASOF JOIN on time alone gives, for the record (ClickHouse picks among the ties)
    naive = differing(sql(client, TIME_ONLY_AJ_SQL.format(d=day)), want, missing=0)
    print(f"{day}: {len(want)} trades; an ASOF JOIN on time alone gives another bid for {naive}")
    bars = arrow(client.get("/v1/bars", params={"start": day.isoformat(), "minutes": 1}, headers=OPS))
    check_bars(bars, reference_bars(trades))
    by_time = sql(client, f"SELECT sym, toStartOfMinute(time) AS bar, argMin(price, time) AS open, "
                          f"argMax(price, time) AS close FROM trade WHERE date = '{day}' GROUP BY sym, bar "
                          f"ORDER BY sym, bar")
    ref = reference_bars(trades)
    wrong = int((by_time.open.to_numpy() != ref.open.to_numpy()).sum() + (by_time.close.to_numpy() != ref.close.to_numpy()).sum())
    print(f"{day}: {len(ref)} bars; by time alone {wrong} opens and closes are another trade's")
    rows = arrow(client.get("/v1/quotes", params={"start": day.isoformat()}, headers=OPS))
    ordered = pd.DataFrame(quotes).reset_index(names="order").sort_values(["sym", "time", "order"], kind="stable")
    assert rows.bid.tolist() == ordered.bid.tolist() and SEQ not in rows.columns
    rows = arrow(client.get("/v1/quotes", params={"start": day.isoformat(), "columns": "sym,time,bid,seq"},
                            headers=OPS))
    assert rows.bid.tolist() == ordered.bid.tolist()
    assert rows.groupby("sym", observed=True).seq.apply(lambda s: s.is_monotonic_increasing).all()


def test_last_is_the_last_published_of_the_latest_time(plant):
    _, client, days, _ = plant
    quotes = pd.DataFrame(days[D2][1])
    want = quotes.sort_values("time", kind="stable").groupby("sym").tail(1).sort_values("sym")
    got = arrow(client.get("/v1/last", params={"table": "quote"}, headers=OPS))
    assert SEQ not in got.columns
    assert got.sym.astype(str).tolist() == want.sym.tolist()
    assert got.bid.tolist() == want.bid.tolist()
    mine = arrow(client.get("/v1/last", params={"table": "quote"}, headers=ALICE))  # granted some columns
    assert list(mine.columns) == ["time", "sym", "bid", "date"] and mine.bid.tolist() == want.bid.tolist()


def test_seq_is_the_same_in_the_rdb_the_hdb_and_a_replay_and_select_star_leaves_it_out(plant):
    settings, client, days, worker = plant
    from ingest.replay import replay_arrow

    for day in (D1, D2):
        replayed = replay_arrow(settings, "quote", day, catalog=None, seq=True)
        got = sql(client, f"SELECT sym, time, bid, seq FROM quote WHERE date = '{day}' ORDER BY sym, seq")
        want = replayed.to_pandas().sort_values(["sym", SEQ])
        assert got.seq.tolist() == want.seq.tolist() and got.bid.tolist() == want.bid.tolist()
        # per sym, seq follows publish order
        published = pd.DataFrame(days[day][1]).reset_index(names="order")
        merged = got.assign(sym=got.sym.astype(str)).merge(published[["bid", "order"]], on="bid")
        for _, one in merged.groupby("sym"):
            assert one.order.is_monotonic_increasing
    star = sql(client, "SELECT * FROM quote WHERE date = today() LIMIT 3")
    assert list(star.columns) == ["time", "sym", "bid", "ask", "bsize", "asize", "exchange", "date"]
    both = sql(client, "SELECT * FROM quote ORDER BY date, sym, time, seq LIMIT 3")
    assert SEQ in both.columns
    # a user granted some columns sees seq when naming it, like date; not in SELECT *
    mine = sql(client, "SELECT * FROM quote WHERE date = today() LIMIT 2", headers=ALICE)
    assert list(mine.columns) == ["time", "sym", "bid", "date"]
    named = sql(client, "SELECT sym, seq FROM quote WHERE date = today() ORDER BY sym, seq LIMIT 2", headers=ALICE)
    assert list(named.columns) == ["sym", "seq"]


def readme_sql() -> list[str]:
    """The statements of the README's SQL example for equal time stamps."""
    from tickplant.config import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index("### Equal time stamps"):]
    block = block[block.index("```sql") + len("```sql"):]
    block = block[:block.index("```")]
    statements, current = [], []
    for line in block.splitlines():
        if line.startswith("--"):
            if any(s.strip() for s in current):
                statements.append("\n".join(current))
            current = []
        else:
            current.append(line)
    statements.append("\n".join(current))
    return [s.strip() for s in statements if s.strip()]


def test_the_readme_s_sql_gives_kdb_s_answers(plant):
    _, client, days, _ = plant
    trades, quotes = days[D2]
    bars_sql, aj_sql = readme_sql()
    bars = sql(client, bars_sql)
    want = reference_bars(trades)
    got = bars.assign(bar=[pd.Timestamp(b).value for b in bars.bar], sym=bars.sym.astype(str))  # ns
    assert got[["sym", "bar", "open", "close"]].values.tolist() == want[["sym", "bar", "open", "close"]].values.tolist()
    joined = sql(client, aj_sql + " ORDER BY t.sym, t.time, t.price")
    joined.columns = [c.split(".")[-1] for c in joined.columns]
    ref = reference_aj(trades, quotes).sort_values(["sym", "time", "price"], kind="stable").reset_index(drop=True)
    assert differing(joined, ref, missing=0) == 0
    assert differing(joined, ref, "ask", missing=0) == 0


# -- data kept before seq existed ---------------------------------------------------------------


def test_rdb_chunks_stored_before_seq_read_in_log_order_below_newer_rows(tmp_path, catalog):
    from streams.shard import Resources, Shard

    shard = Shard(tmp_path / "shard", Resources(cache_bytes=8 << 20, write_buffer_bytes=8 << 20))
    rows = [{"time": T0, "sym": "AAPL", "price": float(i), "size": 1, "exchange": "N", "cond": ""} for i in range(6)]
    old = catalog["trade"].to_arrow(rows[:3])  # as an RDB before seq stored them
    shard.apply(10, D1.isoformat(), old)
    for r, i in zip(rows[3:], range(3), strict=True):
        r[SEQ] = seq_of(11, i)
    shard.apply(11, D1.isoformat(), catalog["trade"].to_arrow(rows[3:], seq=True))
    shard.flush()
    got = pa.concat_tables(shard.read(D1.isoformat(), ["AAPL"]), promote_options="default")
    assert got.column("price").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    seqs = got.column(SEQ).to_pylist()
    assert seqs[:3] == [seq_of(10, 0), seq_of(10, 1), seq_of(10, 2)] and seqs == sorted(seqs)
    assert shard.last(D1.isoformat(), "AAPL").column(SEQ).to_pylist() == [seq_of(11, 2)]
    shard.close()


def test_pdb_segments_captured_before_seq_get_it_from_their_offsets(tmp_path, catalog):
    from sinks.spill import OFFSET, read_day

    table = catalog["quote"].to_arrow(tied_day(T0, seed=5, quotes=10, trades=1)[1])
    offsets = pa.array([4, 4, 4, 5, 7, 7, 7, 7, 8, 9], pa.int64())
    segment = tmp_path / "old.arrows"
    with pa.OSFile(str(segment), "wb") as sink, pa.ipc.new_stream(
            sink, catalog["quote"].arrow_schema.append(pa.field(OFFSET, pa.int64(), nullable=False))) as writer:
        writer.write_table(table.append_column(pa.field(OFFSET, pa.int64(), nullable=False), offsets))
    batches = list(read_day([(segment, 4, 9, True)]))
    got = pa.Table.from_batches(batches)
    assert got.column(SEQ).to_pylist() == [seq_of(4, 0), seq_of(4, 1), seq_of(4, 2), seq_of(5, 0), seq_of(7, 0),
                                           seq_of(7, 1), seq_of(7, 2), seq_of(7, 3), seq_of(8, 0)]


def test_replay_seq_flag_gives_the_rows_their_place_in_the_log(plant, capsys, monkeypatch):
    from procs import plant_env

    from tickplant.cli import main

    settings, _, days, _ = plant
    for key, value in plant_env(settings).items():
        if key.startswith("TICKPLANT_"):
            monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert main(["replay", "quote", "--date", D1.isoformat(), "--format", "csv", "--seq"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:] if line]
    assert header[-1] == SEQ and len(rows) == len(days[D1][1])
    hdb = {r["bid"]: r["seq"] for r in HdbQuery(settings).table("quote", D1, columns=["bid", "seq"]).to_pylist()}
    assert all(hdb[float(r[header.index("bid")])] == int(r[-1]) for r in rows)
