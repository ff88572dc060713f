"""Answers as JSON, CSV or an Arrow IPC stream, chosen by the Accept header, streamed by batch.

Times are ISO-8601 with nanoseconds and a ``Z`` in JSON and CSV (readable, sortable,
lossless); Arrow keeps ``timestamp[ns, UTC]``. ClickHouse's low-cardinality strings
arrive as dictionaries and leave as plain strings in text formats.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from typing import Any

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
            utc = col.type.tz in ("UTC", "Etc/UTC", "+00:00")
            zone = "Z" if utc else ("%z" if col.type.tz else "")
            col = pc.strftime(col, format=f"%Y-%m-%dT%H:%M:%S{zone}")  # %S carries the fraction
        elif pa.types.is_date(col.type):
            col = col.cast(pa.string())
        arrays.append(col)
        fields.append(pa.field(f.name, col.type))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def json_chunks(table: pa.Table, extra: dict[str, Any]) -> Iterator[bytes]:
    """``{"columns": [...], "rows": [{...}, ...], "count": n, ...extra}``, a batch at a time."""
    columns = [{"name": f.name, "type": str(f.type.value_type if pa.types.is_dictionary(f.type) else f.type)}
               for f in table.schema]
    yield (b'{"columns": ' + json.dumps(columns).encode() + b', "rows": [')
    first = True
    for batch in table.to_batches(BATCH_ROWS):
        rows = plain(batch).to_pylist()
        if not rows:
            continue
        text = ", ".join(json.dumps({k: _clean(v) for k, v in row.items()}) for row in rows)
        yield (b"" if first else b", ") + text.encode()
        first = False
    tail = {"count": table.num_rows, **extra}
    yield b"], " + json.dumps(tail).encode()[1:]


def csv_chunks(table: pa.Table) -> Iterator[bytes]:
    header = True
    batches = table.to_batches(BATCH_ROWS) or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    for batch in batches:
        buf = io.BytesIO()
        pacsv.write_csv(plain(batch), buf, pacsv.WriteOptions(include_header=header))
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
