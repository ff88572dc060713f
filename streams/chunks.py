"""How a shard lays rows out in RocksDB, and the Arrow steps around it.

The layout gives what kdb+'s ``p#``/``g#`` give an RDB: one sym's rows for a
day are contiguous on disk and in log order, read without touching other syms.

Keys (bytes, RocksDB's sorted order)::

  R <date:10> <sym> 00 <offset:8 BE>   -> chunk: fingerprint(8) + Arrow IPC record batch
  S <date:10> <sym>                    -> that sym's day stats (rows, first, last, small chunks)
  M applied                            -> last applied log offset (8 BE)
  M arrow <fingerprint:8>              -> the Arrow schema chunks with that fingerprint use
  M day <date:10>                      -> "open" | "closed"
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.seq import INDEX_BITS, SEQ

APPLIED = b"Mapplied"
ARROW = b"Marrow"
DAY = b"Mday"
_STATS = struct.Struct(">qqqqq")


@dataclass
class SymStats:
    rows: int = 0
    first: int = 0
    last: int = 0
    small: int = 0  # chunks under SMALL_CHUNK_ROWS since the last merge
    small_from: int = 0  # the offset of the first of them

    def add(self, rows: int, first: int, last: int) -> None:
        self.first = first if self.rows == 0 else min(self.first, first)
        self.last = max(self.last, last)
        self.rows += rows

    def encode(self) -> bytes:
        return _STATS.pack(self.rows, self.first, self.last, self.small, self.small_from)

    @classmethod
    def decode(cls, raw: bytes) -> SymStats:
        return cls(*_STATS.unpack(raw))


def chunk_prefix(date: str, sym: str) -> bytes:
    return b"R" + date.encode() + sym.encode() + b"\x00"


def stats_key(date: str, sym: str) -> bytes:
    return b"S" + date.encode() + sym.encode()


def next_prefix(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def with_seq(table: pa.Table, offset: int) -> pa.Table:
    """A chunk as read: one stored before rows carried ``seq`` gets it from its key's offset
    (see ``streams.shard.Shard._decode``)."""
    if SEQ in table.schema.names:
        return table
    return table.append_column(pa.field(SEQ, pa.int64(), nullable=False),
                               pa.array((offset << INDEX_BITS) + np.arange(table.num_rows), pa.int64()))


def split_by_sym(record: pa.RecordBatch) -> list[tuple[str, pa.RecordBatch, int, int]]:
    """(sym, its rows in log order, first time, last time) for each sym of a record batch.

    One stable sort by sym (by its dictionary code: a numeric sort, not a string one), then
    each sym's rows taken by their positions: the cost per sym is a copy of its own rows, not
    a scan, whatever the number of syms in a message. The syms come in the order they first
    appear.
    """
    syms = record.column(record.schema.get_field_index("sym"))
    times = record.column(record.schema.get_field_index("time")).cast(pa.int64()).to_numpy()
    if syms.null_count == 0 and len(syms) and pc.all(pc.equal(syms, syms[0])).as_py():
        return [(syms[0].as_py(), record, int(times.min()), int(times.max()))]
    encoded = pc.dictionary_encode(syms)  # syms as small integers: sorting them is a numeric sort
    codes = encoded.indices.fill_null(-1).to_numpy()  # (a null sym, if any, is a group of its own)
    order = np.argsort(codes, kind="stable")  # stable: each sym's rows keep their log order
    codes = codes[order]
    times = times[order]
    starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1])
    dictionary = encoded.dictionary.to_pylist()
    names: list[Any] = [dictionary[c] if c >= 0 else None for c in codes[starts].tolist()]
    lows = np.minimum.reduceat(times, starts)
    highs = np.maximum.reduceat(times, starts)
    ends = [*starts[1:].tolist(), len(codes)]
    # each sym's rows taken on their own: buffers of its own (a resident chunk holds no other
    # sym's rows in memory), for the price of one copy of the record in all
    return [
        (sym, record.take(pa.array(order[start:end])), int(low), int(high))
        for sym, start, end, low, high in zip(names, starts.tolist(), ends, lows, highs, strict=True)
    ]


def concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate chunks written under different schema versions (fields added since).
    Chunks of one schema (nearly always) are joined as they are: unifying the schemas costs
    per chunk, and a day is read as thousands of chunks."""
    if not tables:
        raise ValueError("nothing to concatenate")
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables[1:]):
        return pa.concat_tables(tables)
    return pa.concat_tables(tables, promote_options="default")
