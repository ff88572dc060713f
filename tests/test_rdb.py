"""The RDB on a real broker with real RocksDB: contents, crashes, scaling, rollover, queries."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict

import pyarrow as pa
import pytest
from procs import BackgroundFeed, Worker, wait_until

from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from streams.client import RdbClientError
from tickplant.clock import ManualClock

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
TODAY = "2026-11-22"


@pytest.fixture
def workers(settings, tmp_path):
    started: list[Worker] = []

    def make(node_id: str) -> Worker:
        worker = Worker(settings, node_id, tmp_path).start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture
def day(settings, catalog):
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    return clock


def as_rows(table: pa.Table) -> list[dict]:
    table = table.set_column(0, "time", table.column("time").cast(pa.int64()))
    return table.to_pylist()


def by_sym(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        out[row["sym"]].append(row)
    return dict(out)


def total(worker: Worker, table: str, date: str = TODAY) -> int:
    return sum(worker.client.count(table, date=date).values())


def assert_exact(worker: Worker, table: str, published: list[dict], date: str = TODAY) -> None:
    got = as_rows(worker.client.rows(table, date=date))
    assert len(got) == len(published)
    assert by_sym(got) == by_sym(published)  # same rows, each sym in publish order, no duplicates


def test_exact_contents_after_ingest_both_modes(settings, catalog, day, workers):
    market = SyntheticMarket(syms=20, seed=1, clock=day)
    trades, quotes = market.events(6000)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades[: len(trades) // 2])
        tp.publish_rows("quote", quotes)
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", trades[len(trades) // 2:])
    worker = workers("w1")
    worker.wait_serving()
    wait_until(lambda: total(worker, "trade") == len(trades) and total(worker, "quote") == len(quotes),
               60, "the RDB to hold every row", worker.log_tail)
    assert_exact(worker, "trade", trades)
    assert_exact(worker, "quote", quotes)
    status = worker.client.status()
    assert sorted(status["tables"]["trade"]["partitions"]) == list(range(settings.partitions))
    assert status["tables"]["trade"]["dates"][TODAY]["rows"] == len(trades)


def test_queries_by_sym_time_range_columns_and_last(settings, catalog, day, workers):
    rows = [
        {"time": T0 + i * 1000, "sym": sym, "price": float(i), "size": i, "exchange": "N", "cond": ""}
        for i in range(100) for sym in ("AAPL", "MSFT", "IBM")
    ]
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", rows)
    worker = workers("w1")
    worker.wait_serving()
    wait_until(lambda: total(worker, "trade") == len(rows), 60, "ingest", worker.log_tail)
    client = worker.client

    window = as_rows(client.rows("trade", ["AAPL", "IBM"], start=T0 + 10_000, end=T0 + 20_000))
    assert sorted({r["sym"] for r in window}) == ["AAPL", "IBM"]
    assert sorted({r["time"] for r in window}) == [T0 + i * 1000 for i in range(10, 20)]  # [start, end)
    assert len(window) == 20

    narrow = client.rows("trade", ["MSFT"], columns=["time", "price"])
    assert narrow.column_names == ["time", "price"]
    assert narrow.num_rows == 100

    last = as_rows(client.last("trade", ["AAPL", "MSFT"]))
    assert sorted((r["sym"], r["price"]) for r in last) == [("AAPL", 99.0), ("MSFT", 99.0)]
    assert client.count("trade", ["IBM"]) == {"IBM": 100}
    assert client.rows("trade", ["NOPE"]).num_rows == 0

    with pytest.raises(RdbClientError, match="unknown column"):
        client.rows("trade", ["AAPL"], columns=["colour"])
    with pytest.raises(RdbClientError, match="unknown table 'trades'"):
        client.rows("trades")


def test_kill_9_mid_stream_then_restart_exact_and_no_duplicates(settings, catalog, day, workers):
    market = SyntheticMarket(syms=15, seed=3, clock=day)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        with BackgroundFeed(tp, market, events=300) as feed:
            first = workers("w1")
            first.wait_serving()
            wait_until(lambda: total(first, "trade") > 2000, 60, "ingest to start", first.log_tail)
            first.kill9()
            time.sleep(1.0)  # rows keep arriving while it is down
            second = workers("w1")  # the same node, its shards on disk
            started = time.monotonic()
            second.wait_serving()
            serving_after = time.monotonic() - started
            time.sleep(1.0)
        tp.flush()
    published = feed.published["trade"]
    wait_until(lambda: total(second, "trade") == len(published), 90, "catch-up",
               lambda: f"{total(second, 'trade')} of {len(published)}")
    assert_exact(second, "trade", published)
    assert serving_after < 30


def test_scale_1_to_3_to_1_under_load_exact(settings, catalog, day, workers):
    market = SyntheticMarket(syms=30, seed=5, clock=day)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        with BackgroundFeed(tp, market, tables=("quote",)) as feed:
            w1 = workers("w1")
            w1.wait_serving()
            wait_until(lambda: total(w1, "quote") > 1000, 60, "w1 ingesting", w1.log_tail)
            w2, w3 = workers("w2"), workers("w3")
            w2.wait_serving()
            w3.wait_serving()
            # the load spreads: every partition owned once, none of the three holding more than its
            # share (Faust's sticky assignor may leave the last to join with none when the two
            # others already hold two of four each: 2-2-0 spreads the load as well as 2-1-1)
            share = -(-settings.partitions // 3)

            def spread() -> bool:
                held = [w.client.status()["tables"].get("quote", {}).get("partitions", []) for w in (w1, w2, w3)]
                return (sorted(p for parts in held for p in parts) == list(range(settings.partitions))
                        and max(map(len, held)) <= share)

            wait_until(spread, 90, "the partitions spread over three",
                       lambda: str([w.client.status()["tables"] for w in (w1, w2, w3)]))
            time.sleep(1.0)
            w2.stop()
            w3.kill9()
            wait_until(lambda: len(w1.client.status()["tables"].get("quote", {}).get("partitions", []))
                       == settings.partitions,
                       90, "w1 to own every partition again", w1.log_tail)
        tp.flush()
    published = feed.published["quote"]
    wait_until(lambda: total(w1, "quote") == len(published), 90, "catch-up",
               lambda: f"{total(w1, 'quote')} of {len(published)}")
    assert_exact(w1, "quote", published)


def test_day_rollover_with_rows_in_flight(settings, catalog, day, workers):
    market = SyntheticMarket(syms=10, seed=7, clock=day)
    worker = workers("w1")
    worker.wait_serving()
    with Tickerplant(settings, catalog, mode="batch") as tp:
        with BackgroundFeed(tp, market) as feed:
            time.sleep(1.5)
            day.advance(15 * 3600)
            marker = roll_day(settings, catalog, day)
            time.sleep(1.5)
        tp.flush()
    published = feed.published["trade"]
    from ingest.replay import replay_rows

    closed = list(replay_rows(settings, "trade", dt.date(2026, 11, 22), catalog=catalog))
    opened = list(replay_rows(settings, "trade", catalog=catalog))
    assert closed and opened and len(closed) + len(opened) == len(published)
    assert marker.next.isoformat() == "2026-11-23"
    wait_until(lambda: total(worker, "trade", "2026-11-23") == len(opened), 60, "the new day", worker.log_tail)
    wait_until(lambda: total(worker, "trade", TODAY) == len(closed), 60, "the closed day", worker.log_tail)
    assert_exact(worker, "trade", closed, TODAY)
    assert_exact(worker, "trade", opened, "2026-11-23")
    dates = worker.client.status()["tables"]["trade"]["dates"]
    assert dates[TODAY]["status"] == "closed" and dates["2026-11-23"]["status"] == "open"


def test_any_worker_answers_for_every_sym_by_forwarding_to_the_owner(settings, catalog, day, workers):
    market = SyntheticMarket(syms=24, seed=11, clock=day)
    trades, _ = market.events(3000)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
    w1, w2 = workers("w1"), workers("w2")
    w1.wait_serving()
    w2.wait_serving()

    def split_and_complete() -> bool:
        mine = [set(w.client.status()["tables"].get("trade", {}).get("partitions", [])) for w in (w1, w2)]
        return (all(mine) and not (mine[0] & mine[1])
                and total(w1, "trade") == len(trades) and total(w2, "trade") == len(trades))

    wait_until(split_and_complete, 90, "two workers sharing the partitions, metadata exchanged",
               lambda: str([w.client.status()["tables"] for w in (w1, w2)]))
    for worker in (w1, w2):
        assert_exact(worker, "trade", trades)  # all syms, half of them forwarded
        some = ["AAPL", "MSFT", "IBM", "GOOG"]
        got = as_rows(worker.client.rows("trade", some))
        assert by_sym(got) == {s: r for s, r in by_sym(trades).items() if s in some}
        assert len(as_rows(worker.client.last("trade"))) == 24


def test_a_day_the_hdb_published_is_dropped(settings, catalog, day, workers):
    import json

    from confluent_kafka import Producer

    from ingest.eod import CONTROL_KEY
    from ingest.topics import TopicNames

    market = SyntheticMarket(syms=6, seed=13, clock=day)
    with Tickerplant(settings, catalog) as tp:
        tp.publish_rows("trade", market.events(500)[0])
    day.advance(15 * 3600)
    roll_day(settings, catalog, day)
    with Tickerplant(settings, catalog) as tp:
        fresh = market.events(200)[0]
        tp.publish_rows("trade", fresh)
    worker = workers("w1")
    worker.wait_serving()
    wait_until(lambda: total(worker, "trade", "2026-11-23") == len(fresh), 60, "ingest", worker.log_tail)
    assert total(worker, "trade", TODAY) > 0
    producer = Producer(settings.kafka_config())
    producer.produce(TopicNames(settings.topic_prefix).control, key=CONTROL_KEY,
                     value=json.dumps({"kind": "published", "table": "trade", "date": TODAY}).encode())
    producer.flush(10)
    wait_until(lambda: total(worker, "trade", TODAY) == 0, 30, "the published day to be dropped", worker.log_tail)
    assert TODAY not in worker.client.status()["tables"]["trade"]["dates"]
    assert_exact(worker, "trade", fresh, "2026-11-23")


# -- hot-hot replicas -----------------------------------------------------------


@pytest.fixture
def replicas(settings, tmp_path):
    started: list[Worker] = []

    def make(node_id: str, replica: str) -> Worker:
        worker = Worker(settings, node_id, tmp_path, replica=replica).start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


def partitions_of(worker: Worker, table: str) -> set[int]:
    return set(worker.client.status()["tables"].get(table, {}).get("partitions", []))


def test_two_replicas_each_hold_everything_and_one_survives_the_other(settings, catalog, day, replicas):
    market = SyntheticMarket(syms=24, seed=17, clock=day)
    trades, _ = market.events(3000)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
    a1 = replicas("a1", "a")
    b1, b2 = replicas("b1", "b"), replicas("b2", "b")
    for worker in (a1, b1, b2):
        worker.wait_serving()
    everything = set(range(settings.partitions))

    def copies_complete() -> bool:
        mine = [partitions_of(w, "trade") for w in (b1, b2)]
        return (partitions_of(a1, "trade") == everything  # replica a: one worker, every partition
                and all(mine) and not (mine[0] & mine[1]) and mine[0] | mine[1] == everything
                and all(total(w, "trade") == len(trades) for w in (a1, b1, b2)))

    wait_until(copies_complete, 120, "replica a (1 worker) and replica b (2 workers) each holding every row",
               lambda: str([(w.node_id, w.client.status()["tables"]) for w in (a1, b1, b2)]))
    for worker in (a1, b1, b2):
        assert_exact(worker, "trade", trades)
    status = {w.node_id: w.client.status() for w in (a1, b1, b2)}
    assert [status[n]["replica"] for n in ("a1", "b1", "b2")] == ["a", "b", "b"]
    assert status["a1"]["load"]["queries"] > 0 and status["a1"]["load"]["inflight_queries"] >= 0
    # independent copies on disk: the default replica where it always was, b under rdb/b
    plant = settings.data_dir.resolve()
    assert (plant / "rdb" / "trade").is_dir() and (plant / "rdb" / "b" / "trade").is_dir()

    a1.kill9()  # its metadata is still fresh: a worker of b that forwarded across replicas would fail now
    more, _ = market.events(2000)
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", more)
    published = trades + more
    wait_until(lambda: all(total(w, "trade") == len(published) for w in (b1, b2)), 60,
               "replica b to take the new rows with a dead", lambda: str([total(w, "trade") for w in (b1, b2)]))
    for worker in (b1, b2):
        assert_exact(worker, "trade", published)
        assert len(as_rows(worker.client.last("trade"))) == 24


def test_replica_names_are_checked(settings):
    from streams.replicas import check_replica, group_id, shard_path

    assert group_id(settings) == f"{settings.topic_prefix}tickplant-rdb"
    assert group_id(settings, "b") == f"{settings.topic_prefix}tickplant-rdb-b"
    assert shard_path(settings, "trade", 1, "b").parts[-4:] == ("rdb", "b", "trade", "p001")
    with pytest.raises(ValueError, match="replica name 'B!'"):
        check_replica("B!")
    with pytest.raises(ValueError, match="'trade' is taken"):
        check_replica("trade", ["trade", "quote"])


# -- the shard's in-memory tail (zero-latency path), on real RocksDB ------------------


def test_shard_tail_is_queryable_at_once_and_exactly_once_on_disk(catalog, tmp_path):
    from streams.shard import SMALL_CHUNK_ROWS, Resources, Shard

    schema = catalog["trade"]
    rows = [{"time": T0 + i, "sym": ("AAPL", "IBM")[i % 2], "price": float(i), "size": i, "exchange": "N",
             "cond": ""} for i in range(2 * SMALL_CHUNK_ROWS)]
    resources = Resources(cache_bytes=8 << 20, write_buffer_bytes=8 << 20)
    shard = Shard(tmp_path / "p000", resources)
    for offset in range(10):  # ten one-row messages: the tail
        assert shard.apply(offset, TODAY, schema.to_arrow(rows[offset:offset + 1]), defer=True)
    assert (shard.applied, shard.durable) == (9, -1)
    assert not shard.apply(5, TODAY, schema.to_arrow(rows[5:6]), defer=True)  # read again: skipped
    seen = pa.concat_tables(shard.read(TODAY, ["AAPL"]))
    assert seen.column("price").to_pylist() == [float(i) for i in range(0, 10, 2)]
    assert shard.last(TODAY, "IBM").column("price").to_pylist() == [9.0]
    assert {s: st.rows for s, st in shard.sym_stats(TODAY).items()} == {"AAPL": 5, "IBM": 5}
    assert shard.tail_due(now=time.monotonic() + 1)
    # a large run is written at once, after the tail: the log order holds on disk
    assert shard.apply(10, TODAY, schema.to_arrow(rows[10:]), defer=True)
    assert shard.durable == 10
    shard.close()
    again = Shard(tmp_path / "p000", resources)
    assert again.applied == 10
    got = pa.concat_tables(again.read(TODAY, ["AAPL", "IBM"])).column("price").to_pylist()
    assert got == [r["price"] for r in rows if r["sym"] == "AAPL"] + [r["price"] for r in rows if r["sym"] == "IBM"]
    assert {s: st.rows for s, st in again.sym_stats(TODAY).items()} == {"AAPL": SMALL_CHUNK_ROWS,
                                                                        "IBM": SMALL_CHUNK_ROWS}
    assert again.days[TODAY] == "open"
    again.close()


def test_latency_sample_keeps_the_latest_values_in_its_ring():
    import numpy as np

    from streams.latency import LatencySample

    sample = LatencySample(size=8)
    assert sample.percentiles() is None
    sample.add(np.arange(1, 6) * 1_000_000)  # 1..5 ms
    sample.add(np.arange(6, 12) * 1_000_000)  # 6..11 ms: 1, 2, 3 fall out
    got = sample.percentiles()
    assert got["n"] == 8 and got["max"] == 11.0 and got["p50"] == 7.5
    assert sample.percentiles(recent=3) == {"p50": 10.0, "p90": 10.8, "p99": 10.98, "max": 11.0, "n": 3}
    sample.reset()
    sample.add(2_000_000)
    assert sample.percentiles()["n"] == 1 and sample.percentiles()["p99"] == 2.0


def test_shard_last_row_is_kept_until_the_sym_is_written_again(catalog, tmp_path):
    from streams.shard import Resources, Shard

    schema = catalog["trade"]

    def run(first: int, n: int, sym: str = "AAPL") -> pa.Table:
        return schema.to_arrow([{"time": T0 + i, "sym": sym, "price": float(i), "size": i, "exchange": "N",
                                 "cond": ""} for i in range(first, first + n)])

    shard = Shard(tmp_path / "p000", Resources(cache_bytes=8 << 20, write_buffer_bytes=8 << 20))
    shard.apply(0, TODAY, run(0, 1000))
    first = shard.last(TODAY, "AAPL")
    assert first.column("price").to_pylist() == [999.0]
    assert first.get_total_buffer_size() < 1000  # a one-row copy, not a view of the 1000-row chunk
    assert shard.last(TODAY, "AAPL") is first  # kept: asked again, not read again
    shard.apply(1, TODAY, run(1000, 5))  # written to disk: the kept row is stale now
    assert shard.last(TODAY, "AAPL").column("price").to_pylist() == [1004.0]
    shard.apply(2, TODAY, run(2000, 1, "IBM"))  # another sym's rows leave AAPL's alone
    assert shard.last(TODAY, "AAPL").column("price").to_pylist() == [1004.0]
    assert shard.last(TODAY, "IBM").column("price").to_pylist() == [2000.0]
    shard.apply(3, TODAY, run(3000, 1), defer=True)  # in the tail: answered from there
    assert shard.last(TODAY, "AAPL").column("price").to_pylist() == [3000.0]
    shard.flush()
    assert shard.last(TODAY, "AAPL").column("price").to_pylist() == [3000.0]
    shard.drop_day(TODAY)
    assert shard.last(TODAY, "AAPL") is None
    shard.close()


def test_shard_read_gives_each_sym_its_rows_in_log_order_disk_then_tail(catalog, tmp_path):
    """One sweep over a day's keys: syms whose names prefix each other stay apart, another
    day's rows stay out, each sym's chunks come in log order with its tail rows last."""
    from streams.shard import Resources, Shard

    schema = catalog["trade"]

    def run(prices: list[int], sym: str) -> pa.Table:
        return schema.to_arrow([{"time": T0 + p, "sym": sym, "price": float(p), "size": 1, "exchange": "N",
                                 "cond": ""} for p in prices])

    shard = Shard(tmp_path / "p000", Resources(cache_bytes=8 << 20, write_buffer_bytes=8 << 20))
    other_day = (dt.date.fromisoformat(TODAY) + dt.timedelta(days=1)).isoformat()
    shard.apply(0, TODAY, run([1, 2], "AAPL"))
    shard.apply(1, TODAY, run([3], "AA"))
    shard.apply(2, other_day, run([99], "AAPL"))
    shard.apply(3, TODAY, run([4, 5], "AAPL"))
    shard.apply(4, TODAY, run([6], "AAPL"), defer=True)  # the tail
    shard.apply(5, TODAY, run([7], "IBM"), defer=True)  # a sym only in the tail

    def prices(tables: list[pa.Table]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for t in tables:
            for sym, price in zip(t.column("sym").to_pylist(), t.column("price").to_pylist(), strict=True):
                out.setdefault(sym, []).append(price)
        return out

    whole = {"AA": [3.0], "AAPL": [1.0, 2.0, 4.0, 5.0, 6.0], "IBM": [7.0]}
    assert prices(shard.read(TODAY, None)) == whole
    assert prices(shard.read(TODAY, ["AAPL"])) == {"AAPL": whole["AAPL"]}
    assert prices(shard.read(TODAY, ["AA", "IBM", "MSFT"])) == {"AA": [3.0], "IBM": [7.0]}
    assert prices(shard.read(other_day, None)) == {"AAPL": [99.0]}
    shard.flush()
    assert prices(shard.read(TODAY, None)) == whole
    shard.close()
