"""Publishing a frame (kdb+'s feeds publish columns): a DataFrame, an Arrow table or a dict
of arrays encoded a column at a time, the log byte for byte what the same rows published one
by one would make. A part of the tickerplant (ingest/publisher.py), kept apart for its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ingest.framing import RecordCodec, codec_for, np
from ingest.schemas import TableSchema
from ingest.topics import partition_for

if TYPE_CHECKING:
    from ingest.publisher import Tickerplant

FRAME_SLICE = 65_536  # publish_frame encodes a frame this many rows at a time


def publish_frame(tp: Tickerplant, table: str, frame: Any) -> int:
    """Publish a frame's rows, columns at a time (kdb+'s feeds publish columns): a pandas
    or polars DataFrame, a pyarrow Table or RecordBatch, or a dict of numpy arrays or lists.

    The log is byte for byte what ``publish_rows`` of the same rows writes: the same
    partitions (murmur2 of the sym), the same blocks (batch mode) or messages (zero),
    in row order per sym. A frame that cannot be published as it is (a column that is no
    field, a required field missing, a column of the wrong type, a row without a sym)
    raises ``ingest.frames.FrameError`` (a ValueError) naming the column, before anything
    is sent; a row with a null in a non-nullable field goes to the dead-letter topic with
    the reason, as ``publish_rows`` sends it. Returns the rows published.
    """
    from ingest.frames import to_columns

    schema = tp.catalog[table]
    codec = codec_for(schema)
    got = to_columns(schema, codec, frame)
    n = got.columns.count
    if not n:
        return 0
    parts, keys = _frame_partitions(tp, table, got.syms)
    keep = None
    if got.refused is not None:
        keep = ~got.refused
        for i in np.flatnonzero(got.refused).tolist():
            row = got.table.slice(i, 1).to_pylist()[0]
            tp._reject(schema, row, ValueError(got.reasons[i]))
    # a slice at a time: the producer's threads compress and send a slice's blocks while
    # the next is encoded, and the encoder's matrices stay a few MB
    for lo in range(0, n, FRAME_SLICE):
        piece = got if n <= FRAME_SLICE else got.slice(lo, min(n, lo + FRAME_SLICE))
        p_parts = parts[lo:lo + FRAME_SLICE]
        p_keep = None if keep is None else keep[lo:lo + FRAME_SLICE]
        if tp.mode == "zero":
            _send_frame_rows(tp, schema, codec, piece, p_parts, (keys[0][lo:lo + FRAME_SLICE], keys[1]), p_keep)
            tp.producer.poll(0)
        else:
            with tp._lock:
                tp._encode_pending(table)  # rows published before these go first
                _add_frame(tp, schema, codec, piece, p_parts, p_keep)
            tp.producer.poll(0)
    return n if keep is None else int(keep.sum())

def _frame_partitions(tp: Tickerplant, table: str, syms: Any) -> tuple[Any, tuple[Any, list[bytes]]]:
    """Each row's partition (an intp array) and the index of its sym in ``keys`` (UTF-8 syms)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(syms)
    names = encoded.dictionary.to_pylist()
    cache = tp._sym_cache[table]
    zero = tp.mode == "zero"
    parts_of_sym: list[int] = []
    for sym in names:
        got = cache.get(sym)  # zero mode caches (partition, key), batch mode the partition
        if got is None:
            part = partition_for(sym, tp.partitions[table])
            cache[sym] = (part, sym.encode()) if zero else part
        else:
            part = got[0] if zero else got
        parts_of_sym.append(part)
    index = encoded.indices.to_numpy(zero_copy_only=False)
    parts = np.asarray(parts_of_sym, np.intp)[index]
    return parts, (index, [s.encode() for s in names])

def _frame_rows(codec: RecordCodec, got: Any, rows: Any) -> list[dict[str, Any]]:
    """Rows of the frame as dicts of the values as converted (times as ns, defaults filled),
    only for the fastavro fallback (a string over 256 bytes)."""
    assert codec.plan is not None
    columns: dict[str, list[Any]] = {}
    for (name, *_), (values, isnull) in zip(codec.plan, got.columns.fields, strict=True):
        picked = values if rows is None else values.take(rows)  # numpy or Arrow
        col = picked.to_pylist() if hasattr(picked, "to_pylist") else picked.tolist()
        if isnull is not None:
            nulls = (isnull if rows is None else isnull[rows]).tolist()
            col = [None if null else v for v, null in zip(col, nulls, strict=True)]
        columns[name] = col
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]

def _add_frame(tp: Tickerplant, schema: TableSchema, codec: RecordCodec, got: Any, parts: Any, keep: Any) -> None:
    """Batch mode: encode the rows by partition (stable: row order within one) and append
    them to their partitions' blocks, as ``_encode_pending`` does for row dicts."""
    table = schema.name
    rows = np.flatnonzero(keep) if keep is not None else None
    part_of = parts if rows is None else parts[rows]
    order = np.argsort(part_of, kind="stable")
    if rows is not None:
        order = rows[order]
    fast = codec.encode(got.columns, order=order) if len(order) else None
    if fast is None:  # a string over 256 bytes: fastavro for these rows, in row order as publish_rows
        if len(order):
            tp._encode_slow(schema, codec, _frame_rows(codec, got, rows), part_of.tolist())
        return
    tp._add_by_partition(schema, table, fast, part_of)

def _send_frame_rows(tp: Tickerplant, schema: TableSchema, codec: RecordCodec, got: Any, parts: Any,
                     keys: tuple[Any, list[bytes]], keep: Any) -> None:
    """Zero-latency mode: a message per row, in row order, key = sym."""
    rows = np.flatnonzero(keep) if keep is not None else None
    fast = codec.encode(got.columns, prefix=tp._headers[schema.name][0], order=rows)
    index, names = keys
    sym_index = (index if rows is None else index[rows]).tolist()
    part_list = (parts if rows is None else parts[rows]).tolist()
    if fast is None:
        dicts = _frame_rows(codec, got, rows)
        for row, part, k in zip(dicts, part_list, sym_index, strict=True):
            tp._send_row(schema, part, row, names[k])
        return
    topic = tp._topics[schema.name]
    callback = tp._row_callback[schema.name]
    produce = tp.producer.produce
    data = fast[0].tobytes()
    start = 0
    for end, part, k in zip(fast[1].tolist(), part_list, sym_index, strict=True):
        value = data[start:end]
        start = end
        try:
            produce(topic, value, names[k], part, callback)
        except BufferError:
            tp._produce(schema.name, part, names[k], value, 1)
