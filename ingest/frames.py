"""Columns in, log bytes out: what ``Tickerplant.publish_frame`` makes of a frame.

A kdb+ feed publishes columns. A frame here is a pandas DataFrame, a polars
DataFrame, a pyarrow Table or RecordBatch, or a dict of numpy arrays / lists,
one per column. ``to_columns`` turns one into the column-wise encoder's
``Columns`` (``ingest.framing``) without touching a row in Python:

- every column must be a field of the table, and every field without a
  default (or a null branch) must be there: else ``FrameError``, one line
  naming the column;
- a column's values must be of its field's type: integers for int/long (a
  datetime64 / Arrow timestamp is taken as ns since the epoch, as ``time``
  is), numbers for double/float, strings (or a dictionary/categorical of
  them) for string, booleans for boolean; else ``FrameError`` naming the
  column and both types;
- a row with a null in a field that is not nullable, or an int out of 32
  bits, is refused on its own with the reason, as fastavro refuses such a row
  of ``publish_rows``: the publisher sends it to the dead-letter topic and
  the other rows on;
- every row must have a sym (a non-empty string): a row without one is a
  ``FrameError`` (``publish_rows`` raises for it too), raised before anything
  is published.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.framing import _FILLER, _INT32_MAX, _INT32_MIN, _REQUIRED, Columns, RecordCodec
from ingest.schemas import TableSchema


class FrameError(ValueError):
    """A frame cannot be published as it is; the message names the column."""


@dataclass
class FrameColumns:
    """A frame's rows as the encoder takes them, and what is wrong with some rows."""

    columns: Columns  # every row, bad rows included (their values are fillers)
    syms: pa.Array  # the sym column, as strings
    refused: np.ndarray | None  # bool per row: refused (reason in ``reasons``), or None
    reasons: dict[int, str]  # row index -> why refused (the first reason)
    table: pa.Table  # the frame as Arrow, to give refused rows back as dicts

    def slice(self, lo: int, hi: int) -> FrameColumns:
        """Rows [lo, hi) (views, no copies); ``reasons`` stay keyed by the whole frame's rows."""
        fields = [(values.slice(lo, hi - lo) if isinstance(values, pa.Array) else values[lo:hi],
                   None if isnull is None else isnull[lo:hi]) for values, isnull in self.columns.fields]
        return FrameColumns(Columns(hi - lo, fields), self.syms.slice(lo, hi - lo),
                            None if self.refused is None else self.refused[lo:hi], self.reasons,
                            self.table.slice(lo, hi - lo))


def _from_list(values: list[Any], kind: str | None) -> pa.Array:
    """A list column as Arrow: ints and floats through ``array`` (as the row path's encoder
    reads them, several times quicker than Arrow's inference), anything else by Arrow."""
    try:
        if kind in ("long", "int") and values and type(values[0]) is int:
            return pa.array(np.frombuffer(array.array("q", values), np.int64))
        if kind == "double" and values and type(values[0]) is float:
            return pa.array(np.frombuffer(array.array("d", values), np.float64))
    except (TypeError, OverflowError, ValueError):
        pass  # a None, a float among ints...: Arrow says what it is
    return pa.array(values)


def as_arrow(frame: Any, kinds: dict[str, str] | None = None) -> pa.Table:
    """Any supported frame as an Arrow table (no copy where Arrow can avoid one); ``kinds``
    (column -> Avro kind) speeds up lists of numbers."""
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    module = type(frame).__module__.split(".")[0]
    if module == "pandas":
        import pandas as pd

        if isinstance(frame, pd.DataFrame):
            arrays, names = [], []
            for name in frame.columns:
                if not isinstance(name, str):
                    raise FrameError(f"column name {name!r} is not a string")
                series = frame[name]
                try:
                    arrays.append(pa.Array.from_pandas(series))
                except (pa.ArrowException, TypeError, ValueError) as exc:
                    raise FrameError(f"column {name}: {_first_line(exc)}") from None
                names.append(name)
            return pa.Table.from_arrays(arrays, names=names)
    if module == "polars" and hasattr(frame, "to_arrow"):
        return frame.to_arrow()
    if isinstance(frame, dict):
        arrays, names = [], []
        for name, values in frame.items():
            if not isinstance(name, str):
                raise FrameError(f"column name {name!r} is not a string")
            try:
                if isinstance(values, pa.ChunkedArray):
                    arr = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
                elif isinstance(values, pa.Array):
                    arr = values
                elif isinstance(values, np.ndarray) and values.dtype == object:
                    arr = pa.array(values, from_pandas=True)
                elif isinstance(values, list):
                    arr = _from_list(values, (kinds or {}).get(name))
                else:
                    arr = pa.array(values)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise FrameError(f"column {name}: {_first_line(exc)}") from None
            arrays.append(arr)
            names.append(name)
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            sizes = ", ".join(f"{n}={len(a)}" for n, a in zip(names, arrays, strict=True))
            raise FrameError(f"columns differ in length ({sizes})")
        return pa.Table.from_arrays(arrays, names=names)
    raise FrameError(f"cannot publish a {type(frame).__module__}.{type(frame).__name__}: give a pandas or "
                     "polars DataFrame, a pyarrow Table/RecordBatch or a dict of columns")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _combined(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else (col.combine_chunks() if col.num_chunks else
                                                          pa.array([], col.type))
    return col


def _typed(name: str, arr: pa.Array, kind: str, table: str) -> pa.Array:
    """The column cast to the Arrow type its Avro kind is encoded from; FrameError if it is not
    of that kind (no float into a long, no number into a string)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    ok = False
    if kind in ("long", "int"):
        if pa.types.is_timestamp(t):
            arr = arr.cast(pa.timestamp("ns", t.tz)).cast(pa.int64())
            ok = True
        else:
            ok = pa.types.is_integer(t) or pa.types.is_null(t)
            if ok and t != pa.int64():
                if pa.types.is_uint64(t) and len(arr) and (pc.max(arr).as_py() or 0) >= 1 << 63:
                    raise FrameError(f"{table}: column {name}: values above 2^63-1 do not fit a {kind}")
                arr = arr.cast(pa.int64())
    elif kind == "double":
        ok = pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)
        if ok and t != pa.float64():
            arr = arr.cast(pa.float64())
    elif kind == "string":
        ok = (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
              or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)))  # polars' strings
        if ok and t != pa.string():
            arr = arr.cast(pa.string())
    elif kind == "boolean":
        ok = pa.types.is_boolean(t) or pa.types.is_null(t)
        if ok and pa.types.is_null(t):
            arr = arr.cast(pa.bool_())
    if not ok:
        raise FrameError(f"{table}: column {name} holds {t}, not the {kind} values table {table} needs")
    return arr


def _values(arr: pa.Array, kind: str) -> Any:
    """The encoder's values of a null-free column: numpy for numbers, Arrow strings as they are."""
    if kind == "string":
        return arr
    return arr.to_numpy(zero_copy_only=False)


def to_columns(schema: TableSchema, codec: RecordCodec, frame: Any) -> FrameColumns:
    """The frame checked against the table and converted for ``codec.encode`` (see module doc)."""
    plan = codec.plan
    if plan is None:
        raise FrameError(f"table {schema.name} has a field type publish_frame cannot encode; use publish_rows")
    table = as_arrow(frame, {name: kind for name, kind, *_ in plan})
    known = {name for name, *_ in plan}
    extra = [c for c in table.column_names if c not in known]
    if extra:
        raise FrameError(f"{schema.name}: column {extra[0]} is not a field of table {schema.name} "
                         f"(fields: {', '.join(schema.columns)})")
    dupes = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if dupes:
        raise FrameError(f"{schema.name}: column {dupes[0]} is given twice")
    n = table.num_rows
    refused: np.ndarray | None = None
    reasons: dict[int, str] = {}

    def refuse(mask: np.ndarray, reason: str) -> None:
        nonlocal refused
        if not mask.any():
            return
        for i in np.flatnonzero(mask & ~refused if refused is not None else mask).tolist():
            reasons[i] = reason
        refused = mask.copy() if refused is None else refused | mask

    fields: list[tuple[Any, Any]] = []
    syms: pa.Array | None = None
    for name, kind, null_index, missing in plan:
        if name not in table.column_names:
            if missing is _REQUIRED:
                raise FrameError(f"{schema.name}: column {name} is missing (a {kind} field of table "
                                 f"{schema.name} with no default)")
            isnull: np.ndarray | None
            if missing is None:
                isnull = np.ones(n, bool)
                values = _constant(_FILLER[kind], kind, n)
            else:
                isnull = np.zeros(n, bool) if null_index is not None else None
                values = _constant(missing, kind, n)
            fields.append((values, isnull))
            continue
        arr = _typed(name, _combined(table.column(name)), kind, schema.name)
        nulls = arr.null_count
        mask = np.asarray(arr.is_null()) if nulls else None
        if name == "sym":
            empty = np.asarray(pc.equal(pc.utf8_length(arr), 0).fill_null(True)) if kind == "string" else None
            if empty is not None and empty.any():
                i = int(np.flatnonzero(empty)[0])
                raise FrameError(f"{schema.name}: row {i} has no sym (a non-empty string): "
                                 f"{table.slice(i, 1).to_pylist()[0]!r}")
            syms = arr
        if nulls:
            arr = arr.fill_null(_FILLER[kind])
        if kind == "int" and len(arr):
            values = arr.to_numpy(zero_copy_only=False)
            refuse((values < _INT32_MIN) | (values > _INT32_MAX), f"{name}: value out of range for int")
        if null_index is None:
            if mask is not None:
                refuse(mask, f"{name}: null in a field that is not nullable ({kind})")
            fields.append((_values(arr, kind), None))
        else:
            fields.append((_values(arr, kind), mask if mask is not None else np.zeros(n, bool)))
    if syms is None:
        raise FrameError(f"table {schema.name} has no sym field")
    return FrameColumns(Columns(n, fields), syms, refused, reasons, table)


def _constant(value: Any, kind: str, n: int) -> Any:
    if kind == "string":
        return pa.array(np.full(n, value, dtype=object), pa.string()) if value else pa.StringArray.from_buffers(
            n, pa.py_buffer(np.zeros(n + 1, np.int32).tobytes()), pa.py_buffer(b""))
    if kind == "boolean":
        return np.full(n, bool(value))
    if kind == "double":
        return np.full(n, float(value))
    return np.full(n, int(value), np.int64)
