"""One RDB shard: one table's rows from one log partition, in RocksDB, by day and sym.

The layout gives what kdb+'s ``p#``/``g#`` give an RDB: one sym's rows for a
day are contiguous on disk and in log order, read without touching other syms.

Keys (bytes, RocksDB's sorted order)::

  R <date:10> <sym> 00 <offset:8 BE>   -> chunk: fingerprint(8) + Arrow IPC record batch
  S <date:10> <sym>                    -> that sym's day stats (JSON: rows, first, last)
  M applied                            -> last applied log offset (8 BE)
  M arrow <fingerprint:8>              -> the Arrow schema chunks with that fingerprint use
  M day <date:10>                      -> "open" | "closed"

Every message is applied in one WriteBatch together with its offset, so a
shard on disk is always exactly "the log up to ``durable``": replaying a
message at or below it is skipped, which makes at-least-once delivery
exactly-once state. Small chunks are merged per sym once they pile up, so a
sym's day stays a few large chunks.

The tail: a small run (zero-latency mode sends a message per row) is not
written at once but held in memory, already queryable, and written with the
runs after it as one RocksDB batch once the tail is big or old enough
(``flush``; the reader calls it). A row is visible as soon as it is in the
tail; what a crash loses of it was never in ``durable``, so it is read again
from the log. Writing a handful of rows over a dozen syms costs a chunk, a
stats record and (every 32) a merge per sym: the tail makes that cost per
flush, not per message, which is what publish -> visible latency needs.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
)

from ingest.seq import INDEX_BITS, SEQ
from streams.rawdb import scan, scan_keys
from streams.resident import Budget, Resident

APPLIED = b"Mapplied"
ARROW = b"Marrow"
DAY = b"Mday"
MERGE_AFTER = 32          # small chunks of one sym before they are merged
SMALL_CHUNK_ROWS = 512    # a chunk below this many rows counts as small
TAIL_ROWS = 4096          # the tail is written once it holds this many rows...
TAIL_SECONDS = 0.2        # ...or its oldest run is this old


class ShardError(RuntimeError):
    """A shard could not be opened or read; the message names it."""


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


@dataclass
class Resources:
    """Memory shared by every shard of a worker: the block cache and write buffers."""

    cache_bytes: int = 128 << 20
    write_buffer_bytes: int = 64 << 20
    resident_bytes: int = 256 << 20  # decoded rows held beside RocksDB (streams/resident.py)
    cache: Any = field(init=False)
    buffers: Any = field(init=False)
    resident: Budget = field(init=False)

    def __post_init__(self) -> None:
        self.resident = Budget(self.resident_bytes)
        self.cache = Cache(self.cache_bytes)
        self.buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            self.write_buffer_bytes, False, self.cache
        )

    def options(self) -> Options:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(8 << 20)
        opts.set_max_write_buffer_number(2)
        opts.set_write_buffer_manager(self.buffers)
        opts.set_compression_type(DBCompressionType.lz4())
        opts.set_max_open_files(256)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_block_size(64 << 10)
        table.set_cache_index_and_filter_blocks(True)
        opts.set_block_based_table_factory(table)
        return opts


def _chunk_prefix(date: str, sym: str) -> bytes:
    return b"R" + date.encode() + sym.encode() + b"\x00"


def _stats_key(date: str, sym: str) -> bytes:
    return b"S" + date.encode() + sym.encode()


def _next_prefix(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Shard:
    """The rows of (table, partition) held by this worker."""

    def __init__(self, path: Path, resources: Resources, open_timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self._open(resources, open_timeout)
        raw = self.db.get(APPLIED)
        # durable: the log up to here is on disk; applied: ... and in the tail too
        self.durable: int = struct.unpack(">q", raw)[0] if raw is not None else -1
        self.applied: int = self.durable
        self._tail: list[tuple[str, pa.Table]] = []  # (date, rows) runs in log order, not on disk yet
        self._tail_rows = 0
        self._tail_since = 0.0  # monotonic time of the oldest run in the tail
        self._tail_syms: dict[str, set[str]] = {}  # date -> syms with rows in the tail
        self._unsaved_days: set[str] = set()  # days first seen in the tail, not on disk yet
        self._tail_version = 0  # changes with the tail: the key of the split kept for queries
        self._tail_cache: tuple[Any, dict[str, pa.Table]] = (None, {})
        self.schemas: dict[bytes, pa.Schema] = {}
        self.fingerprints: dict[pa.Schema, bytes] = {}
        self.stats: dict[tuple[str, str], SymStats] = {}
        # (date, sym) -> its latest row on disk, a one-row copy: kdb+'s ``latest`` table, filled
        # by ``last`` and dropped when the sym's next rows are written (one row per sym held)
        self._latest: dict[tuple[str, str], pa.Table] = {}
        self.resident = Resident(resources.resident)
        self.days: dict[str, str] = {}
        for key, value in scan(self.db, b"M"):
            if key.startswith(ARROW):
                schema = pa.ipc.read_schema(pa.py_buffer(value))
                self.schemas[key[len(ARROW):]] = schema
            elif key.startswith(DAY):
                self.days[key[len(DAY):].decode()] = value.decode()
        self._lock = threading.RLock()

    def _open(self, resources: Resources, timeout: float) -> Rdict:
        """Open, waiting while the previous owner (a worker handing over) still holds the lock."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return Rdict(str(self.path), resources.options())
            except Exception as exc:  # rocksdict raises a plain Exception on IO errors
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise ShardError(f"cannot open RDB shard {self.path}: {exc}") from exc
                time.sleep(0.1)

    def close(self) -> None:
        with self._lock:
            self.resident.clear()
            self.flush()
            self.db.flush()
            self.db.close()

    # -- writing ------------------------------------------------------------

    def _fingerprint(self, schema: pa.Schema, batch: WriteBatch) -> bytes:
        fp = self.fingerprints.get(schema)
        if fp is None:
            import hashlib

            fp = hashlib.blake2b(schema.serialize().to_pybytes(), digest_size=8).digest()
            if fp not in self.schemas:
                self.schemas[fp] = schema
                batch.put(ARROW + fp, schema.serialize().to_pybytes())
            self.fingerprints[schema] = fp
        return fp

    def _sym_stats(self, date: str, sym: str) -> SymStats:
        key = (date, sym)
        stats = self.stats.get(key)
        if stats is None:
            raw = self.db.get(_stats_key(date, sym))
            stats = SymStats.decode(raw) if raw is not None else SymStats()
            self.stats[key] = stats
        return stats

    def apply(self, offset: int, date: str, table: pa.Table | None, defer: bool = False) -> bool:
        """Store one log message's (or run's) rows under ``date``; False if applied before.

        ``defer``: a small run goes to the tail (queryable now, on disk at the
        next ``flush``). A large run, or one not deferred, is written now, after
        the tail, so the log order holds on disk.
        """
        if offset <= self.applied:
            return False
        with self._lock:
            rows = table.num_rows if table is not None else 0
            if date and date not in self.days:
                self.days[date] = "open"
                self._unsaved_days.add(date)
                self.resident.start_day(date)  # nothing on disk yet: resident as it is written
            if defer and rows < SMALL_CHUNK_ROWS:
                if self.applied == self.durable:
                    self._tail_since = time.monotonic()  # the oldest thing not on disk
                if table is not None and rows:
                    self._to_tail(date, table)
                self.applied = offset
                if self._tail_rows >= TAIL_ROWS:
                    self.flush()
                return True
            self.flush()
            self._write(offset, [(date, table)] if rows else [], counted=False)
        return True

    def _to_tail(self, date: str, table: pa.Table) -> None:
        """Hold a small run in memory, counted in the sym stats at once (queries see it)."""
        self._tail.append((date, table))
        self._tail_rows += table.num_rows
        self._tail_version += 1
        syms = table.column("sym").to_pylist()
        times = table.column("time").cast(pa.int64()).to_pylist()
        held = self._tail_syms.setdefault(date, set())
        for sym, t in zip(syms, times, strict=True):
            self._sym_stats(date, sym).add(1, t, t)
            held.add(sym)

    def tail_due(self, now: float | None = None) -> bool:
        """Whether the tail (or an offset not yet on disk) should be written now: big or old."""
        if self.applied == self.durable:
            return False
        return self._tail_rows >= TAIL_ROWS or (now or time.monotonic()) - self._tail_since >= TAIL_SECONDS

    def flush(self) -> None:
        """Write the tail: its runs as one chunk per sym and day, in one batch with the offset."""
        with self._lock:
            if self.applied > self.durable:
                items, self._tail, self._tail_rows, self._tail_syms = self._tail, [], 0, {}
                self._tail_version += 1
                self._write(self.applied, items, counted=True)

    def _write(self, offset: int, items: list[tuple[str, pa.Table]], counted: bool) -> None:
        """One RocksDB batch: the runs' rows (a day's runs as one chunk per sym) and ``offset``.

        ``counted``: the rows are tail runs, already in the sym stats.
        """
        batch = WriteBatch(raw_mode=True)
        to_merge: list[tuple[str, str]] = []
        for date in self._unsaved_days:
            if date in self.days:
                batch.put(DAY + date.encode(), self.days[date].encode())
        by_date: dict[str, list[pa.Table]] = {}
        for date, table in items:
            by_date.setdefault(date, []).append(table)
        suffix = struct.pack(">q", offset)
        for date, tables in by_date.items():
            record = (tables[0] if len(tables) == 1 else _concat(tables)).combine_chunks().to_batches()[0]
            fp = self._fingerprint(record.schema, batch)
            for sym, chunk, first, last in _split_by_sym(record):
                if "\x00" in sym:
                    raise ShardError(f"sym {sym!r} contains a NUL byte")
                batch.put(_chunk_prefix(date, sym) + suffix, fp + chunk.serialize().to_pybytes())
                self.resident.append(date, sym, _with_seq(pa.Table.from_batches([chunk]), offset))
                self._latest.pop((date, sym), None)
                stats = self._sym_stats(date, sym)
                if not counted:
                    stats.add(chunk.num_rows, first, last)
                if chunk.num_rows < SMALL_CHUNK_ROWS:
                    if stats.small == 0:
                        stats.small_from = offset
                    stats.small += 1
                    if stats.small >= MERGE_AFTER:
                        to_merge.append((date, sym))
                batch.put(_stats_key(date, sym), stats.encode())
        batch.put(APPLIED, suffix)
        self.db.write(batch)
        self._unsaved_days.clear()
        self.applied = max(self.applied, offset)
        self.durable = offset
        for date_sym in to_merge:
            self._merge(*date_sym)

    def _merge(self, date: str, sym: str) -> None:
        """Rewrite a sym's recent small chunks as one: reads stay fast whatever the publish mode.

        Only the tail since the last merge is read and rewritten, so the cost of
        a merge does not grow with the day.
        """
        stats = self._sym_stats(date, sym)
        prefix = _chunk_prefix(date, sym)
        keys, tables = [], []
        for key, value in scan(self.db, prefix, prefix + struct.pack(">q", stats.small_from)):
            keys.append(key)
            tables.append(self._decode(value, key))
        stats.small = 0
        if len(keys) < 2:
            return
        merged = _concat(tables).combine_chunks()
        batch = WriteBatch(raw_mode=True)
        fp = self._fingerprint(merged.schema, batch)
        for key in keys[1:]:
            batch.delete(key)
        batch.put(keys[0], fp + merged.to_batches()[0].serialize().to_pybytes())
        batch.put(_stats_key(date, sym), stats.encode())
        self.db.write(batch)

    def mark_day(self, date: str, status: str) -> None:
        with self._lock:
            self.flush()
            self.days[date] = status
            self.db.put(DAY + date.encode(), status.encode())

    def drop_day(self, date: str) -> None:
        """Forget a day the HDB has published (kdb+'s RDB clearing its tables at EOD)."""
        with self._lock:
            self.flush()
            day = date.encode()
            self.db.delete_range(b"R" + day, b"R" + _next_prefix(day))
            self.db.delete_range(b"S" + day, b"S" + _next_prefix(day))
            self.db.delete(DAY + day)
            self.days.pop(date, None)
            self.resident.drop_day(date)
            self.stats = {k: v for k, v in self.stats.items() if k[0] != date}
            self._latest = {k: v for k, v in self._latest.items() if k[0] != date}

    # -- reading ------------------------------------------------------------

    def _decode(self, value: bytes, key: bytes | None = None) -> pa.Table:
        """A chunk as Arrow. One written before rows carried ``seq`` (``ingest.seq``) gets
        one derived from its key, ``offset << 20 | i``: the chunk holds its sym's rows of the
        messages up to ``offset`` (after the previous chunk's) in log order, so this keeps
        the order, below every later message's ``seq``."""
        schema = self.schemas.get(value[:8])
        if schema is None:
            raise ShardError(f"{self.path}: chunk with unknown Arrow schema {value[:8].hex()}")
        table = pa.Table.from_batches([pa.ipc.read_record_batch(pa.py_buffer(value).slice(8), schema)])
        return _with_seq(table, struct.unpack(">q", key[-8:])[0]) if key is not None else table

    def syms(self, date: str) -> list[str]:
        out = []
        prefix = b"S" + date.encode()
        for key in scan_keys(self.db, prefix):
            out.append(key[len(prefix):].decode())
        fresh = self._tail_syms.get(date, set()).difference(out)
        return sorted([*out, *fresh]) if fresh else out

    def _tail_chunks(self, date: str) -> dict[str, pa.Table]:
        """The tail's rows of ``date`` by sym (log order), split once per change of the tail."""
        key = (date, self._tail_version)
        if self._tail_cache[0] != key:
            tables = [t for d, t in self._tail if d == date]
            chunks: dict[str, pa.Table] = {}
            if tables:
                record = _concat(tables).combine_chunks().to_batches()[0]
                chunks = {sym: pa.Table.from_batches([chunk]) for sym, chunk, _, _ in _split_by_sym(record)}
            self._tail_cache = (key, chunks)
        return self._tail_cache[1]

    def day_statuses(self) -> list[tuple[str, str]]:
        """(date, "open" | "closed") of every day held: a copy, since the reader thread
        opens and closes days while the event loop reports them."""
        with self._lock:
            return list(self.days.items())

    def sym_stats(self, date: str) -> dict[str, SymStats]:
        with self._lock:
            return {sym: self._sym_stats(date, sym) for sym in self.syms(date)}

    def read(self, date: str, syms: list[str] | None) -> list[pa.Table]:
        """The day's chunks for ``syms`` (all syms if None), each sym in log order: what is
        resident (streams/resident.py), the rest from disk, then kept resident."""
        with self._lock:
            tail = self._tail_chunks(date) if date in self._tail_syms else {}
            if syms is None:
                by_sym = self.resident.day(date)
                if by_sym is None:
                    by_sym = self._disk_chunks(date, None)
                    self.resident.put_day(date, by_sym)
            else:
                by_sym, missing = {}, []
                for sym in syms:
                    chunks = self.resident.get(date, sym)
                    if chunks is None:
                        missing.append(sym)
                    else:
                        by_sym[sym] = chunks
                if missing:
                    read = self._disk_chunks(date, missing)
                    for sym in missing:
                        by_sym[sym] = read.get(sym, [])
                        self.resident.put(date, sym, by_sym[sym])
            if syms is not None:
                wanted = syms
            else:
                wanted = sorted(by_sym.keys() | tail.keys())
            out: list[pa.Table] = []
            for sym in wanted:
                out.extend(by_sym.get(sym, ()))
                if sym in tail:
                    out.append(tail[sym])
            return out

    def _disk_chunks(self, date: str, syms: list[str] | None) -> dict[str, list[pa.Table]]:
        """The day's chunks on disk by sym. One RocksDB iterator for the whole read, moved
        from sym to sym (a day's syms are contiguous keys: all of them are one sweep): a
        fresh iterator per sym cost ~15 us, as much as reading a sym's chunk."""
        by_sym: dict[str, list[pa.Table]] = {}
        it = self.db.iter()
        # all syms: one sweep of the day, each chunk's sym read off its key
        prefixes = [(b"R" + date.encode(), None)] if syms is None else \
            [(_chunk_prefix(date, sym), sym) for sym in syms]
        for prefix, sym in prefixes:
            it.seek(prefix)
            while it.valid():
                key = it.key()
                if not key.startswith(prefix):
                    break
                value = it.value()
                if value:
                    owner = sym if sym is not None else key[len(prefix):-9].decode()
                    by_sym.setdefault(owner, []).append(self._decode(value, key))
                it.next()
        return by_sym

    def last(self, date: str, sym: str) -> pa.Table | None:
        """The sym's latest row of the day: from the tail, else the last row of its last
        chunk on disk, kept until the sym's next rows are written (a dashboard asking for
        every sym's last price many times a second costs no RocksDB read each time)."""
        with self._lock:
            if sym in self._tail_syms.get(date, ()):
                chunk = self._tail_chunks(date)[sym]
                return chunk.slice(chunk.num_rows - 1, 1)
            latest = self._latest.get((date, sym))
            if latest is not None:
                return latest
            prefix = _chunk_prefix(date, sym)
            it = self.db.iter()
            it.seek_for_prev(_next_prefix(prefix))
            while it.valid() and it.key().startswith(prefix):
                value = it.value()
                if value:
                    chunk = self._decode(value, it.key())
                    # a copy (take), not a slice: a slice would keep the whole chunk in memory
                    latest = self._latest[(date, sym)] = chunk.take([chunk.num_rows - 1])
                    return latest
                it.prev()
            return None


def _with_seq(table: pa.Table, offset: int) -> pa.Table:
    """A chunk as read: one stored before rows carried ``seq`` gets it from its key's offset
    (see ``Shard._decode``)."""
    if SEQ in table.schema.names:
        return table
    return table.append_column(pa.field(SEQ, pa.int64(), nullable=False),
                               pa.array((offset << INDEX_BITS) + np.arange(table.num_rows), pa.int64()))


def _split_by_sym(record: pa.RecordBatch) -> list[tuple[str, pa.RecordBatch, int, int]]:
    """(sym, its rows in log order, first time, last time) for each sym of a record batch.

    One stable sort by sym and zero-copy slices: the cost per sym is a slice,
    not a scan, whatever the number of syms in a message.
    """
    syms = record.column(record.schema.get_field_index("sym"))
    times = record.column(record.schema.get_field_index("time")).cast(pa.int64()).to_numpy()
    if syms.null_count == 0 and len(syms) and pc.all(pc.equal(syms, syms[0])).as_py():
        return [(syms[0].as_py(), record, int(times.min()), int(times.max()))]
    order = pc.sort_indices(syms)  # stable: each sym's rows keep their log order
    record = record.take(order)
    times = times[order.to_numpy()]
    column = record.column(record.schema.get_field_index("sym"))
    n = len(column)
    # where the sorted syms change, over the whole column (nulls sort last, together)
    changed = pc.not_equal(column.slice(1), column.slice(0, n - 1))
    if column.null_count:
        changed = pc.if_else(pc.is_null(changed), pc.xor(pc.is_null(column.slice(1)),
                                                         pc.is_null(column.slice(0, n - 1))), changed)
    starts = np.concatenate([[0], np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1])
    names = column.take(pa.array(starts)).to_pylist()
    lows = np.minimum.reduceat(times, starts)
    highs = np.maximum.reduceat(times, starts)
    ends = [*starts[1:].tolist(), n]
    return [
        (sym, record.slice(start, end - start), int(low), int(high))
        for sym, start, end, low, high in zip(names, starts.tolist(), ends, lows, highs, strict=True)
    ]


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate chunks written under different schema versions (fields added since)."""
    if not tables:
        raise ValueError("nothing to concatenate")
    return pa.concat_tables(tables, promote_options="default")
