"""A shard's tail: the small runs it applied but has not written to RocksDB yet.

Zero-latency mode sends a message per row; writing each as it comes would cost
a chunk, a stats record and (every 32) a merge per sym per message. Held here,
a run is queryable at once and written with the runs after it as one batch
once the tail is big or old enough (``Shard.flush``). What a crash loses of it
was never in the shard's durable offset, so it is read again from the log.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from streams.chunks import concat, split_by_sym


class Tail:
    """Runs of (date, rows) in log order, and per date the syms they hold."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, pa.Table]] = []
        self.rows = 0
        self.since = 0.0  # monotonic time of the oldest thing not on disk (set by the shard)
        self.syms: dict[str, set[str]] = {}  # date -> syms with rows in the tail
        self._version = 0  # changes with the tail: the key of the split kept for queries
        self._split: tuple[Any, dict[str, pa.Table]] = (None, {})

    def add(self, date: str, table: pa.Table) -> list[tuple[str, int]]:
        """Hold a run; its rows' (sym, time), for the shard's sym stats."""
        self.runs.append((date, table))
        self.rows += table.num_rows
        self._version += 1
        syms = table.column("sym").to_pylist()
        times = table.column("time").cast(pa.int64()).to_pylist()
        self.syms.setdefault(date, set()).update(syms)
        return list(zip(syms, times, strict=True))

    def take(self) -> list[tuple[str, pa.Table]]:
        """Every run, the tail emptied (they are being written)."""
        runs, self.runs, self.rows, self.syms = self.runs, [], 0, {}
        self._version += 1
        return runs

    def holds(self, date: str, sym: str) -> bool:
        return sym in self.syms.get(date, ())

    def chunks(self, date: str) -> dict[str, pa.Table]:
        """The rows of ``date`` by sym (log order), split once per change of the tail."""
        key = (date, self._version)
        if self._split[0] != key:
            tables = [t for d, t in self.runs if d == date]
            chunks: dict[str, pa.Table] = {}
            if tables:
                record = concat(tables).combine_chunks().to_batches()[0]
                chunks = {sym: pa.Table.from_batches([chunk]) for sym, chunk, _, _ in split_by_sym(record)}
            self._split = (key, chunks)
        return self._split[1]
