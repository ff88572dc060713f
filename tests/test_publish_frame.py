"""``Tickerplant.publish_frame``: columns in, the very log ``publish_rows`` writes for the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ingest.deadletter import read_deadletters
from ingest.feeds.synthetic import SyntheticMarket
from ingest.frames import FrameError
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.publisher import Tickerplant
from ingest.topics import TopicNames
from tickplant.clock import ManualClock

T0 = 1_795_339_800_000_000_000


def market_rows(n: int) -> list[dict]:
    market = SyntheticMarket(syms=30, seed=5, clock=ManualClock(T0), trade_ratio=1.0)
    trades, _ = market.events(n)
    for i in range(0, len(trades), 7):  # equal time stamps, as real feeds have
        trades[i]["time"] = trades[i - 1]["time"] if i else trades[i]["time"]
    trades[3]["cond"] = "@ T"
    trades[4]["exchange"] = "日本"
    return trades


def log_of(settings, table: str) -> list[list[tuple[bytes | None, bytes]]]:
    """Every message of the table's topic: per partition, (key, value) in log order."""
    topic = TopicNames(settings.topic_prefix).table(table)
    consumer = make_consumer(settings)
    try:
        out = []
        for p in range(settings.partitions):
            end = watermarks(consumer, topic, p)[1]
            out.append([(m.key(), m.value()) for m in read_ranges(consumer, topic, {p: (0, end)})])
        return out
    finally:
        consumer.close()


class Capture:
    """Stands in for the producer: keeps (topic, partition, key, value) of every message."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes | None, bytes]] = []
        self.acks: list = []

    def produce(self, topic, value=None, key=None, partition=-1, on_delivery=None, **_):
        self.sent.append((topic, partition, key, value))
        if on_delivery is not None:
            self.acks.append(on_delivery)

    def poll(self, timeout=0.0):
        acks, self.acks = self.acks, []
        for ack in acks:
            ack(None, None)
        return len(acks)

    def flush(self, timeout=0.0):
        self.poll()
        return 0

    def __len__(self):
        return 0


def captured(settings, catalog, mode: str, publish) -> list[tuple[str, int, bytes | None, bytes]]:
    with Tickerplant(settings, catalog, mode=mode, source="test") as tp:
        tp.producer = Capture()
        publish(tp)
        tp.flush()
        return [(t.split(".")[-1], p, k, v) for t, p, k, v in tp.producer.sent]


@pytest.mark.parametrize("mode", ["batch", "zero"])
def test_frame_log_is_byte_identical_to_publish_rows(settings, catalog, mode):
    """Through Kafka: the same rows, once as dicts and once as a DataFrame, make the same log."""
    rows = market_rows(3000 if mode == "batch" else 400)
    s = settings.replace(batch_interval_ms=600_000, max_block_rows=700)  # blocks cut by size and flush only
    a, b = s.replace(topic_prefix=s.topic_prefix + "rows."), s.replace(topic_prefix=s.topic_prefix + "frame.")
    with Tickerplant(a, catalog, mode=mode) as tp:
        tp.publish_rows("trade", rows)
        tp.flush()
    with Tickerplant(b, catalog, mode=mode) as tp:
        assert tp.publish_frame("trade", pd.DataFrame(rows)) == len(rows)
        tp.flush()
        assert tp.stats.delivered["trade"] == len(rows)
    by_rows, by_frame = log_of(a, "trade"), log_of(b, "trade")
    assert sum(map(len, by_rows)) == (len(rows) if mode == "zero" else sum(map(len, by_frame)))
    assert by_rows == by_frame


def test_every_kind_of_frame_gives_the_same_bytes(settings, catalog):
    rows = market_rows(2500)
    df = pd.DataFrame(rows)
    reference = captured(settings, catalog, "batch", lambda tp: tp.publish_rows("trade", rows))
    arrow = pa.Table.from_pandas(df, preserve_index=False)
    frames = {
        "pandas": df,
        "pandas, categorical sym and datetime64 time": df.assign(
            sym=df["sym"].astype("category"), time=pd.to_datetime(df["time"], unit="ns")),
        "arrow table": arrow,
        "arrow table in chunks": pa.Table.from_batches(arrow.to_batches(max_chunksize=333)),
        "record batch": arrow.to_batches()[0] if arrow.num_rows else arrow,
        "dict of numpy": {c: df[c].to_numpy() for c in df.columns},
        "dict of lists": {c: df[c].tolist() for c in df.columns},
        "string views and large strings (as polars hands Arrow over)": arrow.set_column(
            1, "sym", arrow.column("sym").cast(pa.string_view())).set_column(
            4, "exchange", arrow.column("exchange").cast(pa.large_string())),
        "without cond (its default)": df.drop(columns=["cond"]) if not any(r["cond"] for r in rows) else None,
    }
    try:
        import polars as pl

        frames["polars"] = pl.from_pandas(df)
    except ImportError:
        pass
    for name, frame in frames.items():
        if frame is None:
            continue
        got = captured(settings, catalog, "batch", lambda tp, f=frame: tp.publish_frame("trade", f))
        assert got == reference, name
    # published in pieces, rows and frames mixed: still the same log
    mixed = captured(settings, catalog, "batch", lambda tp: (
        tp.publish_rows("trade", rows[:1000]), tp.publish_frame("trade", df.iloc[1000:1800]),
        tp.publish_rows("trade", rows[1800:1900]), tp.publish_frame("trade", df.iloc[1900:])))
    assert mixed == reference
    zero_ref = captured(settings, catalog, "zero", lambda tp: tp.publish_rows("trade", rows))
    assert captured(settings, catalog, "zero", lambda tp: tp.publish_frame("trade", arrow)) == zero_ref


def test_a_frame_that_does_not_fit_the_table_is_refused_naming_the_column(settings, catalog):
    df = pd.DataFrame(market_rows(200))
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.producer = Capture()
        cases = {
            "column colour is not a field of table trade": df.assign(colour="red"),
            "column size is missing": df.drop(columns=["size"]),
            "column size holds double": df.assign(size=df["size"] * 1.5),
            "column price holds (large_)?string": df.assign(price=df["price"].astype(str)),
            "column exchange holds int64": df.assign(exchange=1),
            "row 5 has no sym": df.assign(sym=[("" if i == 5 else s) for i, s in enumerate(df["sym"])]),
            "columns differ in length": {"time": [1, 2], "sym": ["A"]},
            "cannot publish a builtins.list": df.to_dict("records"),
        }
        for message, frame in cases.items():
            with pytest.raises(FrameError, match=message) as err:
                tp.publish_frame("trade", frame)
            assert "\n" not in str(err.value)
        tp.flush()
        assert tp.producer.sent == []  # nothing of a refused frame goes out
        assert isinstance(FrameError("x"), ValueError)


def test_rows_with_a_null_go_to_the_dead_letter_topic(settings, catalog):
    rows = market_rows(300)
    arrow = pa.Table.from_pylist(rows)
    size = arrow.column("size").to_pylist()
    size[10] = None
    price = arrow.column("price").to_pylist()
    price[20] = None
    frame = arrow.set_column(arrow.schema.get_field_index("size"), "size", pa.array(size, pa.int64()))
    frame = frame.set_column(frame.schema.get_field_index("price"), "price", pa.array(price, pa.float64()))
    with Tickerplant(settings, catalog, mode="batch") as tp:
        assert tp.publish_frame("trade", frame) == 298
        tp.flush()
        assert tp.stats.rejected == 2
        assert tp.stats.delivered["trade"] == 298
    kept = [r for i, r in enumerate(rows) if i not in (10, 20)]
    expect = captured(settings.replace(topic_prefix=settings.topic_prefix + "x."), catalog, "batch",
                      lambda tp: tp.publish_rows("trade", kept))
    got = [(p, k, v) for p, part in enumerate(log_of(settings, "trade")) for k, v in part]
    assert got == [(p, k, v) for _, p, k, v in expect]
    letters = read_deadletters(settings)
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 2
    assert "size: null in a field that is not nullable" in reasons[1]
    assert "price: null" in reasons[0]
    assert sorted(letter["payload"]["time"] for letter in letters) == sorted([rows[10]["time"], rows[20]["time"]])


def test_long_strings_take_fastavro_and_still_match(settings, catalog):
    rows = market_rows(300)
    rows[7]["cond"] = "x" * 300  # over the column-wise encoder's 256 bytes
    ref = captured(settings, catalog, "batch", lambda tp: tp.publish_rows("trade", rows))
    got = captured(settings, catalog, "batch", lambda tp: tp.publish_frame("trade", pd.DataFrame(rows)))
    assert got == ref
    zero_ref = captured(settings, catalog, "zero", lambda tp: tp.publish_rows("trade", rows))
    assert captured(settings, catalog, "zero", lambda tp: tp.publish_frame("trade", pd.DataFrame(rows))) == zero_ref
    # the rows fastavro gets are the converted values: datetime64 times as ns, defaults filled
    df = pd.DataFrame(rows).assign(time=lambda f: pd.to_datetime(f["time"], unit="ns"))
    assert captured(settings, catalog, "batch", lambda tp: tp.publish_frame("trade", df)) == ref
    assert captured(settings, catalog, "zero", lambda tp: tp.publish_frame("trade", df)) == zero_ref
    # and with a refused row among them
    nulled = df.assign(size=pd.array([None if i == 11 else r["size"] for i, r in enumerate(rows)], "Int64"))
    kept = rows[:11] + rows[12:]
    for mode in ("batch", "zero"):
        want = captured(settings, catalog, mode, lambda tp: tp.publish_rows("trade", kept))
        assert captured(settings, catalog, mode, lambda tp: tp.publish_frame("trade", nulled)) == want


def test_empty_frame_publishes_nothing(settings, catalog):
    got = captured(settings, catalog, "batch", lambda tp: tp.publish_frame(
        "trade", {"time": np.array([], np.int64), "sym": [], "price": np.array([]), "size": np.array([], np.int64),
                  "exchange": []}))
    assert got == []


def test_csv_feed_as_columns_writes_the_same_log(settings, catalog, tmp_path):
    from ingest.feeds.csvfeed import feed_csv

    rows = market_rows(1200)
    lines = ["time,sym,price,size,exchange"] + [
        f"{r['time']},{r['sym']},{r['price']},{r['size']},{r['exchange']}" for r in rows]
    lines.insert(50, "2026-11-22T10:00:01Z,MSFT,abc,100,N")  # a bad line: dead-lettered either way
    path = tmp_path / "trades.csv"
    path.write_text("\n".join(lines) + "\n")

    def feed(tp, frames: bool):
        report = feed_csv(tp.publish_rows, tp.deadletters, catalog["trade"], path, chunk=500,
                          publish_frame=tp.publish_frame if frames else None)
        assert (report.published, report.rejected) == (1200, 1)

    by_rows = captured(settings, catalog, "batch", lambda tp: feed(tp, False))
    by_frames = captured(settings, catalog, "batch", lambda tp: feed(tp, True))
    assert by_frames == by_rows and len(by_rows) >= 4


def test_synthetic_feed_columns_are_its_rows():
    from ingest.feeds.synthetic import SyntheticMarket

    a = SyntheticMarket(syms=20, seed=9, clock=ManualClock(T0))
    b = SyntheticMarket(syms=20, seed=9, clock=ManualClock(T0))
    for n in (1, 500, 3000):
        trades, quotes = a.events(n)
        trade_cols, quote_cols = b.columns(n)
        assert pd.DataFrame(trades, columns=list(trade_cols)).to_dict("list") == trade_cols
        assert pd.DataFrame(quotes).to_dict("list") == quote_cols


def test_synthetic_feed_through_publish_frame_writes_the_same_records(settings, catalog):
    """The market's columns are its events, draw for draw: ticks of the same sizes make the
    same log as rows or as frames; and run_feed sends its big ticks as frames."""
    import threading

    from ingest.decoder import Decoder
    from ingest.feeds import synthetic

    ticks = [2500, 1200, 3000, 1000]

    def feed(tp, use_frames: bool):
        market = synthetic.SyntheticMarket(syms=20, seed=9, clock=ManualClock(T0))
        for n in ticks:
            if use_frames:
                trade_cols, quote_cols = market.columns(n)
                tp.publish_frame("quote", quote_cols)
                tp.publish_frame("trade", trade_cols)
            else:
                trades, quotes = market.events(n)
                tp.publish_rows("quote", quotes)
                tp.publish_rows("trade", trades)

    def records(sent):
        dec, out = Decoder(catalog), {}
        for table, part, _, value in sent:
            out.setdefault((table, part), []).extend(dec.decode(value)[1])
        return out

    want = records(captured(settings, catalog, "batch", lambda tp: feed(tp, False)))
    got = records(captured(settings, catalog, "batch", lambda tp: feed(tp, True)))
    assert got == want and {t for t, _ in want} == {"trade", "quote"}

    frames = []

    def run(tp):
        market = synthetic.SyntheticMarket(syms=20, seed=9, clock=ManualClock(T0))
        synthetic.run_feed(market, tp.publish_rows, 2000 / 0.05, threading.Event(), duration=0.6,
                           tick_seconds=0.05, publish_frame=lambda t, c: frames.append(t) or tp.publish_frame(t, c))

    assert records(captured(settings, catalog, "batch", run))
    assert "quote" in frames and "trade" in frames


@pytest.mark.parametrize("mode", ["batch", "zero"])
def test_a_frame_is_encoded_in_slices_with_the_same_partition_logs(settings, catalog, monkeypatch, mode):
    import ingest.publish_frames

    rows = market_rows(2600)
    rows[1234]["size"] = None  # refused: the slices must keep the right rows
    frame = pa.Table.from_pylist(rows, schema=catalog["trade"].arrow_schema.remove(0).insert(
        0, pa.field("time", pa.int64())))
    s = settings.replace(max_block_rows=300)
    ref = captured(s, catalog, mode, lambda tp: tp.publish_rows("trade", rows[:1234] + rows[1235:]))
    monkeypatch.setattr(ingest.publish_frames, "FRAME_SLICE", 500)
    got = captured(s, catalog, mode, lambda tp: tp.publish_frame("trade", frame))

    def per_partition(sent):
        return {p: [(k, v) for _, q, k, v in sent if q == p] for p in range(s.partitions)}

    assert per_partition(got) == per_partition(ref)


def test_every_field_type_encodes_as_fastavro_does():
    """Unions with null, ints, booleans, defaults: a frame's bytes are fastavro's of its rows."""
    import io

    import fastavro

    from ingest.frames import to_columns
    from ingest.framing import codec_for
    from ingest.schemas import TableSchema

    table = TableSchema.from_dict({
        "type": "record", "name": "mixed", "namespace": "test",
        "fields": [
            {"name": "time", "type": "long"},
            {"name": "sym", "type": "string"},
            {"name": "i", "type": "int"},
            {"name": "d", "type": "double"},
            {"name": "b", "type": "boolean"},
            {"name": "s", "type": "string", "default": "dflt"},
            {"name": "nl", "type": ["null", "long"]},
            {"name": "nd", "type": ["double", "null"], "default": 1.5},
            {"name": "ns", "type": ["null", "string"], "default": None},
            {"name": "nb", "type": ["null", "boolean"]},
        ],
    })
    rng = np.random.default_rng(3)
    n = 500
    rows = [{"time": int(T0 + i), "sym": f"S{i % 7}", "i": int(rng.integers(-2**31, 2**31)),
             "d": float(rng.normal()), "b": bool(i % 3), "nl": None if i % 4 == 0 else int(rng.integers(-9e18, 9e18)),
             "nd": None if i % 5 == 0 else float(i), "ns": None if i % 2 else "é" * (i % 5),
             "nb": None if i % 6 == 0 else bool(i % 2)} for i in range(n)]
    codec = codec_for(table)
    out = io.BytesIO()
    for row in rows:
        fastavro.schemaless_writer(out, codec.parsed, row)
    got = to_columns(table, codec, pa.Table.from_pylist(rows))
    assert got.refused is None
    data, ends = codec.encode(got.columns)
    assert data.tobytes() == out.getvalue() and len(ends) == n
    # an int out of 32 bits is refused on its own row; a missing nullable field without a default is null
    frame = pa.Table.from_pylist(rows).drop_columns(["nb"])
    frame = frame.set_column(2, "i", pa.array([r["i"] if k != 9 else 2**40 for k, r in enumerate(rows)]))
    got = to_columns(table, codec, frame)
    assert np.flatnonzero(got.refused).tolist() == [9] and "i: value out of range for int" in got.reasons[9]
    with pytest.raises(FrameError, match="column b holds int64"):
        to_columns(table, codec, {**{c: [r[c] for r in rows] for c in ("time", "sym", "i", "d")}, "b": [1] * n})
