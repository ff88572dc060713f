"""The PDB on a real broker: capture, end of day, write-down, publication, crashes.

Every partition is checked against what the log holds for its day (``ingest.replay``),
row for row, in the partition's order (sym, time, log position).
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs import plant_env, wait_until
from s3server import s3  # noqa: F401 - the SeaweedFS fixture

from ingest.eod import open_first_day, read_day_state, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.records import PublishedMarker
from ingest.replay import replay_arrow
from sinks.backfill import backfill
from sinks.hdb import HdbQuery
from sinks.pdb import Pdb
from sinks.store import HdbStore
from tickplant.clock import ManualClock

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY1, DAY2, DAY3 = dt.date(2026, 11, 22), dt.date(2026, 11, 23), dt.date(2026, 11, 24)


@contextmanager
def running_pdb(settings) -> Iterator[Pdb]:
    """The PDB in a thread of this process, stopped (and checked for errors) at the end."""
    pdb = Pdb(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pdb.run(stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            errors.append(exc)

    thread = threading.Thread(target=run, name="pdb", daemon=True)
    thread.start()
    try:
        assert pdb.ready.wait(30), "the PDB got no partitions"
        yield pdb
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the PDB did not stop"
    if errors:
        raise errors[0]


class PdbProcess:
    """``tickplant pdb run`` as a subprocess, so it can be kill -9'd."""

    def __init__(self, settings, log_path: Path, **env: str):
        self.settings = settings
        self.log_path = log_path
        self.env = {**plant_env(settings), "TICKPLANT_HDB_ROOT": settings.hdb_root, **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> PdbProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tickplant", "pdb", "run"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture
def pdb_procs(settings, tmp_path):
    started: list[PdbProcess] = []

    def make(**env: str) -> PdbProcess:
        proc = PdbProcess(settings, tmp_path / f"pdb-{len(started)}.log", **env).start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


def publish_day(tp: Tickerplant, market: SyntheticMarket, events: int, chunk: int = 500) -> None:
    for _ in range(events // chunk):
        trades, quotes = market.events(chunk)
        tp.publish_rows("trade", trades)
        tp.publish_rows("quote", quotes)
    tp.flush()


def as_plain(table: pa.Table) -> pa.Table:
    """sym as plain strings, no date column: comparable with a replay."""
    if "date" in table.column_names:
        table = table.drop_columns(["date"])
    idx = table.schema.get_field_index("sym")
    return table.set_column(idx, "sym", table.column("sym").cast(pa.string()))


def expected(settings, catalog, table: str, date: dt.date) -> pa.Table:
    """The day as the log holds it, in the HDB's order: a stable sort of log order by (sym, time),
    with each row's place in the log (seq) as a replay numbers it."""
    rows = replay_arrow(settings, table, date, catalog=catalog, seq=True)
    return rows.sort_by([("sym", "ascending"), ("time", "ascending")])


def partition(store: HdbStore, table: str, date: dt.date) -> pa.Table:
    manifest = store.manifest(table, date)
    assert manifest is not None, f"{table} {date} has no manifest"
    parts = [pq.read_table(store.fs.open_input_file(f"{store.partition_dir(table, date)}/{f.name}"))
             for f in manifest.files]
    return as_plain(pa.concat_tables(parts))


def check_partition(settings, catalog, store: HdbStore, table: str, date: dt.date) -> int:
    got = partition(store, table, date)
    want = expected(settings, catalog, table, date)
    assert got.num_rows == want.num_rows > 0
    assert got.to_pylist() == want.cast(got.schema).to_pylist()
    manifest = store.manifest(table, date)
    assert manifest.rows == want.num_rows
    assert sum(manifest.syms.values()) == want.num_rows
    times = want.column("time").cast(pa.int64()).to_pylist()
    assert (manifest.time_min, manifest.time_max) == (min(times), max(times))
    assert not store.verify(manifest)
    return got.num_rows


def published(settings) -> dict[str, set[dt.date]]:
    return read_day_state(settings).published


def wait_published(settings, pairs: list[tuple[str, dt.date]], timeout: float = 60, detail=str) -> None:
    wait_until(lambda: all(d in published(settings).get(t, set()) for t, d in pairs), timeout,
               f"published markers for {pairs}", detail)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_days_in_a_row_written_while_the_next_day_flows(where, settings, catalog, request):
    """Capture all day, roll twice, feed on: each day's partition is exactly its log range, sorted."""
    if where == "s3":
        server = request.getfixturevalue("s3")
        settings = settings.replace(hdb_root=f"s3://{server.bucket}/{settings.topic_prefix.rstrip('.')}",
                                    s3_endpoint=server.endpoint)
    store = HdbStore.from_settings(settings)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=30, seed=5, clock=clock)
    with Tickerplant(settings, catalog, mode="batch") as tp, running_pdb(settings) as pdb:
        publish_day(tp, market, 6000)
        clock.advance(24 * 3600)
        first = roll_day(settings, catalog, clock)
        publish_day(tp, market, 4000)          # the next day flows in while day 1 is written
        clock.advance(24 * 3600)
        second = roll_day(settings, catalog, clock)
        publish_day(tp, market, 2000)          # day 3, open: never written
        wait_published(settings, [(t, d) for t in ("trade", "quote") for d in (DAY1, DAY2)],
                       detail=lambda: str(pdb.status()))
        # every row captured before the PDB stops (on a loaded machine the open day's last rows
        # may still be on their way when the two closed days are published)
        wait_until(lambda: pdb.status()["rows_captured"] >= sum(tp.stats.delivered.values()), 60,
                   "the PDB to capture every published row", lambda: str(pdb.status()))
        status = pdb.status()
    assert first.date == DAY1 and second.date == DAY2
    for table in ("trade", "quote"):
        for date in (DAY1, DAY2):
            check_partition(settings, catalog, store, table, date)
    assert store.dates("trade") == [DAY1, DAY2], "the open day is not written"
    # the markers say what was published, as the RDB and gateway read them
    markers = [m for m in read_day_state(settings).markers if isinstance(m, PublishedMarker)]
    by_key = {(m.table, m.date): m for m in markers}
    for (table, date), marker in by_key.items():
        assert marker.rows == store.manifest(table, date).rows
        assert marker.root == store.display_root
    assert len(by_key) == 2 * len(catalog.names)  # every table of schemas/, each day (empty ones too)
    # published days leave the cache; the open day's capture is still there
    assert status["published"] and not status["failed"]
    cache = Path(settings.data_dir) / "pdb" / "cache"
    rows_left = sum(pa.ipc.open_stream(pa.memory_map(str(f))).read_all().num_rows for f in cache.glob("*/p*/*.arrows"))
    open_rows = sum(replay_arrow(settings, t, None, catalog=catalog).num_rows for t in ("trade", "quote"))
    assert rows_left == open_rows
    # and the HDB answers through ClickHouse, from either root
    q = HdbQuery(settings, store=store, catalog=catalog)
    sym = expected(settings, catalog, "trade", DAY2).column("sym")[0].as_py()
    got = q.table("trade", DAY2, syms=[sym])
    want = expected(settings, catalog, "trade", DAY2).filter(pa.compute.equal(pa.compute.field("sym"), sym))
    assert got.num_rows == want.num_rows > 0
    assert got.column("price").to_pylist() == want.column("price").to_pylist()


def test_sort_order_row_groups_and_dictionary(settings, catalog):
    """Sorted by sym then time; sym dictionary-encoded; lz4 unless hdb_compression says
    otherwise; each row group a narrow sym range."""
    store = HdbStore.from_settings(settings)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=40, seed=8, clock=clock)
    with Tickerplant(settings, catalog) as tp:
        publish_day(tp, market, 8000)
    clock.advance(24 * 3600)
    roll_day(settings, catalog, clock)
    from sinks.writedown import WriteOptions

    manifest, written = backfill(settings, "quote", DAY1, options=WriteOptions(row_group_rows=1000, file_row_groups=3),
                                 catalog=catalog)
    assert written and len(manifest.files) == 3 and manifest.rows == 8000
    rows = partition(store, "quote", DAY1)
    keys = list(zip(rows.column("sym").to_pylist(), rows.column("time").cast(pa.int64()).to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert rows.to_pylist() == expected(settings, catalog, "quote", DAY1).cast(rows.schema).to_pylist()
    previous_max = ""
    for entry in manifest.files:
        f = pq.ParquetFile(store.fs.open_input_file(f"{store.partition_dir('quote', DAY1)}/{entry.name}"))
        meta = f.metadata
        assert f.schema_arrow.field("sym").type == pa.dictionary(pa.int32(), pa.string())
        assert meta.num_row_groups == entry.row_groups
        assert entry.sym_min >= previous_max
        previous_max = entry.sym_max
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            sym_col = rg.column(meta.schema.names.index("sym"))
            assert sym_col.compression == "LZ4"
            assert "RLE_DICTIONARY" in sym_col.encodings or "PLAIN_DICTIONARY" in sym_col.encodings
            stats = sym_col.statistics
            assert stats.has_min_max and stats.min <= stats.max
            assert rg.num_rows == 1000 or (entry is manifest.files[-1] and i == meta.num_row_groups - 1)
    # the setting picks the codec of a rewrite (the options left to the settings)
    manifest, written = backfill(settings.replace(hdb_compression="zstd"), "quote", DAY1, force=True, catalog=catalog)
    assert written and manifest.rows == 8000
    assert partition(store, "quote", DAY1).to_pylist() == rows.to_pylist()
    for entry in manifest.files:
        meta = pq.ParquetFile(store.fs.open_input_file(f"{store.partition_dir('quote', DAY1)}/{entry.name}")).metadata
        assert {meta.row_group(0).column(j).compression for j in range(meta.num_columns)} == {"ZSTD"}


def test_pdb_killed_mid_write_down_then_rerun_gives_the_identical_partition(settings, catalog, pdb_procs, tmp_path):
    store = HdbStore.from_settings(settings)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=25, seed=3, clock=clock)
    with Tickerplant(settings, catalog) as tp:
        publish_day(tp, market, 5000)
        clock.advance(24 * 3600)
        roll_day(settings, catalog, clock)
        publish_day(tp, market, 1000)
    # the first PDB stops half-way through writing the trade partition's first file
    first = pdb_procs(TICKPLANT_FAILPOINT="pdb-mid-file:trade:0")
    part_dir = Path(store.partition_dir("trade", DAY1))
    wait_until(lambda: (part_dir / "part-00000.parquet").exists() or not first.alive(), 60,
               "the write-down to begin", first.log)
    time.sleep(0.3)
    assert first.alive(), first.log()
    first.kill9()
    assert (part_dir / "part-00000.parquet").exists()
    assert store.manifest("trade", DAY1) is None, "no manifest: readers see nothing of the half-written day"
    assert store.dates("trade") == []
    assert DAY1 not in published(settings).get("trade", set())
    with pytest.raises(pa.ArrowException):
        pq.read_table(part_dir / "part-00000.parquet")  # truly half a file
    # rerun: same partition as a clean write of the same day from the log
    pdb_procs()
    wait_published(settings, [("trade", DAY1), ("quote", DAY1)])
    rows = check_partition(settings, catalog, store, "trade", DAY1)
    check_partition(settings, catalog, store, "quote", DAY1)
    reference = HdbStore(str(tmp_path / "reference"))
    clean, _ = backfill(settings, "trade", DAY1, catalog=catalog, store=reference)
    assert store.manifest("trade", DAY1).identity() == clean.identity()
    assert clean.rows == rows
    assert sorted(store.files("trade", DAY1)) == ["_latest/latest.parquet", "_manifest.json", "part-00000.parquet"]


def test_pdb_killed_while_capturing_loses_and_doubles_nothing(settings, catalog, pdb_procs):
    store = HdbStore.from_settings(settings)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=20, seed=4, clock=clock)
    stop = threading.Event()
    with Tickerplant(settings, catalog, mode="batch") as tp:
        def feed() -> None:
            while not stop.is_set():
                trades, quotes = market.events(200)
                tp.publish_rows("trade", trades)
                tp.publish_rows("quote", quotes)
                time.sleep(0.01)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            first = pdb_procs()
            cache = Path(settings.data_dir) / "pdb" / "cache"
            wait_until(lambda: len(list(cache.glob("trade/p*/*.arrows"))) >= 2, 60, "capture", first.log)
            time.sleep(0.7)
            first.kill9()              # mid-stream: some rows committed, some buffered, some in flight
            time.sleep(0.5)
            second = pdb_procs()
            time.sleep(1.0)
            second.kill9()             # and again
            pdb_procs()
            time.sleep(1.0)
            clock.advance(24 * 3600)
            roll_day(settings, catalog, clock)
            time.sleep(0.5)
        finally:
            stop.set()
            feeder.join()
        tp.flush()
    wait_published(settings, [("trade", DAY1), ("quote", DAY1)])
    assert check_partition(settings, catalog, store, "trade", DAY1) > 500
    assert check_partition(settings, catalog, store, "quote", DAY1) > 2000


def test_late_rows_stay_in_the_day_whose_log_range_holds_them(settings, catalog):
    """A row stamped yesterday that reaches the log after the fence is today's (and kept)."""
    store = HdbStore.from_settings(settings)
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    day1_noon = T0
    day2_noon = T0 + 24 * 3600 * 10**9
    row = {"sym": "AAPL", "price": 1.0, "size": 100, "exchange": "N", "cond": ""}
    with Tickerplant(settings, catalog, mode="zero") as tp, running_pdb(settings):
        tp.publish_rows("trade", [{**row, "time": day1_noon + i} for i in range(10)])
        # early: tomorrow's time (within max_future_seconds of the close), today's log
        early = int(dt.datetime(2026, 11, 23, 0, 0, 30, tzinfo=dt.UTC).timestamp()) * 10**9
        tp.publish_rows("trade", [{**row, "time": early, "price": 9.0}])
        tp.flush()
        clock.advance(24 * 3600)
        roll_day(settings, catalog, clock)
        tp.publish_rows("trade", [{**row, "time": day1_noon + 100, "price": 5.0}])  # late: yesterday's time
        tp.publish_rows("trade", [{**row, "time": day2_noon + i} for i in range(5)])
        tp.flush()
        clock.advance(24 * 3600)
        roll_day(settings, catalog, clock)
        wait_published(settings, [("trade", DAY1), ("trade", DAY2)])
    day1 = partition(store, "trade", DAY1)
    day2 = partition(store, "trade", DAY2)
    assert day1.num_rows == 11 and day2.num_rows == 6
    assert 9.0 in day1.column("price").to_pylist() and 5.0 in day2.column("price").to_pylist()
    m2 = store.manifest("trade", DAY2)
    assert m2.time_min == day1_noon + 100  # the manifest shows the late row's time
    assert check_partition(settings, catalog, store, "trade", DAY2) == 6


def test_backfill_and_ls_commands(settings, catalog, capsys, monkeypatch):
    """`hdb backfill` writes a past day from the log (idempotent, --force rewrites); `hdb ls` lists it."""
    import argparse

    from sinks.cli import add_commands

    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    with Tickerplant(settings, catalog) as tp:
        publish_day(tp, SyntheticMarket(syms=10, seed=6, clock=clock), 2000)
    clock.advance(24 * 3600)
    roll_day(settings, catalog, clock)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    common.add_argument("--data-dir")
    common.add_argument("--kafka-port", type=int)
    parser = argparse.ArgumentParser(prog="tickplant")
    add_commands(parser.add_subparsers(dest="command", required=True), common)
    for key, value in plant_env(settings).items():
        if key.startswith("TICKPLANT_"):
            monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(list(argv))
        code = args.func(args)
        return code, capsys.readouterr().out

    code, out = run("hdb", "ls")
    assert code == 0 and "no partitions" in out
    code, out = run("hdb", "backfill", "--table", "trade", "--date", DAY1.isoformat())
    assert code == 0 and "published" in out
    store = HdbStore.from_settings(settings)
    first = store.manifest("trade", DAY1)
    check_partition(settings, catalog, store, "trade", DAY1)
    assert DAY1 in published(settings)["trade"]
    code, out = run("hdb", "backfill", "--table", "trade", "--date", DAY1.isoformat())
    assert code == 0 and "already in the HDB" in out
    code, out = run("hdb", "backfill", "--table", "trade", "--date", DAY1.isoformat(), "--force")
    rewritten = store.manifest("trade", DAY1)
    assert code == 0 and rewritten.written_at != first.written_at  # really written again...
    assert rewritten.identity() == first.identity()                # ... to the same partition
    code, out = run("hdb", "backfill", "--table", "quote", "--date", DAY1.isoformat())
    code, out = run("hdb", "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["table", "date", "rows"]
    trade_line = next(line for line in lines if line.startswith("trade"))
    assert DAY1.isoformat() in trade_line and f"{first.rows:,}" in trade_line
    assert trade_line.split()[-2:] == ["yes", "backfill"]  # each sym's latest row kept apart; who wrote it
    assert any(line.startswith("quote") for line in lines)
    from sinks.backfill import BackfillError

    with pytest.raises(BackfillError, match="open day"):
        run("hdb", "backfill", "--table", "trade", "--date", DAY2.isoformat())
