"""The column-wise encoder writes exactly fastavro's bytes, or steps aside for fastavro.

``encode_block`` and the publisher encode plain-primitive tables a column at a
time (ingest.framing.RecordCodec); the wire format must stay fastavro's to the
byte, and rows fastavro refuses must still be refused.
"""

from __future__ import annotations

import io
import math

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ingest.decoder import Decoder
from ingest.feeds.synthetic import SyntheticMarket
from ingest.framing import (
    BLOCK_MAGIC,
    FAST_MIN_ROWS,
    ROW_MAGIC,
    codec_for,
    encode_block,
    encode_row,
)
from ingest.schemas import SchemaCatalog, TableSchema

MIXED = TableSchema.from_dict({
    "type": "record", "name": "mixed", "namespace": "test",
    "fields": [
        {"name": "time", "type": "long"},
        {"name": "sym", "type": "string"},
        {"name": "l", "type": "long"},
        {"name": "i", "type": "int"},
        {"name": "d", "type": "double"},
        {"name": "b", "type": "boolean"},
        {"name": "s", "type": "string", "default": "dflt"},
        {"name": "nl", "type": ["null", "long"]},
        {"name": "nd", "type": ["double", "null"], "default": 1.5},
        {"name": "ns", "type": ["null", "string"], "default": None},
        {"name": "nb", "type": ["null", "boolean"]},
        {"name": "ni", "type": ["null", "int"]},
    ],
})
DEFAULTED = ("s", "nd", "ns", "nl", "nb", "ni")  # fastavro fills these when absent

LONGS = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 63, 64, -64, -65, 2**63 - 1, -(2**63)])
INTS = st.integers(-(2**31), 2**31 - 1)
DOUBLES = st.floats() | st.integers(-(2**53), 2**53) | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan])
TEXT = st.text(max_size=40) | st.sampled_from(["", "AAPL", "é", "日本語", "😀" * 20, "x" * 63, "y" * 64, "z" * 256])


def reference(table: TableSchema, rows: list) -> bytes:
    """fastavro on its own: the bytes the wire format is defined by."""
    out = io.BytesIO()
    out.write(BLOCK_MAGIC + table.fingerprint)
    fastavro.schemaless_writer(out, fastavro.parse_schema({"type": "array", "items": table.avro}), rows)
    return out.getvalue()


def reference_record(table: TableSchema, row: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(table.avro), row)
    return out.getvalue()


def fast_block(table: TableSchema, rows: list) -> bytes | None:
    """The column-wise encoder alone (whatever the row count): a block, or None."""
    codec = codec_for(table)
    fast = codec.records(rows)
    return None if fast is None else codec.block(fast[0].tobytes(), len(rows))


def same_as_fastavro(table: TableSchema, rows: list) -> None:
    try:
        expected = reference(table, rows)
    except Exception:  # fastavro refuses: so must the fast path, and encode_block
        assert fast_block(table, rows) is None
        with pytest.raises(Exception):  # noqa: B017 - whatever fastavro raises
            encode_block(table, rows)
        return
    assert fast_block(table, rows) in (None, expected)
    assert encode_block(table, rows) == expected


@st.composite
def mixed_rows(draw, min_size=1, max_size=60):
    n = draw(st.integers(min_size, max_size))
    rows = []
    for _ in range(n):
        row = {
            "time": draw(LONGS), "sym": draw(TEXT), "l": draw(LONGS), "i": draw(INTS),
            "d": draw(DOUBLES), "b": draw(st.booleans()), "s": draw(TEXT),
            "nl": draw(st.none() | LONGS), "nd": draw(st.none() | DOUBLES),
            "ns": draw(st.none() | TEXT), "nb": draw(st.none() | st.booleans()),
            "ni": draw(st.none() | INTS),
        }
        for name in draw(st.sets(st.sampled_from(DEFAULTED), max_size=2)):
            del row[name]
        rows.append(row)
    return rows


def test_synthetic_trades_and_quotes_byte_for_byte(catalog):
    trades, quotes = SyntheticMarket(syms=60, seed=3, trade_ratio=0.5).events(6000)
    for name, rows in (("trade", trades), ("quote", quotes)):
        table = catalog[name]
        for size in (1, 2, 33, FAST_MIN_ROWS, 1000, len(rows)):
            expected = reference(table, rows[:size])
            assert fast_block(table, rows[:size]) == expected, "the fast path should take these rows"
            assert encode_block(table, rows[:size]) == expected
        # time is a timestamp-nanos long: the compiled row writer takes it too, fastavro's bytes
        assert codec_for(table).exact(rows[0]) == reference_record(table, rows[0])


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(rows=mixed_rows())
def test_random_well_typed_rows_byte_for_byte(rows):
    expected = reference(MIXED, rows)
    assert fast_block(MIXED, rows) == expected
    assert encode_block(MIXED, rows) == expected
    assert Decoder(SchemaCatalog({"mixed": MIXED})).decode(expected)[0] == "mixed"


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(rows=mixed_rows(max_size=40), data=st.data())
def test_rows_with_prefix_and_in_another_order(rows, data):
    codec = codec_for(MIXED)
    order = data.draw(st.permutations(range(len(rows))))
    fast = codec.records(rows, prefix=codec.row_header, order=np.array(order))
    if fast is None:
        return  # a long string: fastavro's
    body, ends = fast[0].tobytes(), fast[1].tolist()
    starts = [0] + ends[:-1]
    got = [body[a:b] for a, b in zip(starts, ends, strict=True)]
    assert got == [ROW_MAGIC + MIXED.fingerprint + reference_record(MIXED, rows[i]) for i in order]
    assert got == [encode_row(MIXED, rows[i]) for i in order]


def test_long_strings_go_to_fastavro():
    trade = {"time": 1, "sym": "A", "l": 1, "i": 1, "d": 1.0, "b": True}
    rows = [{**trade, "s": "é" * 200}] * 150  # 400 bytes: wider than the padded matrix allows
    assert fast_block(MIXED, rows) is None
    assert encode_block(MIXED, rows) == reference(MIXED, rows)


ODD_VALUES = [
    None, True, False, 1.5, -2.5, 1.0, "1.5", "7", "x", b"x", b"\xff", bytearray(b"x"), 2**63, -(2**63) - 1,
    2**70, 2**31, -(2**31) - 1, np.int64(7), np.int32(-3), np.float64(2.5), np.float32(1.25),
    np.bool_(True), np.str_("np"), "\ud800", [1], {"a": 1}, math.nan, ("long", 5),
]


BASE = {
    "time": 1_763_800_000_000_000_000, "sym": "AAPL", "l": -5, "i": 7, "d": 2.5, "b": False,
    "s": "x", "nl": None, "nd": 1.25, "ns": "n", "nb": True, "ni": None,
}


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
@pytest.mark.parametrize("name", [f["name"] for f in MIXED.fields])
def test_each_odd_value_in_each_field(name, value):
    rows = [dict(BASE), {**BASE, name: value}, dict(BASE)]
    same_as_fastavro(MIXED, rows)


@pytest.mark.parametrize("name", [f["name"] for f in MIXED.fields])
def test_a_missing_field(name):
    rows = [dict(BASE), {k: v for k, v in BASE.items() if k != name}]
    same_as_fastavro(MIXED, rows)


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example, HealthCheck.data_too_large])
@given(
    rows=mixed_rows(max_size=30),
    where=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from([f["name"] for f in MIXED.fields]), st.sampled_from(ODD_VALUES)),
        min_size=1, max_size=3,
    ),
    drop=st.booleans(),
)
def test_odd_values_among_random_rows(rows, where, drop):
    for at, name, value in where:
        rows[at % len(rows)][name] = value
    if drop:
        del rows[where[0][0] % len(rows)][where[0][1]]  # a missing field, with or without a default
    same_as_fastavro(MIXED, rows)


def test_rows_that_are_not_dicts_and_empty_blocks():
    same_as_fastavro(MIXED, [])
    trade = {"time": 1, "sym": "A", "price": 1.0, "size": 1, "exchange": "N", "cond": ""}
    catalog = SchemaCatalog({"trade": TableSchema.from_dict({
        "type": "record", "name": "trade",
        "fields": [{"name": n, "type": t} for n, t in (
            ("time", "long"), ("sym", "string"), ("price", "double"), ("size", "long"),
            ("exchange", "string"), ("cond", "string"))],
    })})
    table = catalog["trade"]
    same_as_fastavro(table, [trade] * 140 + [None])
    same_as_fastavro(table, [trade] * 140 + [[1, 2]])
    same_as_fastavro(table, [trade] * 140 + [{**trade, "extra": object()}])
    assert fast_block(table, [{**trade, "extra": object()}]) == reference(table, [trade])


def test_unsupported_schemas_use_fastavro():
    table = TableSchema.from_dict({
        "type": "record", "name": "odd",
        "fields": [
            {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "sym", "type": "string"},
            {"name": "f", "type": "float"},
            {"name": "raw", "type": "bytes"},
        ],
    })
    assert codec_for(table).plan is None
    rows = [{"time": i, "sym": "S", "f": 0.1 * i, "raw": bytes([i])} for i in range(50)]
    assert encode_block(table, rows) == reference(table, rows)


def test_publisher_blocks_split_at_max_block_rows(settings, catalog):
    """Blocks hold at most max_block_rows rows; fast, defaulted and refused rows mix."""
    from ingest.publisher import Tickerplant
    from ingest.replay import day_ranges, replay_messages, replay_rows

    local = settings.replace(max_block_rows=300, batch_interval_ms=10_000)
    trades, _ = SyntheticMarket(syms=7, seed=9, trade_ratio=1.0).events(5000)
    trades[100] = {k: v for k, v in trades[100].items() if k != "cond"}  # fastavro fills the default
    bad = {**trades[200], "size": "many"}
    with Tickerplant(local, catalog, mode="batch") as tp:
        for start in range(0, len(trades), 700):
            tp.publish_rows("trade", trades[start:start + 700])
        tp.publish_rows("trade", [bad])
        tp.flush()
        assert tp.stats.rejected == 1
        assert tp.stats.delivered["trade"] == len(trades)
    messages = list(replay_messages(local, "trade", day_ranges(local, "trade"), catalog))
    assert max(len(rows) for _, rows in messages) == 300
    got = list(replay_rows(local, "trade", catalog=catalog))
    expected = [{**r, "cond": r.get("cond", "")} for r in trades]

    def by_sym(rows):
        out: dict = {}
        for r in rows:
            out.setdefault(r["sym"], []).append(r)
        return out

    assert by_sym(got) == by_sym(expected)
