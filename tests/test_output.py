"""The gateway's text answers (gateway/output.py): what each type becomes in JSON and CSV."""

from __future__ import annotations

import decimal
import json

import pyarrow as pa

from gateway.output import csv_chunks, json_chunks

T = 1_795_339_800_123_456_789  # 2026-11-22 09:30:00.123456789 UTC


def answer(table: pa.Table) -> dict:
    return json.loads(b"".join(json_chunks(table, {"elapsed_ms": 1.5})))


def test_json_types_times_and_non_numbers() -> None:
    table = pa.table({
        "time": pa.array([T, None], pa.timestamp("ns", "UTC")),
        "local": pa.array([T, T], pa.timestamp("ns")),
        "ny": pa.array([T, T], pa.timestamp("ns", "America/New_York")),
        "us": pa.array([T // 1000, T // 1000], pa.timestamp("us", "UTC")),
        "date": pa.array([20414, 20415], pa.date32()),
        "sym": pa.array(["AAPL", 'q"uote\\'], pa.string()).dictionary_encode(),
        "price": pa.array([float("nan"), 0.1 + 0.2]),
        "inf": pa.array([float("inf"), -1.5]),
        "size": pa.array([2**63 - 1, -3], pa.int64()),
        "amount": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(10, 2)),
    })
    got = answer(table)
    assert got["count"] == 2 and got["elapsed_ms"] == 1.5
    assert [c["name"] for c in got["columns"]] == table.column_names
    first, second = got["rows"]
    assert first["time"] == "2026-11-22T09:30:00.123456789Z" and second["time"] is None
    assert first["local"] == "2026-11-22T09:30:00.123456789"
    assert first["ny"] == "2026-11-22T04:30:00.123456789-0500"
    assert first["us"] == "2026-11-22T09:30:00.123456Z"
    assert (first["date"], second["date"]) == ("2025-11-22", "2025-11-23")
    assert (first["sym"], second["sym"]) == ("AAPL", 'q"uote\\')
    assert first["price"] is None and second["price"] == 0.1 + 0.2  # NaN has no JSON; floats round-trip
    assert first["inf"] is None and second["inf"] == -1.5
    assert first["size"] == 2**63 - 1 and first["amount"] == 1.25 and second["amount"] is None


def test_json_and_csv_of_no_rows_and_of_many_batches() -> None:
    empty = pa.table({"time": pa.array([], pa.timestamp("ns", "UTC")), "x": pa.array([], pa.int64())})
    assert answer(empty)["rows"] == [] and answer(empty)["count"] == 0
    many = pa.table({"x": pa.array(range(200_000), pa.int64())})
    assert [r["x"] for r in answer(many)["rows"]] == list(range(200_000))
    text = b"".join(csv_chunks(pa.table({"time": pa.array([T], pa.timestamp("ns", "UTC")), "x": [1]}))).decode()
    assert text.splitlines() == ['"time","x"', '"2026-11-22T09:30:00.123456789Z",1']


def test_csv_writes_arrays_and_tuples_as_json_text() -> None:
    """ClickHouse answers groupArray/topK as lists: CSV has no nesting, so they go as JSON."""
    table = pa.table({"sym": ["A", "B"], "prices": pa.array([[1.5, 2.0], None], pa.list_(pa.float64())),
                      "pair": pa.array([{"n": 1, "s": "x"}, {"n": 2, "s": "y"}])})
    text = b"".join(csv_chunks(table)).decode()
    assert text.splitlines() == ['"sym","prices","pair"', '"A","[1.5,2.0]","{""n"":1,""s"":""x""}"',
                                 '"B",,"{""n"":2,""s"":""y""}"']


def test_columns_written_by_polars_read_back_as_orjsons_rows() -> None:
    """The columnar JSON writer gives what orjson gives row by row, for every simple type
    and the awkward values: NaN and infinities (null), extreme floats and integers, quotes,
    control characters and non-ASCII text, nulls."""
    import orjson

    from gateway.output import _rows_json, _simple, json_default

    batch = pa.record_batch({
        "f": pa.array([float("nan"), float("inf"), -0.0, 5e-324, 1e300, 0.1 + 0.2, None]),
        "f32": pa.array([1.5, -2.25, None, 3.0, 0.0, 1e-3, 7.0], pa.float32()),
        "i": pa.array([2**63 - 1, -(2**63), 0, -1, None, 42, 7], pa.int64()),
        "u": pa.array([2**64 - 1, 0, 1, None, 5, 6, 7], pa.uint64()),
        "b": pa.array([True, False, None, True, True, False, True]),
        "s": pa.array(['q"uote\\', "tab\tnew\nline\x01", "日本語 €", "", None, "a" * 300, "\u2028"]),
        "n": pa.nulls(7),
    })
    assert all(_simple(f.type) for f in batch.schema)
    by_rows = json.loads(orjson.dumps(batch.to_pylist(), default=json_default))
    got = json.loads(_rows_json(batch))
    # a float32 is written as its shortest text (0.001), orjson's as the double it widens to
    for a, b in zip(got, by_rows, strict=True):
        mine, theirs = a.pop("f32"), b.pop("f32")
        assert mine == theirs or abs(mine - theirs) <= 1e-7 * abs(theirs)
    assert got == by_rows
