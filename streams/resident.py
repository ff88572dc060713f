"""The open day in memory: each sym's rows, decoded, kept beside its RocksDB shard.

kdb+'s RDB holds the day in memory; ours holds it in RocksDB, which survives a
restart but makes every read decode every chunk of what it reads (a day of
small zero-latency chunks is thousands of them). So a shard keeps what it has
read, as Arrow, and adds each chunk it writes to a sym already held: a query
costs a concatenation, not a sweep of the disk. RocksDB stays the only copy
that counts; what is resident is exactly what is on disk for that (day, sym),
in log order, and is dropped whenever memory runs short (the next read goes
to disk again).

The budget is the worker's, shared by its shards; each shard gives back its
own least recently read syms first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
import pyarrow as pa

COMPACT_AFTER = 16  # chunks of one sym before they are concatenated into one (reads stay one copy)


class Budget:
    """Bytes of resident rows a worker may hold, across its shards."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        with self._lock:
            if self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class Resident:
    """One shard's resident rows: (date, sym) -> its chunks in log order. Not thread-safe:
    the shard calls it under its own lock."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self._chunks: OrderedDict[tuple[str, str], list[pa.Table]] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}
        self._whole: set[str] = set()  # days of which every sym on disk is resident

    def get(self, date: str, sym: str) -> list[pa.Table] | None:
        """The sym's rows of the day, or None if not resident (read the disk, then ``put``)."""
        key = (date, sym)
        chunks = self._chunks.get(key)
        if chunks is None:
            return None
        self._chunks.move_to_end(key)
        if len(chunks) > COMPACT_AFTER:
            chunks[:] = [pa.concat_tables(chunks, promote_options="default").combine_chunks()]
        return chunks

    def day(self, date: str) -> dict[str, list[pa.Table]] | None:
        """Every sym of the day, if all are resident."""
        if date not in self._whole:
            return None
        return {sym: chunks for (d, sym), chunks in self._chunks.items() if d == date}

    def put(self, date: str, sym: str, chunks: list[pa.Table]) -> bool:
        """Hold a sym's rows as read from disk, if the budget allows."""
        key = (date, sym)
        self._forget(key)
        size = sum(c.nbytes for c in chunks)
        if not self._reserve(size):
            return False
        self._chunks[key] = list(chunks)
        self._sizes[key] = size
        return True

    def put_day(self, date: str, by_sym: dict[str, list[pa.Table]]) -> None:
        """Hold a whole day as read from disk; marked whole only if every sym fitted."""
        held = [self.put(date, sym, chunks) for sym, chunks in by_sym.items()]
        # a later sym may have pushed out an earlier one to fit
        if all(held) and all((date, sym) in self._chunks for sym in by_sym):
            self._whole.add(date)

    def start_day(self, date: str) -> None:
        """A day the shard has nothing of yet: every chunk written to it is resident from
        the first (the open day is queried from its first rows; no read from disk first)."""
        if not any(d == date for d, _ in self._chunks):
            self._whole.add(date)

    def append(self, date: str, sym: str, chunk: pa.Table) -> None:
        """A chunk just written: added where the sym (or its whole day) is resident."""
        key = (date, sym)
        chunks = self._chunks.get(key)
        if chunks is None and date not in self._whole:
            return
        if chunk.get_total_buffer_size() > 2 * chunk.nbytes:
            # a slice of a write of many syms: its own copy, or the whole write stays in
            # memory as long as any sym's slice does, far past what the budget counts
            chunk = chunk.take(np.arange(chunk.num_rows))
        size = chunk.nbytes
        if not self._reserve(size, keep=key):
            self._forget(key)
            self._whole.discard(date)  # the day is no longer all here
            return
        if chunks is None:
            chunks = self._chunks[key] = []
            self._sizes[key] = 0
        chunks.append(chunk)
        self._sizes[key] += size

    def drop_day(self, date: str) -> None:
        for key in [k for k in self._chunks if k[0] == date]:
            self._forget(key)
        self._whole.discard(date)

    def clear(self) -> None:
        for key in list(self._chunks):
            self._forget(key)
        self._whole.clear()

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def _reserve(self, size: int, keep: tuple[str, str] | None = None) -> bool:
        """Take ``size`` bytes of the budget, giving back this shard's least recently read
        syms (never ``keep``) until it fits; False if it cannot."""
        while not self.budget.take(size):
            victim = next((k for k in self._chunks if k != keep), None)
            if victim is None:
                return False
            self._forget(victim)
        return True

    def _forget(self, key: tuple[str, str]) -> None:
        if key in self._chunks:
            del self._chunks[key]
            self.budget.give(self._sizes.pop(key))
            self._whole.discard(key[0])
