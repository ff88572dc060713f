"""How rows are laid in Kafka messages: the tickerplant log's wire format.

A message value is one of

- a row (zero-latency mode): Avro single-object encoding,
  ``C3 01`` + 8-byte schema fingerprint + the record;
- a block (batch mode, kdb+tick's ``-t`` timer): ``C3 B1`` + fingerprint +
  an Avro array of records, published for one partition at a time;
- an end-of-day fence: empty value with header ``tp-control: eod:<date>``
  (see ``ingest.eod``).

The fingerprint names the writer's schema, so a reader decodes with it and
resolves to its own (fields added with defaults work both ways). Writer
schemas unknown locally are found on the compacted schemas topic.
"""

from __future__ import annotations

import array
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import fastavro
import fastavro.schema
import pyarrow as pa

try:
    import numpy as np
except ImportError:  # numpy comes with pyarrow's and pandas' users; without it, fastavro alone
    np = None  # type: ignore[assignment]  # optional module: the pure-Python paths check for None

from ingest.rowcode import NotExact, compile_record, flat_kind, long_bytes
from ingest.schemas import TableSchema, plain

if TYPE_CHECKING:
    from confluent_kafka._types import HeadersType

ROW_MAGIC = b"\xc3\x01"
BLOCK_MAGIC = b"\xc3\xb1"
HEADER_LEN = 10
CONTROL_HEADER = "tp-control"
CONFLUENT_ID = b"cf:"  # resolver keys of Confluent schema ids, apart from fingerprints


# -- encoding ----------------------------------------------------------------
#
# fastavro encodes one value at a time, walking the schema for each (about
# 2.7 us a trade row here in blocks, 3.7 us alone). For tables of plain
# primitives the same bytes can be made a column at a time with numpy:
# zigzag varints for int/long, little-endian doubles, length-prefixed UTF-8
# strings, one byte for a boolean, a branch-index byte before the value of a
# ["null", T] union. Laid side by side in schema order and read row by row,
# the bytes are the records back to back, exactly as fastavro writes them
# (tests/test_fast_encode.py holds the two to byte equality), so a block is
# just its header, the row count, those bytes and a 0.
#
# Only values whose encoding is certain take that path. The conversion of a
# column is its type check: array('q') takes ints within 64 bits (and bools,
# as fastavro does) but refuses floats; array('d') takes what float() takes
# except str, as fastavro's float(); pyarrow makes a string array only of str
# (bytes make a binary one); a union's values must be exactly int, float, str
# or bool. Anything else (None outside a union, bytes, a float in a long, an
# int beyond 64 bits, a string over 256 bytes, an unsupported field type)
# makes ``RecordCodec.records`` answer None, and fastavro encodes (or
# rejects) the rows as before. A missing field takes its default, as in
# fastavro's writer.

FAST_MIN_ROWS = 100  # fewer rows: fastavro is quicker (numpy costs ~0.2 ms a call)
_MAX_STRING_BYTES = 256  # a longer string would make its padded matrix too wide
_UNION_TYPES: dict[str, tuple[type, ...]] = {
    "long": (int,), "int": (int,), "double": (int, float), "string": (str,), "boolean": (bool,),
}
_FILLER: dict[str, Any] = {"long": 0, "int": 0, "double": 0.0, "string": "", "boolean": False}
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_FAST_ERRORS: tuple[type[BaseException], ...] = (
    KeyError, TypeError, ValueError, OverflowError, IndexError, UnicodeError, AttributeError,
    pa.ArrowException,
)
if np is not None:
    # varint byte k (0-based) of a value whose varint has L+1 bytes: used if k <= L,
    # continued (0x80) if k < L; L = how many of these limits the zigzag value reaches
    VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], np.uint64)
    _USED = np.arange(10)[:, None] <= np.arange(10)[None, :]
    _CONT = np.where(np.arange(10)[:, None] < np.arange(10)[None, :], 0x80, 0).astype(np.uint8)
    _U = {v: np.uint64(v) for v in (
        1, 2, 4, 7, 14, 56, 63, 0x7F, 0x00FFFFFFFFFFFFFF, 0x000000000FFFFFFF, 0x00FFFFFFF0000000,
        0x00003FFF00003FFF, 0x0FFFC0000FFFC000, 0x007F007F007F007F, 0x3F803F803F803F80,
    )}


_REQUIRED = object()


def _plan(avro: dict[str, Any]) -> list[tuple[str, str, int | None, Any]] | None:
    """Per field: (name, kind, index of null in its union or None, value when the
    row lacks the field: its default, None in a union, else _REQUIRED); None if
    some field's type is not one the column-wise encoder knows."""
    plan = []
    for f in avro.get("fields", []):
        t = f["type"]
        kind, null_index = flat_kind(t), None
        if kind is None and isinstance(t, list) and len(t) == 2 and "null" in t:
            null_index = t.index("null")
            kind = flat_kind(t[1 - null_index])
        if kind is None:
            return None
        # as fastavro's write_record: datum.get(name, field.get("default"))
        missing = f["default"] if "default" in f else (None if null_index is not None else _REQUIRED)
        plan.append((f["name"], kind, null_index, missing))
    return plan


# Each field becomes pieces: a (width, rows) byte matrix, column-major so
# that each of its planes (byte k of every row) is one contiguous array, and
# a (width, rows) mask of the bytes each row uses, or None when every row uses
# all of them. The planes are then written as the columns of one row-major
# (rows, total width) matrix, whose masked bytes, read in order, are the records.

if np is not None:
    _ARANGE = np.arange(_MAX_STRING_BYTES + 1, dtype=np.int32)[:, None]


def _varints(values: Any, n: int, mats: list, masks: list) -> None:
    """Zigzag varints of an int64 column."""
    z = ((values << 1) ^ (values >> 63)).view(np.uint64)
    top = int(z.max())
    if top < 0x80:  # one byte each
        mats.append(z.astype(np.uint8)[None, :])
        masks.append(None)
        return
    hi = (top.bit_length() - 1) // 7  # bytes - 1 of the longest
    lo = (max(int(z.min()), 1).bit_length() - 1) // 7
    width = hi + 1
    u = _U
    if width <= 3:
        planes = np.empty((width, n), np.uint8)
        planes[0] = z & u[0x7F]
        for k in range(1, width):
            planes[k] = (z >> u[7 * k]) & u[0x7F]
    else:
        # spread the low 56 bits into 8 bytes of 7 bits each (little-endian)
        x = z & u[0x00FFFFFFFFFFFFFF]
        x = (x & u[0x000000000FFFFFFF]) | ((x & u[0x00FFFFFFF0000000]) << u[4])
        x = (x & u[0x00003FFF00003FFF]) | ((x & u[0x0FFFC0000FFFC000]) << u[2])
        x = (x & u[0x007F007F007F007F]) | ((x & u[0x3F803F803F803F80]) << u[1])
        planes = x.astype("<u8", copy=False).view(np.uint8).reshape(n, 8).T
        if width > 8:
            extra = [((z >> u[56]) & u[0x7F]).astype(np.uint8)]
            if width > 9:
                extra.append((z >> u[63]).astype(np.uint8))
            planes = np.concatenate([planes, np.stack(extra)])
        else:
            planes = planes[:width]
    if lo == hi:  # all as long: continuation bits on all bytes but the last
        planes |= _CONT[:width, hi:hi + 1]
        mats.append(planes)
        masks.append(None)
    else:
        nbytes = np.searchsorted(VARINT_LIMITS, z, side="right")  # bytes - 1, per row
        mats.append(planes | _CONT[:width][:, nbytes])
        masks.append(_USED[:width][:, nbytes])


def _convert(col: list[Any], kind: str) -> Any:
    """A column's values as an array its pieces are made from, or None if some
    value needs fastavro (which may accept it differently, or refuse it)."""
    if kind == "string":
        arr = pa.array(col)  # str only makes a string array: bytes make a binary one
        if not isinstance(arr, pa.Array) or arr.type != pa.string() or arr.null_count:
            return None
        return arr
    if kind == "boolean":
        arr = np.array(col)
        return arr if arr.ndim == 1 and arr.dtype == np.bool_ else None
    if kind == "double":
        # array('d') takes what float() takes but str: fastavro writes float(value) too
        return np.frombuffer(array.array("d", col), np.float64)
    # array('q') takes ints (bools, numpy ints) within 64 bits and refuses floats
    values = np.frombuffer(array.array("q", col), np.int64)
    if kind == "int" and len(values) and (int(values.min()) < _INT32_MIN or int(values.max()) > _INT32_MAX):
        return None
    return values


def _pieces(values: Any, kind: str, n: int, mats: list, masks: list) -> bool:
    """Append the pieces of one converted column; False if it needs fastavro."""
    if kind == "string":
        _, offsets_buf, data_buf = values.buffers()
        offsets = np.frombuffer(offsets_buf, np.int32, n + 1, values.offset * 4)
        lens = offsets[1:] - offsets[:-1]
        longest = int(lens.max())
        if longest > _MAX_STRING_BYTES:
            return False
        if longest < 64:  # the length is one varint byte
            mats.append((lens * 2).astype(np.uint8)[None, :])
            masks.append(None)
        else:
            _varints(lens.astype(np.int64), n, mats, masks)
        if longest:
            data = np.frombuffer(data_buf, np.uint8)
            idx = offsets[:-1] + _ARANGE[:longest]
            np.minimum(idx, len(data) - 1, out=idx)
            mats.append(data[idx])
            masks.append(None if int(lens.min()) == longest else _ARANGE[:longest] < lens)
    elif kind == "boolean":
        mats.append(values.view(np.uint8)[None, :])
        masks.append(None)
    elif kind == "double":
        mats.append(values.astype("<f8", copy=False).view(np.uint8).reshape(n, 8).T)
        masks.append(None)
    else:
        _varints(values, n, mats, masks)
    return True


class Columns:
    """Rows converted column by column (per field: values, and where a union is null)."""

    __slots__ = ("count", "fields")

    def __init__(self, count: int, fields: list[tuple[Any, Any]]):
        self.count = count
        self.fields = fields


class RecordCodec:
    """One table's encoders: fastavro with pre-parsed schemas, and the column-wise path."""

    def __init__(self, table: TableSchema):
        # parse_schema's hint lets schemaless_writer skip re-parsing on every call
        self.parsed = fastavro.parse_schema(plain(table.avro))
        self.block_parsed = fastavro.parse_schema({"type": "array", "items": plain(table.avro)})
        self.row_header = ROW_MAGIC + table.fingerprint
        self.block_header = BLOCK_MAGIC + table.fingerprint
        self.plan = _plan(table.avro) if np is not None else None
        self._write = compile_record(table.avro)  # None: a field type outside the flat kinds

    def exact(self, row: dict[str, Any]) -> bytes | None:
        """The record's Avro bytes by the compiled writer (``ingest.rowcode``), or None when
        fastavro must see the row (a value of another type than its field's, a missing field)."""
        if self._write is None:
            return None
        try:
            return self._write(row)
        except NotExact:
            return None

    def record(self, row: dict[str, Any]) -> bytes:
        """The record's Avro bytes, as fastavro writes them; fastavro's error if it refuses it."""
        if self._write is not None:
            try:
                return self._write(row)
            except NotExact:
                pass
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self.parsed, row)
        return out.getvalue()

    def block(self, records: bytes, count: int) -> bytes:
        """A block message from ``count`` encoded records laid back to back."""
        if not count:
            return self.block_header + b"\x00"
        return b"".join((self.block_header, long_bytes(count), records, b"\x00"))

    def columns(self, rows: list[dict[str, Any]]) -> Columns | None:
        """The rows' values, converted for ``encode``; None if some need fastavro."""
        if self.plan is None or not rows:
            return None
        fields = []
        try:
            for name, kind, null_index, missing in self.plan:
                try:
                    col = [r[name] for r in rows]
                except KeyError:
                    if missing is _REQUIRED:
                        return None
                    col = [r.get(name, missing) for r in rows]
                isnull = None
                if null_index is not None:
                    allowed = _UNION_TYPES[kind]
                    isnull = np.array([v is None for v in col], bool)
                    if isnull.any():
                        filler = _FILLER[kind]
                        col = [filler if v is None else v for v in col]
                    if not all(type(v) in allowed for v in col):
                        return None
                values = _convert(col, kind)
                if values is None:
                    return None
                fields.append((values, isnull))
        except _FAST_ERRORS:
            return None
        return Columns(len(rows), fields)

    def encode(self, columns: Columns, prefix: bytes = b"", order: Any = None) -> Any:
        """(bytes as a uint8 array, end offset of each row) of the rows encoded back
        to back, each after ``prefix``, in ``order`` (a permutation) if given;
        None if some value needs fastavro after all (a string too long)."""
        n = columns.count
        mats: list[Any] = []
        masks: list[Any] = []
        if prefix:
            head = np.empty((len(prefix), n), np.uint8)
            head[:] = np.frombuffer(prefix, np.uint8)[:, None]
            mats.append(head)
            masks.append(None)
        assert self.plan is not None
        for (_, kind, null_index, _), (values, isnull) in zip(self.plan, columns.fields, strict=True):
            if null_index is None:
                if not _pieces(values, kind, n, mats, masks):
                    return None
                continue
            branch = np.where(isnull, 2 * null_index, 2 * (1 - null_index)).astype(np.uint8)
            mats.append(branch[None, :])
            masks.append(None)
            first = len(masks)
            if not _pieces(values, kind, n, mats, masks):
                return None
            for i in range(first, len(masks)):
                used = np.broadcast_to(~isnull, mats[i].shape)
                masks[i] = used if masks[i] is None else masks[i] & used
        width = sum(m.shape[0] for m in mats)
        mat = np.empty((n, width), np.uint8)
        mask = None
        lengths: Any = 0
        col = 0
        for planes, used in zip(mats, masks, strict=True):
            w = planes.shape[0]
            for k in range(w):
                mat[:, col + k] = planes[k]
            if used is None:
                lengths = lengths + w
            else:
                if mask is None:
                    mask = np.ones((n, width), bool)
                for k in range(w):
                    mask[:, col + k] = used[k]
                lengths = lengths + used.sum(axis=0)
            col += w
        if mask is None:  # every row the same length
            return (mat if order is None else mat[order]).reshape(-1), np.arange(1, n + 1) * width
        if order is not None:
            mat = mat[order]
            mask = mask[order]
            lengths = lengths[order]
        return mat[mask], np.cumsum(lengths)

    def records(self, rows: list[dict[str, Any]], prefix: bytes = b"", order: Any = None) -> Any:
        """``encode(columns(rows))``: None when some value needs fastavro."""
        columns = self.columns(rows)
        return None if columns is None else self.encode(columns, prefix, order)


def codec_for(table: TableSchema) -> RecordCodec:
    """The table's codec, made once and kept on the (frozen) schema object."""
    codec = table.__dict__.get("_codec")
    if codec is None:
        codec = table.__dict__["_codec"] = RecordCodec(table)
    return codec


def encode_row(table: TableSchema, row: dict[str, Any]) -> bytes:
    """A row message (single-object encoding): the one Avro writer of a row, the log's and
    the engine's outputs' alike."""
    codec = codec_for(table)
    return codec.row_header + codec.record(row)


def encode_block(table: TableSchema, rows: list[dict[str, Any]]) -> bytes:
    codec = codec_for(table)
    if len(rows) >= FAST_MIN_ROWS:
        fast = codec.records(rows)
        if fast is not None:
            return codec.block(fast[0].tobytes(), len(rows))
    return codec.block(b"".join([codec.record(r) for r in rows]), len(rows))


def control_of(headers: HeadersType | Sequence[tuple[str, str | bytes | None]] | None) -> str | None:
    """The control word of a fence message, None for a data message."""
    if headers:
        for key, value in headers.items() if isinstance(headers, dict) else headers:
            if key == CONTROL_HEADER:
                return value.decode() if isinstance(value, bytes) else str(value)
    return None
