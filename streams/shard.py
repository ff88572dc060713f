"""One RDB shard: one table's rows from one log partition, in RocksDB, by day and sym.

Every message is applied in one WriteBatch together with its offset, so a
shard on disk is always exactly "the log up to ``durable``": replaying a
message at or below it is skipped, which makes at-least-once delivery
exactly-once state. Small chunks are merged per sym once they pile up, so a
sym's day stays a few large chunks. The key layout is in streams/chunks.py;
small runs wait in memory, already queryable, in the tail (streams/tail.py);
rows once read stay decoded beside RocksDB (streams/resident.py).
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
)

from streams.chunks import (
    APPLIED,
    ARROW,
    DAY,
    SymStats,
    chunk_prefix,
    concat,
    next_prefix,
    split_by_sym,
    stats_key,
    with_seq,
)
from streams.rawdb import scan, scan_keys
from streams.resident import Budget, Resident
from streams.tail import Tail

MERGE_AFTER = 32          # small chunks of one sym before they are merged
SMALL_CHUNK_ROWS = 512    # a chunk below this many rows counts as small
TAIL_ROWS = 4096          # the tail is written once it holds this many rows...
TAIL_SECONDS = 0.2        # ...or its oldest run is this old


class ShardError(RuntimeError):
    """A shard could not be opened or read; the message names it."""


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
        self.tail = Tail()  # small runs applied, not on disk yet
        self._unsaved_days: set[str] = set()  # days first seen in the tail, not on disk yet
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
            raw = self.db.get(stats_key(date, sym))
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
                    self.tail.since = time.monotonic()  # the oldest thing not on disk
                if table is not None and rows:
                    self._to_tail(date, table)
                self.applied = offset
                if self.tail.rows >= TAIL_ROWS:
                    self.flush()
                return True
            self.flush()
            self._write(offset, [(date, table)] if rows else [], counted=False)
        return True

    def _to_tail(self, date: str, table: pa.Table) -> None:
        """Hold a small run in memory, counted in the sym stats at once (queries see it)."""
        for sym, t in self.tail.add(date, table):
            self._sym_stats(date, sym).add(1, t, t)

    def tail_due(self, now: float | None = None) -> bool:
        """Whether the tail (or an offset not yet on disk) should be written now: big or old."""
        if self.applied == self.durable:
            return False
        return self.tail.rows >= TAIL_ROWS or (now or time.monotonic()) - self.tail.since >= TAIL_SECONDS

    def flush(self) -> None:
        """Write the tail: its runs as one chunk per sym and day, in one batch with the offset."""
        with self._lock:
            if self.applied > self.durable:
                self._write(self.applied, self.tail.take(), counted=True)

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
            record = (tables[0] if len(tables) == 1 else concat(tables)).combine_chunks().to_batches()[0]
            fp = self._fingerprint(record.schema, batch)
            for sym, chunk, first, last in split_by_sym(record):
                if "\x00" in sym:
                    raise ShardError(f"sym {sym!r} contains a NUL byte")
                batch.put(chunk_prefix(date, sym) + suffix, fp + chunk.serialize().to_pybytes())
                self.resident.append(date, sym, with_seq(pa.Table.from_batches([chunk]), offset))
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
                batch.put(stats_key(date, sym), stats.encode())
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
        prefix = chunk_prefix(date, sym)
        keys, tables = [], []
        for key, value in scan(self.db, prefix, prefix + struct.pack(">q", stats.small_from)):
            keys.append(key)
            tables.append(self._decode(value, key))
        stats.small = 0
        if len(keys) < 2:
            return
        merged = concat(tables).combine_chunks()
        batch = WriteBatch(raw_mode=True)
        fp = self._fingerprint(merged.schema, batch)
        for key in keys[1:]:
            batch.delete(key)
        batch.put(keys[0], fp + merged.to_batches()[0].serialize().to_pybytes())
        batch.put(stats_key(date, sym), stats.encode())
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
            self.db.delete_range(b"R" + day, b"R" + next_prefix(day))
            self.db.delete_range(b"S" + day, b"S" + next_prefix(day))
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
        return with_seq(table, struct.unpack(">q", key[-8:])[0]) if key is not None else table

    def syms(self, date: str) -> list[str]:
        out = []
        prefix = b"S" + date.encode()
        for key in scan_keys(self.db, prefix):
            out.append(key[len(prefix):].decode())
        fresh = self.tail.syms.get(date, set()).difference(out)
        return sorted([*out, *fresh]) if fresh else out

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
        return [chunk for _, chunk in self.read_by_sym(date, syms)]

    def read_by_sym(self, date: str, syms: list[str] | None) -> list[tuple[str, pa.Table]]:
        """``read``'s chunks, each with its sym: every chunk holds the rows of one sym (a
        chunk is stored under its sym's key), which a reader may use without looking."""
        with self._lock:
            tail = self.tail.chunks(date) if date in self.tail.syms else {}
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
            out: list[tuple[str, pa.Table]] = []
            for sym in wanted:
                out.extend((sym, chunk) for chunk in by_sym.get(sym, ()))
                if sym in tail:
                    out.append((sym, tail[sym]))
            return out

    def _disk_chunks(self, date: str, syms: list[str] | None) -> dict[str, list[pa.Table]]:
        """The day's chunks on disk by sym. One RocksDB iterator for the whole read, moved
        from sym to sym (a day's syms are contiguous keys: all of them are one sweep): a
        fresh iterator per sym costs as much as reading a sym's chunk."""
        by_sym: dict[str, list[pa.Table]] = {}
        it = self.db.iter()
        # all syms: one sweep of the day, each chunk's sym read off its key
        prefixes = [(b"R" + date.encode(), None)] if syms is None else \
            [(chunk_prefix(date, sym), sym) for sym in syms]
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
            if self.tail.holds(date, sym):
                chunk = self.tail.chunks(date)[sym]
                return chunk.slice(chunk.num_rows - 1, 1)
            latest = self._latest.get((date, sym))
            if latest is not None:
                return latest
            prefix = chunk_prefix(date, sym)
            it = self.db.iter()
            it.seek_for_prev(next_prefix(prefix))
            while it.valid() and it.key().startswith(prefix):
                value = it.value()
                if value:
                    chunk = self._decode(value, it.key())
                    # a copy (take), not a slice: a slice would keep the whole chunk in memory
                    latest = self._latest[(date, sym)] = chunk.take([chunk.num_rows - 1])
                    return latest
                it.prev()
            return None
