"""Sorting a day by sym, then time, in bounded memory.

The order is total and so the partition is repeatable: (sym, time, log
position). The input comes in log order (partition by partition, offsets
ascending; a sym lives in one partition), so a *stable* sort on (sym, time)
breaks ties by log position, and two write-downs of the same day, or a
write-down and a backfill, lay every row in the same place. The log position
is a column of the rows, ``seq`` (``ingest.seq``), written with them: within a
sym, file order is (time, seq) order, and queries order ties by it as kdb+
orders them by publish order.

How (measured on 10M trade rows, 2 cores; ``bench/hdb.py``):

- syms become ranks in the day's sorted sym list (one hash pass:
  ``dictionary_encode``), and the output keeps sym as that dictionary;
- a stable radix sort of the ranks (numpy sorts int16 keys by radix in one
  pass), then a check that time rises within each sym, which it does unless
  rows arrived out of order; only the syms where it does not are re-sorted by
  time. About 0.6 s where ``Table.sort_by([sym, time])`` takes about 9 s.

A day larger than the memory budget is cut into runs that fit; each run is
sorted as above and spilled to an Arrow IPC file, and the runs are merged
block by block (``merge_runs``): each round emits every row not greater than
the smallest "last key" of the runs' current blocks, so memory is a block per
run, whatever the day's size. Runs are contiguous pieces of the log, so ties
between runs go to the earlier run, which keeps the merge's output
identical, row for row, to the in-memory sort's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SYM_TYPE = pa.dictionary(pa.int32(), pa.string())
MERGE_BLOCK_ROWS = 64 * 1024  # rows per run batch, read one at a time by the merge


def output_schema(schema: pa.Schema) -> pa.Schema:
    """The table's Arrow schema as written: sym dictionary-encoded."""
    return schema.set(schema.get_field_index("sym"), pa.field("sym", SYM_TYPE, nullable=False))


def times_of(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    col = table.column("time")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col.view(pa.int64()).to_numpy() if pa.types.is_timestamp(col.type) else col.to_numpy()


def sort_order(rank: np.ndarray, time: np.ndarray) -> np.ndarray:
    """The stable permutation ordering rows by (rank, time)."""
    n = len(rank)
    if n == 0:
        return np.empty(0, np.int64)
    nsyms = int(rank.max()) + 1
    key = rank.astype(np.int16) if nsyms < (1 << 15) else rank
    order = np.argsort(key, kind="stable")  # radix sort for int16
    t = time[order]
    falls = np.flatnonzero(t[1:] < t[:-1])  # time drops between i and i+1
    if falls.size == 0:
        return order
    counts = np.bincount(rank, minlength=nsyms)
    ends = np.cumsum(counts)
    starts = ends - counts
    first = np.zeros(n + 1, bool)
    first[starts[counts > 0]] = True
    falls = falls[~first[falls + 1]]  # a drop across two syms is no disorder
    if falls.size == 0:
        return order
    groups = np.unique(np.searchsorted(ends, falls + 1, side="right"))
    if len(groups) > 64 and len(groups) * 4 > nsyms:
        return np.lexsort((time, rank))  # disorder everywhere: one stable two-key sort
    for g in groups:
        s, e = starts[g], ends[g]
        sub = order[s:e]
        order[s:e] = sub[np.argsort(time[sub], kind="stable")]
    return order


def ranks(syms: pa.Array | pa.ChunkedArray, sorted_syms: pa.Array) -> np.ndarray:
    """Each row's sym as its index in ``sorted_syms`` (which must hold every sym)."""
    idx = pc.index_in(syms, value_set=sorted_syms)
    if isinstance(idx, pa.ChunkedArray):
        idx = idx.combine_chunks()
    if idx.null_count:
        raise ValueError("a sym is missing from the day's sym list")
    return idx.to_numpy().astype(np.int32, copy=False)


def sorted_syms_of(syms: pa.Array | pa.ChunkedArray) -> pa.Array:
    unique = pc.unique(syms)
    if isinstance(unique, pa.ChunkedArray):
        unique = unique.combine_chunks()
    return unique.take(pc.sort_indices(unique))


def sort_table(table: pa.Table, sorted_syms: pa.Array | None = None) -> pa.Table:
    """``table`` by (sym, time, input order), sym as a dictionary over ``sorted_syms``."""
    sym = table.column("sym")
    if isinstance(sym.type, pa.DictionaryType):
        sym = sym.cast(pa.string())
    if sorted_syms is None:
        encoded = pc.dictionary_encode(sym.combine_chunks() if isinstance(sym, pa.ChunkedArray) else sym)
        by_value = pc.sort_indices(encoded.dictionary)
        sorted_syms = encoded.dictionary.take(by_value)
        rank_of_code = np.empty(len(sorted_syms), np.int32)
        rank_of_code[by_value.to_numpy()] = np.arange(len(sorted_syms), dtype=np.int32)
        rank = rank_of_code[encoded.indices.to_numpy()] if len(encoded.indices) else np.empty(0, np.int32)
    else:
        rank = ranks(sym, sorted_syms)
    order = sort_order(rank, times_of(table))
    out = table.drop_columns(["sym"]).take(order)
    sym_sorted = pa.DictionaryArray.from_arrays(pa.array(rank[order], pa.int32()), sorted_syms)
    out = out.add_column(table.schema.get_field_index("sym"), pa.field("sym", SYM_TYPE, nullable=False), sym_sorted)
    return out


# -- the external path ----------------------------------------------------------


@dataclass
class _Run:
    """One sorted run on disk, read a block at a time."""

    index: int
    path: Path
    sorted_syms: pa.Array
    reader: pa.ipc.RecordBatchStreamReader = field(init=False)
    block: pa.Table | None = None
    rank: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    time: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pos: int = 0

    def __post_init__(self) -> None:
        self.reader = pa.ipc.open_stream(pa.memory_map(str(self.path)))

    def load(self) -> bool:
        """The next block; False when the run is used up."""
        while True:
            try:
                batch = self.reader.read_next_batch()
            except StopIteration:
                self.block = None
                return False
            if batch.num_rows:
                break
        self.block = pa.Table.from_batches([batch])
        self.rank = ranks(batch.column("sym"), self.sorted_syms)
        self.time = times_of(batch)
        self.pos = 0
        return True

    @property
    def last(self) -> tuple[int, int]:
        return int(self.rank[-1]), int(self.time[-1])

    def count_upto(self, rank: int, time: int, inclusive: bool) -> int:
        """Rows from ``pos`` whose key is below (rank, time), or at it if ``inclusive``."""
        rk, tm = self.rank[self.pos:], self.time[self.pos:]
        lo = int(np.searchsorted(rk, rank, "left"))
        hi = int(np.searchsorted(rk, rank, "right"))
        return lo + int(np.searchsorted(tm[lo:hi], time, "right" if inclusive else "left"))

    def take(self, n: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        assert self.block is not None
        piece = (self.block.slice(self.pos, n), self.rank[self.pos:self.pos + n], self.time[self.pos:self.pos + n])
        self.pos += n
        return piece

    def close(self) -> None:
        self.reader = None


def merge_runs(paths: list[Path], sorted_syms: pa.Array) -> Iterator[pa.Table]:
    """The rows of sorted runs, merged by (sym, time, run order), block by block."""
    runs = [_Run(i, p, sorted_syms) for i, p in enumerate(paths)]
    active = [r for r in runs if r.load()]
    while active:
        b_rank, b_time, b_index = min((*r.last, r.index) for r in active)
        tables, rks, tms = [], [], []
        for r in active:  # in run order: a stable sort then keeps ties in run order
            n = r.count_upto(b_rank, b_time, inclusive=r.index <= b_index)
            if n:
                t, rk, tm = r.take(n)
                tables.append(t)
                rks.append(rk)
                tms.append(tm)
        merged = pa.concat_tables(tables)
        rank = np.concatenate(rks)
        order = sort_order(rank, np.concatenate(tms))
        out = merged.drop_columns(["sym"]).take(order)
        sym = pa.DictionaryArray.from_arrays(pa.array(rank[order], pa.int32()), sorted_syms)
        yield out.add_column(merged.schema.get_field_index("sym"), pa.field("sym", SYM_TYPE, nullable=False), sym)
        active = [r for r in active if r.pos < len(r.rank) or r.load()]
    for r in runs:
        r.close()


class DaySorter:
    """Takes a day's rows in log order, gives them back by (sym, time), within a memory budget.

    ``run_bytes``: rows held before a run is sorted and spilled (about a third
    of the budget: a run, its sorted copy, and the writer's buffers). A day
    that fits in one run never touches the disk.
    """

    def __init__(self, run_bytes: int, tmp_dir: Path):
        self.run_bytes = max(1, run_bytes)
        self.tmp_dir = Path(tmp_dir)
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0
        self.runs: list[Path] = []
        self.syms: set[str] = set()
        self.rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.pending.append(batch)
        self.pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.pending_bytes >= self.run_bytes:
            self._spill_run()

    def extend(self, batches: Iterable[pa.RecordBatch]) -> None:
        for batch in batches:
            self.add(batch)

    def _spill_run(self) -> None:
        table = pa.Table.from_batches(self.pending)
        self.pending, self.pending_bytes = [], 0
        ordered = sort_table(table)
        self.syms.update(ordered.column("sym").chunk(0).dictionary.to_pylist())
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = self.tmp_dir / f"run-{len(self.runs):05d}.arrows"
        schema = ordered.schema.set(ordered.schema.get_field_index("sym"), pa.field("sym", pa.string(), nullable=False))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in ordered.to_batches(max_chunksize=MERGE_BLOCK_ROWS):
                sym_idx = batch.schema.get_field_index("sym")
                writer.write_batch(batch.set_column(sym_idx, schema.field("sym"), batch.column(sym_idx).cast(pa.string())))
        self.runs.append(path)

    @property
    def external(self) -> bool:
        return bool(self.runs)

    def sorted(self) -> Iterator[pa.Table]:
        """The day in order: one table when it fitted, else the merge's blocks."""
        if not self.runs:
            if self.pending:
                yield sort_table(pa.Table.from_batches(self.pending))
            self.pending = []
            return
        if self.pending:
            self._spill_run()
        sorted_syms = pa.array(sorted(self.syms), pa.string())
        try:
            yield from merge_runs(self.runs, sorted_syms)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        for path in self.runs:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.runs = []
