"""Reading an RDB worker's shards: a table's rows by sym and time range, counts, last rows.

Pure functions over shards, shared by the worker's HTTP views and tests.
Rows come back in log order per sym (time order for a feed that publishes in
time order), filtered to ``start <= time < end`` and to the asked columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streams.chunks import concat
from streams.shard import Shard

MIN_BATCH_ROWS = 16384  # an answer's chunks smaller than this on average are sent as one batch
SYM = "sym"
SYM_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


class QueryError(ValueError):
    """A bad parameter: the message names it."""


@dataclass(frozen=True)
class RowsQuery:
    table: str
    date: str
    syms: list[str] | None = None
    start: int | None = None  # ns, inclusive
    end: int | None = None  # ns, exclusive
    columns: list[str] | None = None


def select(table: pa.Table, query: RowsQuery, schema: pa.Schema) -> pa.Table:
    if query.start is not None or query.end is not None:
        times = table.column("time").cast(pa.int64())
        mask = None
        if query.start is not None:
            mask = pc.greater_equal(times, query.start)
        if query.end is not None:
            upper = pc.less(times, query.end)
            mask = upper if mask is None else pc.and_(mask, upper)
        table = table.filter(mask)
    if query.columns:
        unknown = [c for c in query.columns if c not in schema.names]
        if unknown:
            raise QueryError(f"unknown column(s) {', '.join(unknown)}; columns: {', '.join(schema.names)}")
        table = table.select(query.columns)
    return table


def empty(schema: pa.Schema, columns: list[str] | None) -> pa.Table:
    table = schema.empty_table()
    return table.select(columns) if columns else table


def read_rows(shards: Iterable[Shard], query: RowsQuery, schema: pa.Schema, sym_dictionary: bool = False) -> pa.Table:
    """The rows ``query`` asks for. ``sym_dictionary``: ``sym`` as one dictionary column of
    the syms read, its codes built from each chunk's sym (``Shard.read_by_sym``: a chunk
    holds one sym) without reading the strings; an engine reads it as a low-cardinality
    column and groups or joins on it without hashing every row's text (the embedded chDB
    of a partial, streams/partial.py)."""
    keyed = sym_dictionary and SYM in schema.names
    chunks: list[pa.Table] = []
    syms: list[str] = []  # keyed: each chunk's sym
    for shard in shards:
        if keyed:
            for sym, chunk in shard.read_by_sym(query.date, query.syms):
                syms.append(sym)
                chunks.append(chunk)
        else:
            chunks.extend(shard.read(query.date, query.syms))
    if not chunks:
        if keyed:
            i = schema.get_field_index(SYM)
            schema = schema.set(i, schema.field(i).with_type(SYM_DICTIONARY))
        return empty(schema, query.columns)
    table = _conform(concat(chunks), schema)
    if keyed:
        table = _sym_as_dictionary(table, syms, [c.num_rows for c in chunks])
    return select(table, query, table.schema)


def _sym_as_dictionary(table: pa.Table, syms: list[str], lengths: list[int]) -> pa.Table:
    """``table`` (its chunks' rows, ``lengths[i]`` of ``syms[i]`` each) with ``sym`` one
    dictionary column: one dictionary for all, so a reader unifies none."""
    names = sorted(set(syms))
    code = {sym: i for i, sym in enumerate(names)}
    codes = np.repeat(np.fromiter((code[s] for s in syms), np.int32, len(syms)), lengths)
    column = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names, pa.string()))
    i = table.schema.get_field_index(SYM)
    return table.set_column(i, table.schema.field(i).with_type(SYM_DICTIONARY), column)


def read_last(shards: Iterable[Shard], query: RowsQuery, schema: pa.Schema) -> pa.Table:
    rows: list[pa.Table] = []
    for shard in shards:
        for sym in query.syms if query.syms is not None else shard.syms(query.date):
            last = shard.last(query.date, sym)
            if last is not None:
                rows.append(last)
    if not rows:
        return empty(schema, query.columns)
    table = _conform(concat(rows), schema).combine_chunks()  # one batch, not one per sym
    return table.select(query.columns) if query.columns else table


def counts(shards: Iterable[Shard], date: str, syms: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for shard in shards:
        for sym, stats in shard.sym_stats(date).items():
            if syms is None or sym in syms:
                out[sym] = stats.rows
    return out


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Chunks from an older schema lack new fields: add them as nulls, in schema order."""
    if table.schema.equals(schema):
        return table
    arrays = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def to_ipc(table: pa.Table) -> bytearray:
    """``table`` as an Arrow IPC stream, written once into a buffer of the exact size.

    Through ``io.BytesIO`` the writer's many small writes are Python calls (~4 ms for
    150k rows in 75 chunks, against ~0.6 ms here). Small chunks (a shard gives one per
    stored chunk) are sent as one batch (``batched``): combining costs no more than
    writing them one by one.
    """
    table = batched(table)
    size = pa.MockOutputStream()
    _write_stream(size, table)
    out = bytearray(size.size())  # bytes-like for the HTTP answer, written in place
    _write_stream(pa.FixedSizeBufferWriter(pa.py_buffer(out)), table)
    return out


def batched(table: pa.Table) -> pa.Table:
    """Chunks smaller than ``MIN_BATCH_ROWS`` on average combined into one: whoever reads
    them pays per batch (ClickHouse a block each, far more than the copy costs). Big chunks
    are kept as they are (no copy). The columns may be chunked apart (``sym`` made whole by
    ``read_rows``): the most chunked one decides."""
    chunks = max((c.num_chunks for c in table.columns), default=0)
    if chunks > 1 and table.num_rows < chunks * MIN_BATCH_ROWS:
        return table.combine_chunks()
    return table


def _write_stream(sink: pa.NativeFile, table: pa.Table) -> None:
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()
