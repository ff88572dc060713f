"""Chunks of a day read together: one schema, or schema versions with fields added since."""

from __future__ import annotations

import pyarrow as pa
import pytest

from streams.chunks import concat

OLD = pa.schema([("time", pa.timestamp("ns")), ("sym", pa.string()), ("price", pa.float64())])
NEW = OLD.append(pa.field("venue", pa.string()))


def chunk(schema: pa.Schema, sym: str, n: int, start: int = 0) -> pa.Table:
    columns = {"time": pa.array(range(start, start + n), pa.timestamp("ns")), "sym": [sym] * n,
               "price": [float(i) for i in range(start, start + n)]}
    if "venue" in schema.names:
        columns["venue"] = ["X"] * n
    return pa.table(columns, schema=schema)


def test_chunks_of_one_schema_keep_every_row_in_order():
    chunks = [chunk(OLD, f"S{i % 3}", 5, start=10 * i) for i in range(40)]
    out = concat(chunks)
    assert out.schema.equals(OLD) and out.num_rows == 200
    assert out.column("time").to_pylist() == [t for c in chunks for t in c.column("time").to_pylist()]


def test_chunks_differing_only_in_metadata_read_together():
    tagged = chunk(OLD, "A", 3).replace_schema_metadata({b"writer": b"v1"})
    out = concat([chunk(OLD, "B", 2), tagged])
    assert out.column("sym").to_pylist() == ["B", "B", "A", "A", "A"]


def test_chunks_of_an_older_version_read_with_nulls_in_the_added_field():
    out = concat([chunk(OLD, "A", 2), chunk(NEW, "A", 3, start=2), chunk(OLD, "B", 1, start=5)])
    assert out.schema.names == NEW.names and out.num_rows == 6
    assert out.column("venue").to_pylist() == [None, None, "X", "X", "X", None]


def test_nothing_to_concatenate_is_an_error():
    with pytest.raises(ValueError, match="nothing to concatenate"):
        concat([])
