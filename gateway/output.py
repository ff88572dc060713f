"""Answers as JSON, CSV or an Arrow IPC stream, chosen by the Accept header, streamed by batch.

Times are ISO-8601 with nanoseconds and a ``Z`` in JSON and CSV (readable, sortable,
lossless); Arrow keeps ``timestamp[ns, UTC]``. ClickHouse's low-cardinality strings
arrive as dictionaries and leave as plain strings in text formats.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

ARROW = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
JSON = "application/json"
FORMATS = {"json": JSON, "csv": CSV, "arrow": ARROW}
BATCH_ROWS = 65536


def media_type(accept: str | None, fmt: str | None = None) -> str:
    """The answer's type: ``format=`` wins, then the Accept header, else JSON."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"format={fmt!r}: choose one of {', '.join(FORMATS)}")
        return FORMATS[fmt]
    for part in (accept or "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in (ARROW, "application/vnd.apache.arrow.file", "application/x-arrow"):
            return ARROW
        if kind == CSV:
            return CSV
        if kind in (JSON, "*/*", "application/*"):
            return JSON
    return JSON


def plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionaries decoded, times and dates as ISO strings: what text formats print."""
    arrays, fields = [], []
    for f, col in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_timestamp(col.type):
            col = _iso_times(col)
        elif pa.types.is_date(col.type):
            col = col.cast(pa.string())
        arrays.append(col)
        fields.append(pa.field(f.name, col.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _iso_times(col: pa.Array) -> pa.Array:
    """ISO-8601 text of timestamps, the fraction as the unit's digits, ``Z`` for UTC.

    A cast to text and a ``T`` put in is ~8x faster than ``strftime`` (10 ms against 80 ms
    for 60k times) and gives the same text; other time zones go through ``strftime``."""
    tz = col.type.tz
    if tz not in (None, "UTC", "Etc/UTC", "+00:00"):
        return pc.strftime(col, format="%Y-%m-%dT%H:%M:%S%z")  # %S carries the fraction
    text = pc.utf8_replace_slice(col.cast(pa.timestamp(col.type.unit)).cast(pa.string()), 10, 11, "T")
    return pc.binary_join_element_wise(text, pa.scalar("Z"), "") if tz else text


def json_default(value: Any) -> Any:
    """What orjson does not write itself (ClickHouse decimals, bytes, times of day)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dt.time | dt.timedelta):
        return value.isoformat() if isinstance(value, dt.time) else value.total_seconds()
    return str(value)


def _rows_json(batch: pa.RecordBatch) -> bytes:
    """A plain batch's rows as a JSON array. Columns of numbers, booleans and strings are
    written by polars from the columns themselves (the same text as orjson's, NaN and
    infinities null); anything else (decimals, bytes, nested values) goes row by row
    through orjson, which first makes every value a Python object."""
    if all(_simple(f.type) for f in batch.schema):
        import polars as pl  # on first use: importing it costs every process that imports this

        frame = cast(pl.DataFrame, pl.from_arrow(batch))  # a record batch reads as a frame, not a Series
        return frame.write_json().encode()
    return orjson.dumps(batch.to_pylist(), default=json_default)


def _simple(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t))


def json_chunks(table: pa.Table, extra: dict[str, Any]) -> Iterator[bytes]:
    """``{"columns": [...], "rows": [{...}, ...], "count": n, ...extra}``, a batch at a time."""
    columns = [{"name": f.name, "type": str(f.type.value_type if pa.types.is_dictionary(f.type) else f.type)}
               for f in table.schema]
    yield (b'{"columns": ' + json.dumps(columns).encode() + b', "rows": [')
    first = True
    for batch in table.to_batches(BATCH_ROWS):
        if not batch.num_rows:
            continue
        yield (b"" if first else b", ") + _rows_json(plain(batch))[1:-1]
        first = False
    tail = {"count": table.num_rows, **extra}
    yield b"], " + json.dumps(tail).encode()[1:]


def _nested_as_json(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Arrays, maps and tuples (``groupArray``, ``topK``...) as JSON text: CSV has no nesting,
    and Arrow's CSV writer refuses them (the answer would fail halfway through)."""
    nested = [i for i, f in enumerate(batch.schema) if pa.types.is_nested(f.type)]
    if not nested:
        return batch
    arrays, fields = list(batch.columns), list(batch.schema)
    for i in nested:
        text = [None if v is None else orjson.dumps(v, default=json_default).decode()
                for v in arrays[i].to_pylist()]
        arrays[i] = pa.array(text, pa.string())
        fields[i] = pa.field(fields[i].name, pa.string())
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def csv_chunks(table: pa.Table) -> Iterator[bytes]:
    header = True
    batches = table.to_batches(BATCH_ROWS) or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    for batch in batches:
        buf = io.BytesIO()
        pacsv.write_csv(_nested_as_json(plain(batch)), buf, pacsv.WriteOptions(include_header=header))
        header = False
        yield buf.getvalue()


def arrow_chunks(table: pa.Table) -> Iterator[bytes]:
    sink = io.BytesIO()
    writer = pa.ipc.new_stream(sink, table.schema)
    yield _drain(sink)
    for batch in table.to_batches(BATCH_ROWS):
        writer.write_batch(batch)
        yield _drain(sink)
    writer.close()
    yield _drain(sink)


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


def chunks(table: pa.Table, kind: str, extra: dict[str, Any]) -> Iterator[bytes]:
    if kind == ARROW:
        return arrow_chunks(table)
    if kind == CSV:
        return csv_chunks(table)
    return json_chunks(table, extra)
