"""The real-time engine (streams/cep) on a real broker: analytics against pandas, bars,
quiet syms, the idle timer, kill -9 without double counting, replay, end of day."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import pandas as pd
import pytest
from procs import BackgroundFeed, Cep, wait_until

from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.publisher import Tickerplant
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import partition_for
from streams.cep.analytics import AnalyticError, analytics_schema, check_schema
from streams.cep.bars import BarBook
from streams.cep.outbox import SEQ_HEADER
from streams.cep.store import PartitionStore
from streams.cep.topics import CepTopics
from streams.cep.worker import state_path
from tickplant.clock import ManualClock
from tickplant.config import REPO_ROOT

# a day that is not today's, so the idle timer (live day only) never closes bars in these tests
T0 = int(dt.datetime(2030, 1, 2, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY1, DAY2 = "2030-01-02", "2030-01-03"
S = 1_000_000_000
W = 60 * S  # default bar width


@pytest.fixture
def ceps(settings, tmp_path):
    started: list[Cep] = []

    def make(node_id: str, *extra: str) -> Cep:
        cep = Cep(settings, node_id, tmp_path, *extra).start()
        started.append(cep)
        return cep

    yield make
    for cep in started:
        cep.stop()


@pytest.fixture
def day(settings, catalog):
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    return clock


def derived(settings, kind: str, engine: str = "main") -> list[dict[str, Any]]:
    """Every committed record of a derived topic, partition by partition in log order, with its seq."""
    topic = CepTopics(settings, engine).outputs[kind]
    decoder = make_decoder(settings, SchemaCatalog.load(REPO_ROOT / "schemas" / "rte"))
    consumer = make_consumer(settings)
    out = []
    try:
        for p in range(settings.partitions):
            _, high = watermarks(consumer, topic, p)
            for msg in read_ranges(consumer, topic, {p: (0, high)}):
                (row,) = decoder.decode(msg.value())[1]
                assert msg.key() == row["sym"].encode()
                row["_seq"] = int(dict(msg.headers())[SEQ_HEADER])
                row["_partition"] = p
                out.append(row)
    finally:
        consumer.close()
    return out


def log_ends(settings) -> dict[str, dict[str, int]]:
    """The last offset of every trade and quote partition, as the status reports offsets."""
    consumer = make_consumer(settings)
    try:
        return {str(p): {t: watermarks(consumer, f"{settings.topic_prefix}{t}", p)[1] - 1
                         for t in ("trade", "quote")} for p in range(settings.partitions)}
    finally:
        consumer.close()


def wait_caught_up(cep: Cep, timeout: float = 90) -> None:
    """Until the worker's stored offsets reach the end of every input partition."""
    def offsets() -> dict[str, dict[str, int]]:
        status = cep.status()
        if status is None:
            return {}
        return {p: {t: v["offsets"].get(t, -1) for t in ("trade", "quote")}
                for p, v in status["partition_state"].items()}

    ends = log_ends(cep.settings)
    wait_until(lambda: offsets() == ends, timeout, "the CEP to read the whole log",
               lambda: f"{offsets()} of {ends}\n{cep.log_tail()}")


def expected_analytics(trades: list[dict], quotes: list[dict]) -> dict[str, dict[str, Any]]:
    """The analytics recomputed independently with pandas from the published rows."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    t = pd.DataFrame(trades)
    if len(t):
        for sym, g in t.groupby("sym", sort=False):
            last = g.iloc[-1]
            notional = float((g.price * g["size"]).sum())
            out[sym].update(
                last_price=last.price, last_size=int(last["size"]), last_time=int(last.time),
                open=g.price.iloc[0], high=g.price.max(), low=g.price.min(), close=last.price,
                volume=int(g["size"].sum()), notional=notional, trades=len(g), vwap=notional / g["size"].sum())
    q = pd.DataFrame(quotes)
    if len(q):
        for sym, g in q.groupby("sym", sort=False):
            last = g.iloc[-1]
            out[sym].update(bid=last.bid, ask=last.ask, bsize=int(last.bsize), asize=int(last.asize),
                            spread=last.ask - last.bid, mid=(last.bid + last.ask) / 2, quote_time=int(last.time))
    return out


def expected_bars(trades: list[dict], width: int = W) -> dict[tuple[str, int], dict[str, Any]]:
    t = pd.DataFrame(trades)
    t["bucket"] = t.time // width
    out = {}
    for (sym, bucket), g in t.groupby(["sym", "bucket"], sort=False):
        notional = float((g.price * g["size"]).sum())
        out[(sym, bucket * width)] = {"open": g.price.iloc[0], "high": g.price.max(), "low": g.price.min(),
                                      "close": g.price.iloc[-1], "volume": int(g["size"].sum()),
                                      "trades": len(g), "vwap": notional / g["size"].sum()}
    return out


def close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9)
    return a == b


def assert_analytics(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want)
    for sym, fields in want.items():
        for name, value in fields.items():
            assert close(got[sym][name], value), (sym, name, got[sym][name], value)


def assert_bars(closed: list[dict], open_bars: list[dict], want: dict) -> None:
    keys = [(b["sym"], b["time"]) for b in closed]
    assert len(keys) == len(set(keys)), "a bar was published twice"
    got = {(b["sym"], b["time"]): b for b in closed + open_bars}
    assert len(got) == len(closed) + len(open_bars), "a closed bar is also reported open"
    assert sorted(got) == sorted(want)
    for key, fields in want.items():
        for name, value in fields.items():
            assert close(got[key][name], value), (key, name, got[key][name], value)


def market_minutes(day: ManualClock, seed: int, steps: int, syms: int = 12, events: int = 150,
                   step_seconds: float = 7.3) -> tuple[list[dict], list[dict]]:
    market = SyntheticMarket(syms=syms, seed=seed, clock=day)
    trades: list[dict] = []
    quotes: list[dict] = []
    for _ in range(steps):
        day.advance(step_seconds)
        t, q = market.events(events)
        trades += t
        quotes += q
    return trades, quotes


def open_bars(cep: Cep) -> list[dict]:
    return [b for b in cep.get("/cep/v1/bars")["bars"] if b["is_open"]]


# -- units: the registry and the bar book -------------------------------------------


def test_schema_file_matches_the_registry():
    avro = json.loads((REPO_ROOT / "schemas" / "rte" / "analytics.avsc").read_text())
    assert avro == analytics_schema()
    broken = {**avro, "fields": [f for f in avro["fields"] if f["name"] != "vwap"]}
    with pytest.raises(AnalyticError, match="missing: vwap"):
        check_schema(broken, "analytics.avsc")


def test_bar_boundaries_and_watermark_in_the_book():
    book = BarBook(W, 0)
    rows = [
        {"time": T0 - T0 % W + 1, "sym": "A", "price": 10.0, "size": 1},
        {"time": T0 - T0 % W + W - 1, "sym": "A", "price": 11.0, "size": 2},
        {"time": T0 - T0 % W + W, "sym": "A", "price": 12.0, "size": 3},  # exactly on the boundary: next bar
    ]
    closed = book.add(rows, DAY1)
    assert [(b["time"], b["trades"], b["close"], b["closed_by"]) for b in closed] == \
        [(T0 - T0 % W, 2, 11.0, "watermark")]
    # a late trade for the closed bar is counted, not folded into a closed bar
    assert book.add([{"time": T0 - T0 % W + 5, "sym": "A", "price": 1.0, "size": 1}], DAY1) == []
    assert book.late == {"A": 1}


def test_output_encoder_writes_fastavros_bytes():
    """The engine's outputs go through the log's one row writer (ingest.framing.encode_row, its
    compiled path in ingest/rowcode.py), checked against fastavro itself, byte for byte: nulls,
    negative and 10-byte varints, long and non-ASCII strings; values of another type than the
    field's go to fastavro, which converts or rejects them as before."""
    import io

    import fastavro

    from ingest.framing import codec_for, encode_row

    def fastavros(table, row):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(table.avro), row)
        return table_header(table) + out.getvalue()

    def table_header(table):
        return b"\xc3\x01" + table.fingerprint

    rte = SchemaCatalog.load(REPO_ROOT / "schemas" / "rte")
    analytics = rte["analytics"]
    names = [f["name"] for f in analytics.avro["fields"]]
    record = {name: None for name in names} | {"time": T0, "sym": "ÅÄÖ" * 50, "date": DAY1}
    records = [
        record,
        record | {"open": -1.5, "bsize": -(1 << 63), "asize": (1 << 63) - 1, "volume": 0, "trades": 63,
                  "last_time": -64, "quote_time": 64, "notional": float("inf"), "vwap": -0.0},
        record | {"volume": 1 << 40, "trades": 8191, "last_size": -8193},
    ]
    for r in records:
        assert codec_for(analytics).exact(r) is not None  # the compiled path, not fastavro
        assert encode_row(analytics, r) == fastavros(analytics, r)
    bars = rte["bars"]
    bar = {"time": T0, "sym": "IBM", "date": DAY1, "end": T0 + W, "open": 1.0, "high": 2.0, "low": 0.5,
           "close": 1.5, "volume": 10, "trades": 2, "vwap": None, "closed_by": "next"}
    for b in (bar, bar | {"vwap": 1.25}):
        assert codec_for(bars).exact(b) is not None
        assert encode_row(bars, b) == fastavros(bars, b)
    # an int in a double field: fastavro writes float(value); a str in a long: fastavro refuses it
    assert codec_for(bars).exact(bar | {"open": 1}) is None
    assert encode_row(bars, bar | {"open": 1}) == fastavros(bars, bar | {"open": 1.0})
    with pytest.raises(Exception, match="volume|int|long"):
        encode_row(bars, bar | {"volume": "ten"})
    with pytest.raises(Exception, match="sym"):
        encode_row(bars, {k: v for k, v in bar.items() if k != "sym"})


def test_decode_many_gives_decodes_rows_and_errors(catalog):
    """The reader's run decoder (ingest.decoder.Decoder.decode_many) against decode() message by
    message: rows of both tables, a block, an evolved writer schema, and each kind of bad message
    (corrupt body, trailing bytes, truncated, unknown fingerprint, unknown magic, empty)."""
    from ingest.decoder import DecodeError, Decoder
    from ingest.framing import encode_block, encode_row
    from ingest.schemas import TableSchema

    trades, quotes = SyntheticMarket(syms=5, seed=4, clock=ManualClock(T0)).events(40)
    evolved_avro = {**catalog["trade"].avro, "fields": [*catalog["trade"].avro["fields"],
                                                        {"name": "venue", "type": "string", "default": "X"}]}
    evolved = TableSchema.from_dict(evolved_avro, "evolved trade")
    decoder = Decoder(catalog, lambda fp: evolved_avro if fp == evolved.fingerprint else None)
    good = encode_row(catalog["trade"], trades[0])
    values = [
        *(encode_row(catalog["trade"], r) for r in trades[:3]),
        good[:-3] + b"\xff\xff\xff",                             # corrupt body
        good + b"\x00",                                         # a trailing byte
        good[:12],                                              # truncated
        *(encode_row(catalog["quote"], q) for q in quotes[:3]),  # another table's schema mid-run
        encode_block(catalog["trade"], trades[3:6]),
        encode_row(evolved, {**trades[6], "venue": "Y"}),        # resolved to the reader's schema
        b"\xc3\x01" + b"\x00" * 8 + good[10:],                   # unknown writer fingerprint
        b"\x01\x02" + good[2:],                                  # unknown magic
        b"",
        encode_row(catalog["trade"], trades[7]),
    ]
    want_rows: list[dict] = []
    want_errors: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        try:
            want_rows.extend(decoder.decode(value)[1])
        except DecodeError as exc:
            want_errors.append((i, str(exc)))
    rows, errors = decoder.decode_many(values)
    assert rows == want_rows and len(rows) == 3 + 3 + 3 + 1 + 1
    assert [(i, str(e)) for i, e in errors] == want_errors
    assert [i for i, _ in errors] == [3, 4, 5, 11, 12, 13]
    assert rows[-2]["sym"] == trades[6]["sym"] and "venue" not in rows[-2]


# -- the worker ---------------------------------------------------------------------


def test_analytics_and_bars_equal_pandas(settings, catalog, day, ceps):
    trades, quotes = market_minutes(day, seed=1, steps=40)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades[: len(trades) // 2])
        tp.publish_rows("quote", quotes)
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", trades[len(trades) // 2:])
    cep = ceps("cep-1")
    wait_caught_up(cep)
    assert_analytics(cep.get("/cep/v1/analytics")["analytics"], expected_analytics(trades, quotes))
    view = cep.get("/cep/v1/analytics?syms=AAPL,NOPE")
    assert list(view["analytics"]) == ["AAPL"] and view["analytics"]["AAPL"]["date"] == DAY1
    assert view["unknown"] == ["NOPE"]  # one worker holds every partition: never traded, said so
    with pytest.raises(urllib.error.HTTPError, match="400"):
        cep.get("/cep/v1/bars?syms=AAPL&start=yesterday")
    closed = derived(settings, "bars")
    assert len(closed) > 12 * 3
    assert_bars(closed, open_bars(cep), expected_bars(trades))
    # the bars view: a time range [start, end) of one sym, closed bars then its open one
    aapl = cep.get(f"/cep/v1/bars?syms=AAPL&start={T0 + W}&end={T0 + 3 * W}")["bars"]
    assert aapl and all(T0 + W <= b["time"] < T0 + 3 * W and b["sym"] == "AAPL" for b in aapl)
    # the derived analytics topic: the last record per sym is the view's
    last: dict[str, dict] = {}
    for record in derived(settings, "analytics"):
        last[record["sym"]] = record
    assert_analytics(last, expected_analytics(trades, quotes))


def same_partition_syms(n: int) -> tuple[str, str]:
    by_part: dict[int, list[str]] = defaultdict(list)
    for i in range(100):
        sym = f"S{i}"
        by_part[partition_for(sym, n)].append(sym)
        if len(by_part[partition_for(sym, n)]) == 2:
            return tuple(by_part[partition_for(sym, n)])  # type: ignore[return-value]
    raise AssertionError("no two syms share a partition")


def test_boundary_tick_and_quiet_sym_bar_closes(settings, catalog, day, ceps):
    a, b = same_partition_syms(settings.partitions)
    m0 = T0 - T0 % W
    rows = [
        {"time": m0 + 1, "sym": a, "price": 10.0, "size": 100},
        {"time": m0 + W - 1, "sym": a, "price": 11.0, "size": 100},
        {"time": m0 + W, "sym": a, "price": 12.0, "size": 100},         # exactly on the boundary: next bar
        {"time": m0 + 2 * W + S // 2, "sym": b, "price": 50.0, "size": 1},  # before a's bar end + grace
    ]
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", [{**r, "exchange": "N", "cond": ""} for r in rows])
    cep = ceps("cep-1", "--grace-seconds", "1")
    wait_caught_up(cep)
    # the input is all read: what it closes is out with a's first bar (the next tick closed it),
    # and b's tick, inside a's second bar's grace, closes nothing more
    wait_until(lambda: derived(settings, "bars"), 30, "a's first bar")
    bars = derived(settings, "bars")
    assert [(x["sym"], x["time"], x["trades"], x["open"], x["close"], x["closed_by"]) for x in bars] == [
        (a, m0, 2, 10.0, 11.0, "next")]
    # a goes quiet; b trades past a's bar end + grace: a's bar closes by the watermark
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", [{"time": m0 + 2 * W + 2 * S, "sym": b, "price": 51.0, "size": 1,
                                   "exchange": "N", "cond": ""}])
    wait_caught_up(cep)
    wait_until(lambda: len(derived(settings, "bars")) == 2, 30, "the quiet sym's bar to close")
    quiet = derived(settings, "bars")[1]
    assert (quiet["sym"], quiet["time"], quiet["end"], quiet["trades"], quiet["closed_by"]) == \
        (a, m0 + W, m0 + 2 * W, 1, "watermark")
    assert [(x["sym"], x["trades"]) for x in open_bars(cep)] == [(b, 2)]


def test_idle_timer_closes_bars_on_the_live_day(settings, catalog, ceps):
    open_first_day(settings, catalog)  # today, on the system clock
    cep = ceps("cep-1", "--bar-seconds", "1", "--grace-seconds", "0.2", "--idle-seconds", "0.3")
    wait_until(lambda: cep.status() is not None, 60, "the CEP to serve", cep.log_tail)
    now = time.time_ns()
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", [{"time": now, "sym": "IBM", "price": 100.0, "size": 5, "exchange": "N",
                                   "cond": ""}])
    wait_until(lambda: len(derived(settings, "bars")) == 1, 30, "the idle timer to close the bar", cep.log_tail)
    (bar,) = derived(settings, "bars")
    assert (bar["sym"], bar["time"], bar["trades"], bar["closed_by"]) == ("IBM", now - now % S, 1, "idle")
    assert time.time_ns() >= bar["end"] + S // 5  # not before its end + grace


def test_kill_9_mid_stream_then_restart_exactly_once(settings, catalog, day, ceps):
    market = SyntheticMarket(syms=15, seed=3, clock=day, trade_ratio=0.5)

    class Stepping:  # the feed's clock moves 2 s per batch of events: bars close while it runs
        def now_ns(self) -> int:
            day.advance(2.0)
            return day.now_ns()

    market.clock = Stepping()
    with Tickerplant(settings, catalog, mode="batch") as tp:
        with BackgroundFeed(tp, market, tables=("trade", "quote"), events=100,
                            pause=0.05) as feed:
            first = ceps("cep-1")
            wait_until(lambda: first.rows() > 2000, 90, "the CEP to start applying", first.log_tail)
            first.kill9()
            time.sleep(1.0)  # rows keep arriving while it is down
            second = ceps("cep-1")  # the same node, its state on disk
            wait_until(lambda: second.status() is not None, 90, "the restarted CEP to serve", second.log_tail)
            time.sleep(1.0)
        tp.flush()
    trades, quotes = feed.published["trade"], feed.published["quote"]
    wait_caught_up(second, timeout=120)
    applied = []  # rows this process applied itself (a late rebalance may be under way: wait for it)
    wait_until(lambda: applied.append(second.rows()) or applied[-1] >= 0, 30, "the CEP to serve")
    assert 0 < applied[-1] < len(trades) + len(quotes)  # resumed from its stored state, not from scratch
    assert_analytics(second.get("/cep/v1/analytics")["analytics"], expected_analytics(trades, quotes))
    closed = derived(settings, "bars")
    assert len(closed) > 15
    assert_bars(closed, open_bars(second), expected_bars(trades))
    seqs = defaultdict(list)
    for kind in ("bars", "analytics"):
        for record in derived(settings, kind):
            seqs[record["_partition"]].append(record["_seq"])
    for p, values in seqs.items():
        assert sorted(values) == list(range(len(values))), f"partition {p}: outputs missing or doubled"


def test_replay_is_deterministic_and_eod_resets_the_day(settings, catalog, day, ceps):
    day1_trades, day1_quotes = market_minutes(day, seed=7, steps=20)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", day1_trades)
        tp.publish_rows("quote", day1_quotes)
    day.advance(24 * 3600)
    assert roll_day(settings, catalog, day).date.isoformat() == DAY1
    day2_trades, day2_quotes = market_minutes(day, seed=8, steps=10)
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", day2_trades)
        tp.publish_rows("quote", day2_quotes)
    main = ceps("cep-1")
    replay = ceps("cep-2", "--engine", "replay")
    wait_caught_up(main)
    wait_caught_up(replay)

    # day 2's analytics only: the fence restarted them
    got = main.get("/cep/v1/analytics")["analytics"]
    want = expected_analytics(day2_trades, day2_quotes)
    assert_analytics({s: r for s, r in got.items() if s in want}, want)
    assert all(r["date"] == DAY2 for r in got.values())
    # day 1's bars all closed, the last ones by the fence
    bars = derived(settings, "bars")
    first_day = [b for b in bars if b["date"] == DAY1]
    assert_bars(first_day, [], expected_bars(day1_trades))
    assert {b["closed_by"] for b in first_day if b["end"] > max(t["time"] for t in day1_trades)} == {"eod"}
    assert_bars([b for b in bars if b["date"] == DAY2], open_bars(main), expected_bars(day2_trades))

    # two engines from scratch on the same log: the same bars in the same order, the same analytics
    strip = lambda rows: [{k: v for k, v in r.items() if k != "_seq"} for r in rows]  # noqa: E731
    assert strip(derived(settings, "bars", "replay")) == strip(bars)
    assert replay.get("/cep/v1/analytics")["analytics"] == got


def test_outbox_crash_windows_publish_each_output_once(settings, catalog, tmp_path):
    """The two instants a kill -9 can split: after the RocksDB write but before the Kafka
    commit (the outbox is republished), and after the commit but before the store learns of
    it (nothing is republished). In process, with the real broker and RocksDB."""
    from streams.cep.analytics import instances
    from streams.cep.engine import Message, PartitionEngine
    from streams.cep.outbox import PartitionPublisher
    from streams.cep.store import PartitionStore

    topics = CepTopics(settings)
    topics.ensure(settings, catalog)
    rte = SchemaCatalog.load(REPO_ROOT / "schemas" / "rte")
    path = tmp_path / "p000"

    def owner() -> tuple[PartitionEngine, PartitionPublisher, int]:
        store = PartitionStore(path)
        engine = PartitionEngine(store, instances({"trade", "quote"}), rte["bars"], rte["analytics"], W, 0)
        publisher = PartitionPublisher(settings, topics.transactional_id(settings, 0), topics.outputs, 0)
        return engine, publisher, publisher.recover(store)

    def trades(offset: int, minute: int) -> dict[str, list[Message]]:
        row = {"time": T0 + minute * W, "sym": "IBM", "price": 100.0 + minute, "size": 10}
        return {"trade": [Message(offset, [row], DAY1)]}

    engine, publisher, _ = owner()
    publisher.publish(engine.apply(trades(0, 0)), engine.store)
    lost = engine.apply(trades(1, 1))  # closes minute 0's bar: in RocksDB, never sent to Kafka
    assert [o.kind for o in lost] == ["bars", "analytics"]
    engine.store.close()  # "kill -9": the producer is simply abandoned

    engine, publisher, republished = owner()
    assert republished == 2
    assert engine.apply(trades(1, 1)) == []  # the same input again is skipped by offset
    outputs = engine.apply(trades(2, 2))
    publisher.send(outputs)
    publisher.producer.commit_transaction(30)  # committed, but the store is never told
    engine.store.close()

    engine, publisher, republished = owner()
    assert republished == 0
    engine.store.close()
    records = derived(settings, "analytics") + derived(settings, "bars")
    assert sorted(r["_seq"] for r in records) == list(range(5))  # 3 analytics, 2 bars
    assert [(b["time"], b["close"]) for b in derived(settings, "bars")] == [(T0, 100.0), (T0 + W, 101.0)]


def test_committer_thread_commits_every_submitted_output_once_in_order(settings, catalog, tmp_path):
    """The reader hands each read's outputs to the partition's committer and goes on: what was
    submitted meanwhile goes out in one transaction, in sequence order, each output once; the
    committed offsets follow; close() commits what is still queued before letting go."""
    from streams.cep.analytics import instances
    from streams.cep.engine import Message, PartitionEngine
    from streams.cep.outbox import PartitionPublisher
    from streams.cep.store import PartitionStore

    topics = CepTopics(settings)
    topics.ensure(settings, catalog)
    rte = SchemaCatalog.load(REPO_ROOT / "schemas" / "rte")
    store = PartitionStore(tmp_path / "p000")
    engine = PartitionEngine(store, instances({"trade", "quote"}), rte["bars"], rte["analytics"], W, 0)
    publisher = PartitionPublisher(settings, topics.transactional_id(settings, 0), topics.outputs, 0)
    publisher.recover(store)
    committed: list[int | None] = []
    failed: list[BaseException] = []
    publisher.start(store, committed.append, failed.append)
    submitted = 0
    for minute in range(30):  # each read closes the previous minute's bar: a bar and an analytics record
        row = {"time": T0 + minute * W, "sym": "IBM", "price": 100.0 + minute, "size": 10}
        outputs = engine.apply({"trade": [Message(minute, [row], DAY1)]})
        publisher.submit(outputs, dict(store.offsets), row["time"])
        submitted += len(outputs)
    assert publisher.drain(60) and not failed
    assert publisher.offsets == store.offsets == {"trade": 29}
    assert 1 <= publisher.commits <= 30 and len(committed) == publisher.commits
    assert committed[-1] == T0 + 29 * W  # the newest tick of the last transaction
    assert store.published_upto == submitted - 1
    # a read that produced nothing still moves the committed offsets (the status's caught-up view)
    publisher.submit([], {"trade": 30})
    assert publisher.drain(60) and publisher.offsets == {"trade": 30}
    last = engine.apply({"trade": [Message(31, [{"time": T0 + 40 * W, "sym": "IBM", "price": 1.0, "size": 1}],
                                           DAY1)]})
    publisher.submit(last, dict(store.offsets))
    publisher.close()  # commits the queued outputs first
    store.close()
    records = derived(settings, "analytics") + derived(settings, "bars")
    assert sorted(r["_seq"] for r in records) == list(range(submitted + len(last)))
    bars = derived(settings, "bars")
    assert [b["close"] for b in bars] == [100.0 + m for m in range(30)]
    assert [b["_seq"] for b in bars] == sorted(b["_seq"] for b in bars)  # committed in sequence order


def test_conflated_analytics_survive_a_crash_and_bars_are_never_held(tmp_path):
    """Reads applied while the committer is busy (emit=False) write the state but hold the
    analytics records back: the syms wait in the store, so a crash loses none, and the next
    emission gives one record per sym with its latest values. A closed bar is never held."""
    from streams.cep.analytics import instances
    from streams.cep.engine import Message, PartitionEngine
    from streams.cep.store import PartitionStore

    rte = SchemaCatalog.load(REPO_ROOT / "schemas" / "rte")
    decoder = make_decoder_offline()

    def owner() -> PartitionEngine:
        return PartitionEngine(PartitionStore(tmp_path / "p000"), instances({"trade", "quote"}), rte["bars"],
                               rte["analytics"], W, 0)

    def trade(offset: int, sym: str, minute: int, price: float) -> dict[str, list[Message]]:
        return {"trade": [Message(offset, [{"time": T0 + minute * W, "sym": sym, "price": price, "size": 10}],
                                  DAY1)]}

    engine = owner()
    assert [o.kind for o in engine.apply(trade(0, "IBM", 0, 100.0))] == ["analytics"]
    assert engine.apply(trade(1, "IBM", 0, 101.0), emit=False) == []
    assert engine.apply(trade(2, "MSFT", 0, 50.0), emit=False) == []
    held = engine.apply(trade(3, "IBM", 1, 102.0), emit=False)  # closes minute 0's bars: out at once
    assert sorted((o.kind, o.key) for o in held) == [("bars", b"IBM"), ("bars", b"MSFT")]
    assert engine.store.dirty == {"IBM", "MSFT"} and engine.store.offset("trade") == 3
    engine.store.close()  # "kill -9" before the held records went out

    engine = owner()
    assert engine.store.dirty == {"IBM", "MSFT"}
    outputs = engine.emit_pending()
    assert [(o.seq, o.kind, o.key) for o in outputs] == [(3, "analytics", b"IBM"), (4, "analytics", b"MSFT")]
    records = {o.key: decoder.decode(o.value)[1][0] for o in outputs}
    assert (records[b"IBM"]["close"], records[b"IBM"]["trades"], records[b"MSFT"]["close"]) == (102.0, 3, 50.0)
    assert engine.store.dirty == set() and engine.emit_pending() == []
    engine.store.close()
    assert owner().store.dirty == set()


def test_state_keeps_every_float_and_reads_a_store_written_as_json(tmp_path):
    """A NaN price in the log stays NaN in the state after a restart (a fast JSON such as orjson
    would make it null), and a store written before the state was marshalled (JSON values) opens
    as it was."""
    from rocksdict import Options, Rdict

    from streams.cep.store import PartitionStore

    store = PartitionStore(tmp_path / "new")
    state = {"time": 5, "day_ohlc": {"open": math.nan, "high": math.inf, "low": -0.0, "close": 1e-300}}
    store.commit({"trade": 7}, {"trade": DAY1}, {"IBM": state}, {"wm": 3, "open": {"IBM": [1, 2.5, 3.0]}},
                 [], [], dirty={"IBM"})
    store.close()
    again = PartitionStore(tmp_path / "new")
    ohlc = again.syms["IBM"]["day_ohlc"]
    assert math.isnan(ohlc["open"]) and ohlc["high"] == math.inf and math.copysign(1, ohlc["low"]) == -1
    assert ohlc["close"] == 1e-300 and again.bars == {"wm": 3, "open": {"IBM": [1, 2.5, 3.0]}}
    assert again.dirty == {"IBM"} and again.offset("trade") == 7
    again.close()

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    old = Rdict(str(tmp_path / "old"), opts)
    old[b"Moff trade"] = b"41"
    old[b"Mbars"] = json.dumps({"wm": 9, "open": {}, "late": {"IBM": 2}}).encode()
    old[b"Mdirty"] = json.dumps(["MSFT"]).encode()
    old[b"SIBM"] = json.dumps({"time": 8, "volume": {"volume": 300}}).encode()
    old.close()
    store = PartitionStore(tmp_path / "old")
    assert store.syms == {"IBM": {"time": 8, "volume": {"volume": 300}}}
    assert (store.bars["late"], store.dirty, store.offset("trade")) == ({"IBM": 2}, {"MSFT"}, 41)
    store.close()


def make_decoder_offline():
    """A decoder of the rte records that needs no broker (their schemas are local)."""
    from ingest.decoder import Decoder

    return Decoder(SchemaCatalog.load(REPO_ROOT / "schemas" / "rte"))


def test_two_workers_share_the_partitions_under_load(settings, catalog, day, ceps):
    """A second worker joins mid-stream: the partitions are split, state and transactions
    move with them, and together they hold every sym's analytics once, correct."""
    market = SyntheticMarket(syms=20, seed=11, clock=day)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        with BackgroundFeed(tp, market, tables=("trade", "quote"), events=100, pause=0.05) as feed:
            w1 = ceps("cep-1")
            wait_until(lambda: w1.rows() > 1000, 90, "cep-1 applying", w1.log_tail)
            w2 = ceps("cep-2")
            wait_until(lambda: all((s := w.status()) and s["partitions"] for w in (w1, w2)), 90,
                       "both workers to hold partitions", lambda: w1.log_tail() + w2.log_tail())
            time.sleep(1.0)
        tp.flush()
    trades, quotes = feed.published["trade"], feed.published["quote"]
    ends = log_ends(settings)

    def offsets() -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for w in (w1, w2):
            status = w.status() or {"partition_state": {}}
            for p, v in status["partition_state"].items():
                out[p] = {t: v["offsets"].get(t, -1) for t in ("trade", "quote")}
        return out

    wait_until(lambda: offsets() == ends, 120, "the two workers to read the whole log", lambda: str(offsets()))
    parts1, parts2 = set(w1.status()["partitions"]), set(w2.status()["partitions"])
    assert parts1 and parts2 and not parts1 & parts2 and parts1 | parts2 == set(range(settings.partitions))
    got = {**w1.get("/cep/v1/analytics")["analytics"], **w2.get("/cep/v1/analytics")["analytics"]}
    assert_analytics(got, expected_analytics(trades, quotes))
    # a sym asked of the worker that does not hold it is pointed at the one that does
    sym = next(s for s in got if partition_for(s, settings.partitions) in parts2)
    wait_until(lambda: w1.get(f"/cep/v1/analytics?syms={sym}")["elsewhere"] == {sym: w2.url}, 10,
               "cep-1 to learn cep-2's partitions from the metadata topic")
    seqs = defaultdict(list)
    for kind in ("bars", "analytics"):
        for record in derived(settings, kind):
            seqs[record["_partition"]].append(record["_seq"])
    for p, values in seqs.items():
        assert sorted(values) == list(range(len(values))), f"partition {p}: outputs missing or doubled"


def test_a_partition_that_cannot_be_opened_is_tried_again_not_a_crash(settings, catalog, day, ceps):
    """A takeover whose open fails (here: partition 0's state still locked by another owner on
    this host; a broker away does the same to its transactions) leaves the worker up and saying
    why; once the state is free it opens it, reads it from its offsets and misses nothing."""
    held = PartitionStore(state_path(settings, "main", 0))  # the previous owner, not yet let go
    market = SyntheticMarket(syms=12, seed=5, clock=day)
    trades, quotes = market.events(600)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
        tp.publish_rows("quote", quotes)
    cep = ceps("cep-1")

    def unopened() -> dict[str, str]:
        try:
            return cep.get("/cep/v1/status").get("unopened", {})
        except OSError:  # not listening yet
            return {}

    try:
        wait_until(lambda: "0" in unopened(), 60,
                   "the worker to say partition 0 is not opened", cep.log_tail)
        status = cep.get("/cep/v1/status")
        assert status["serving"] is False and "lock" in status["unopened"]["0"].lower()
        assert cep.proc.poll() is None  # still running
    finally:
        held.close()
    wait_until(lambda: cep.status() is not None, 60, "the worker to open partition 0 and serve", cep.log_tail)
    assert cep.get("/cep/v1/status")["unopened"] == {}
    wait_caught_up(cep)
    assert_analytics(cep.get("/cep/v1/analytics")["analytics"], expected_analytics(trades, quotes))
