"""A block message decoded straight into Arrow columns, without a Python object per value.

fastavro makes a dict per row; in batch mode that, and building Arrow back
from the dicts, was most of an RDB's ingest. A block's body (``ingest.framing``:
a count, the records back to back, a 0) is exactly the data block of an Avro
Object Container File, so wrapped in an in-memory OCF header naming the writer
schema it is read by polars' native Avro reader into columns at once.

Only what is sure to read the same as fastavro takes this path; anything else
gets ``None`` and the caller decodes the message as before (``Decoder.decode``),
which also gives the exact DecodeError of a corrupt one:

- the writer's fields are plain primitives (long, int, double, float, string)
  or ["null", T] unions of them (no records; of logical types only timestamp-nanos,
  read as its long);
- each reader field (without aliases) is in the writer with the same
  primitive (a nullable reader of a plain writer column is fine), or absent
  from it with a default (filled in, as fastavro's resolution does) —
  otherwise fastavro decides;
- the body is one array block (positive count, the records, a final 0),
  polars reads that many rows, and the records' canonical encoded length,
  worked out from the decoded columns, is exactly the bytes they came in.
  polars does not check that a block's rows use up its bytes (trailing junk
  is silently accepted), so this is the check that the bytes were the rows:
  a corrupt body, a non-canonical varint or anything polars reads
  differently fails it and goes the fastavro way. polars refuses invalid
  UTF-8 itself.

The columns keep the raw Avro values (time an int64, not yet a timestamp) so
the rules (``ingest.validate``) see what fastavro would have given, and a
refused row becomes the very dict fastavro makes: the writer's fields the
reader knows, in the writer's order, then the reader's filled-in defaults.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ingest.framing import VARINT_LIMITS, long_bytes
from ingest.schemas import TableSchema, plain

# no boolean: a byte other than 0 or 1 may read differently here and in fastavro
_PRIMITIVES = {"long": pa.int64(), "int": pa.int32(), "double": pa.float64(), "float": pa.float32(),
               "string": pa.string()}
_FIXED_BYTES = {"double": 8, "float": 4}
_SYNC = bytes(range(1, 17))  # any 16 bytes: the OCF's sync marker, written and checked by polars
def _primitive(avro_type: Any) -> tuple[str, bool] | None:
    """(primitive, nullable) of a plain field type, None for anything else."""
    if isinstance(avro_type, str):
        return (avro_type, False) if avro_type in _PRIMITIVES else None
    if isinstance(avro_type, list) and len(avro_type) == 2 and "null" in avro_type:
        other = avro_type[1 - avro_type.index("null")]
        if isinstance(other, str) and other in _PRIMITIVES:
            return other, True
    return None


def _null_branch(avro_type: Any) -> int:
    """The branch index of null in a ["null", T] (or [T, "null"]) union."""
    return avro_type.index("null")


def _varint_bytes(values: np.ndarray) -> int:
    """Bytes of the canonical zigzag varints of an int64 column."""
    if not len(values):
        return 0
    z = ((values << 1) ^ (values >> 63)).view(np.uint64)
    low, high = np.searchsorted(VARINT_LIMITS, [z.min(), z.max()], side="right")
    if low == high:  # all as long (time stamps, mostly): no need to size each
        return len(z) * (int(low) + 1)
    return len(z) + int(np.searchsorted(VARINT_LIMITS, z, side="right").sum())


@dataclass
class Block:
    """A decoded block: ``columns`` in the reader's field order, raw Avro values (time int64);
    ``row_keys``: the fields of fastavro's dict of a row, in its order."""

    columns: pa.Table
    row_keys: list[str]

    def rows(self, indices: Any) -> list[dict[str, Any]]:
        """The rows at ``indices`` as fastavro's dicts (for the rules' reasons and dead letters)."""
        return self.columns.select(self.row_keys).take(pa.array(indices, pa.int64())).to_pylist()


def preload() -> None:
    """Import what decoding blocks imports on first use (polars; pandas, which pyarrow imports
    at its first conversion of Python or NumPy values) now: a role that reads blocks calls this
    as its reader starts, so a catch-up's first blocks do not wait for the imports, which hold
    the GIL."""
    import pandas  # noqa: F401
    import polars  # noqa: F401


class BlockReader:
    """Reads the blocks of one writer schema into one reader table's columns."""

    def __init__(self, writer: TableSchema, reader: TableSchema):
        self.reader = reader
        self.ok = False
        self.writer_fields: list[tuple[str, str, bool]] = []
        self.null_branches: list[int] = []  # per writer field: where null is in its union, -1 if none
        writer_fields = plain(writer.avro).get("fields", [])  # logical types: the same bytes, read raw
        self.writer_types = [f["type"] for f in writer_fields]
        for f in writer_fields:
            got = _primitive(f["type"])
            if got is None:
                return
            self.writer_fields.append((f["name"], *got))
            self.null_branches.append(_null_branch(f["type"]) if got[1] else -1)
        kinds = {name: (kind, nullable) for name, kind, nullable in self.writer_fields}
        # per reader field: ("column", name) or ("default", value)
        self.plan: list[tuple[str, str, Any]] = []
        # the raw Arrow type of each reader column: its Avro primitive's (time stays an int64)
        types = {}
        for f in plain(reader.avro).get("fields", []):
            mine = _primitive(f["type"])
            if mine is None or "aliases" in f:
                return  # aliases: fastavro matches fields by them too
            types[f["name"]] = _PRIMITIVES[mine[0]]
            theirs = kinds.get(f["name"])
            if theirs is not None:
                if theirs[0] != mine[0] or (theirs[1] and not mine[1]):
                    return  # a promotion or a null into a non-null column: fastavro's to resolve
                self.plan.append(("column", f["name"], None))
            elif "default" in f:
                self.plan.append(("default", f["name"], f["default"]))
            else:
                return  # fastavro refuses the message (no default): let it say so
        self.row_keys = [n for n, _, _ in self.writer_fields if any(p[1] == n for p in self.plan)]
        self.row_keys += [name for how, name, _ in self.plan if how == "default"]
        self.types = types
        schema = {"type": "record", "name": "block",
                  "fields": [{"name": n, "type": t}  # unions as written: the branch order counts
                             for (n, _, _), t in zip(self.writer_fields, self.writer_types, strict=True)]}
        text = json.dumps(schema).encode()
        key = b"avro.schema"
        self.header = b"".join((b"Obj\x01", long_bytes(1), long_bytes(len(key)), key, long_bytes(len(text)), text,
                                b"\x00", _SYNC))
        self.ok = True

    def read(self, value: bytes, start: int) -> Block | None:
        """The block whose body starts at ``start`` of ``value``, or None (decode it with fastavro)."""
        if not self.ok or value[-1:] != b"\x00":
            return None
        count, at = _read_long(value, start)
        if count is None or count <= 0:
            return None
        records = memoryview(value)[at:len(value) - 1]
        ocf = b"".join((self.header, long_bytes(count), long_bytes(len(records)), records, _SYNC))
        import polars as pl  # on first use (a third of a second to import, for every CLI command else)

        try:
            frame = pl.read_avro(io.BytesIO(ocf))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - corrupt or unusual: fastavro says what is wrong
            return None  # (a panic in polars' reader is a BaseException: pyo3's PanicException)
        if frame.height != count or frame.width != len(self.writer_fields):
            return None
        raw = frame.to_arrow()
        size = 0
        for (_, kind, nullable), col in zip(self.writer_fields, raw.columns, strict=True):
            size += _encoded_size(col, kind, nullable)
            if not nullable and col.null_count:
                return None
        if size != len(records):
            return None
        if any(b >= 0 for b in self.null_branches) and not self._branches_ok(raw, records):
            return None
        arrays = []
        for how, name, default in self.plan:
            target = self.types[name]
            if how == "column":
                arrays.append(raw.column(name).cast(target))
            else:
                arrays.append(pa.repeat(pa.scalar(default, target), count))
        names = [name for _, name, _ in self.plan]
        return Block(pa.Table.from_arrays(arrays, names=names), self.row_keys)

    def _branches_ok(self, raw: pa.Table, records: memoryview) -> bool:
        """Whether each union's branch byte is the one its value says (polars takes any
        branch but null's as the value's; fastavro refuses a branch past the union's two).
        The byte count matching, every value's place in the records is known from the
        decoded columns."""
        n = raw.num_rows
        data = np.frombuffer(records, np.uint8)
        sizes = [_value_sizes(col, kind) for (_, kind, _), col in zip(self.writer_fields, raw.columns, strict=True)]
        widths = [size + (1 if branch >= 0 else 0) for size, branch in zip(sizes, self.null_branches, strict=True)]
        at = np.zeros(n, np.int64)
        if n > 1:
            at[1:] = np.cumsum(sum(widths))[:-1]  # where each row starts
        for col, width, branch in zip(raw.columns, widths, self.null_branches, strict=True):
            if branch >= 0:
                isnull = (col.combine_chunks().is_null().to_numpy(zero_copy_only=False) if col.null_count
                          else np.zeros(n, bool))
                expected = np.where(isnull, 2 * branch, 2 * (1 - branch))
                if not np.array_equal(data[at], expected):
                    return False
            at = at + width
        return True


def _value_sizes(col: pa.ChunkedArray, kind: str) -> np.ndarray:
    """Bytes of each row's value of a decoded column (0 for a null)."""
    n = len(col)
    arr = col.combine_chunks()
    valid = np.ones(n, bool) if not arr.null_count else arr.is_valid().to_numpy(zero_copy_only=False)
    if kind in _FIXED_BYTES:
        sizes = np.full(n, _FIXED_BYTES[kind], np.int64)
    elif kind == "string":
        width = 8 if pa.types.is_large_string(arr.type) else 4
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if width == 8 else np.int32, n + 1, arr.offset * width)
        lengths = np.diff(offsets).astype(np.int64)
        sizes = lengths + np.searchsorted(VARINT_LIMITS, (lengths << 1).view(np.uint64), side="right") + 1
    else:
        values = (arr.fill_null(0) if arr.null_count else arr).to_numpy().astype(np.int64)
        z = ((values << 1) ^ (values >> 63)).view(np.uint64)
        sizes = np.searchsorted(VARINT_LIMITS, z, side="right").astype(np.int64) + 1
    return np.where(valid, sizes, 0)


def _read_long(value: bytes, at: int) -> tuple[int | None, int]:
    """(the zigzag varint at ``at``, where it ends), (None, at) if cut short or too long."""
    z = shift = 0
    for i in range(at, min(at + 10, len(value))):
        b = value[i]
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), i + 1
        shift += 7
    return None, at


def _encoded_size(col: pa.ChunkedArray, kind: str, nullable: bool) -> int:
    """Bytes of a decoded column in Avro's canonical encoding."""
    n = len(col)
    valid = col.drop_null() if nullable and col.null_count else col
    size = n if nullable else 0  # a union's branch index: one byte
    if kind in _FIXED_BYTES:
        return size + _FIXED_BYTES[kind] * len(valid)
    if kind == "string":
        for chunk in valid.chunks:  # the lengths straight from the offsets buffer
            width = 8 if pa.types.is_large_string(chunk.type) else 4
            offsets = np.frombuffer(chunk.buffers()[1], np.int64 if width == 8 else np.int32,
                                    len(chunk) + 1, chunk.offset * width)
            size += int(offsets[-1] - offsets[0])
            lengths = np.diff(offsets)
            size += len(lengths) if not len(lengths) or lengths.max() < 64 else _varint_bytes(
                lengths.astype(np.int64))
        return size
    return size + _varint_bytes(valid.to_numpy().astype(np.int64))
