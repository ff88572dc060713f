"""The PDB's on-disk cache: every row of every table, captured all day, in log order.

Per (table, partition) the cache is a chain of *segments*, Arrow IPC stream
files under ``<data_dir>/pdb/cache/<table>/p<NNN>/``, each holding the
decoded rows of a contiguous stretch of the log with a ``_offset`` column
and ``seq``, each row's place in the log (``ingest.seq``; a segment written
before ``seq`` existed gets it derived from ``_offset`` as it is read).
A segment ends at an EOD fence (so a day's rows are whole segments) or when
the PDB stops; a restart starts a new one. Memory is what is buffered
between two commits (about half a second of input), whatever the day's size.

``state.json`` records, atomically (write, fsync, rename), for each
partition: ``since``, the first log position captured without a gap;
``next``, the position after the last message captured; and each segment's
log span and committed length. A commit first fsyncs the segments, then
replaces the state, so after a crash (kill -9 included) the state describes
only bytes that are on disk: recovery cuts each open segment back to its
committed length, deletes files the state does not know, and capture
resumes at ``next``. Nothing is lost (everything after ``next`` is re-read
from the log) and nothing is doubled (everything before it is never re-read).

A closed day of a table can be written down once every partition has
``since <= start`` and ``next > end`` for the EOD marker's ``[start, end)``:
its rows, and its fence, are all here.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.schemas import SchemaCatalog
from ingest.seq import SEQ, seqs_of_offsets

log = logging.getLogger("tickplant.pdb")

OFFSET = "_offset"
STATE = "state.json"


class SpillError(RuntimeError):
    """The cache cannot be used (another PDB holds it)."""


@dataclass
class Segment:
    """One spill file: the log positions [begin, next) of a partition, ``rows`` rows in ``bytes``."""

    file: str
    begin: int
    next: int
    rows: int = 0
    bytes: int = 0
    closed: bool = False


@dataclass
class PartitionSpill:
    """What is captured of one (table, partition)."""

    since: int | None = None
    next: int | None = None
    segments: list[Segment] = field(default_factory=list)
    # not persisted: rows decoded since the last commit (the latest as dicts, those before
    # as Arrow with their offsets, in log order), and the open segment's writer
    pending_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    pending_offsets: list[int] = field(default_factory=list, repr=False)
    pending_batches: list[pa.Table] = field(default_factory=list, repr=False)
    pending_count: int = field(default=0, repr=False)
    pending_next: int | None = field(default=None, repr=False)
    writer: Any = field(default=None, repr=False)
    sink: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "next": self.next, "segments": [asdict(s) for s in self.segments]}

    @property
    def position(self) -> int | None:
        """Where capture continues: after the pending messages, else after the committed ones."""
        return self.pending_next if self.pending_next is not None else self.next


class SpillCache:
    """The cache directory: segments, state, commit and recovery."""

    def __init__(self, directory: Path, catalog: SchemaCatalog, lock_timeout: float = 30.0):
        self.dir = Path(directory)
        self.catalog = catalog
        self.parts: dict[tuple[str, int], PartitionSpill] = {}
        self._schemas = {t.name: t.stored_schema.append(pa.field(OFFSET, pa.int64(), nullable=False))
                         for t in catalog}
        self._dirty: set[str] = set()  # segment files written since the last fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire(lock_timeout)
        self._recover()

    def _acquire(self, timeout: float) -> TextIO:
        """One PDB per cache: a second one waits (a handover) then gives up. The OS frees the
        lock when its holder dies, kill -9 included."""
        lock = open(self.dir / "lock", "w")  # noqa: SIM115 - held for the cache's life
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise SpillError(f"another PDB is using {self.dir}") from None
                time.sleep(0.1)

    # -- state ---------------------------------------------------------------

    def _part_dir(self, table: str, partition: int) -> Path:
        return self.dir / table / f"p{partition:03d}"

    def _recover(self) -> None:
        path = self.dir / STATE
        if path.exists():
            raw = json.loads(path.read_text())
            for key, value in raw.get("partitions", {}).items():
                table, _, part = key.rpartition("/")
                spill = PartitionSpill(since=value["since"], next=value["next"],
                                       segments=[Segment(**s) for s in value["segments"]])
                self.parts[(table, int(part))] = spill
        known = set()
        for (table, part), spill in self.parts.items():
            for seg in spill.segments:
                file = self._part_dir(table, part) / seg.file
                known.add(file)
                if not seg.closed:
                    # cut what was written after the last commit; a new segment continues from `next`
                    if file.exists() and file.stat().st_size != seg.bytes:
                        os.truncate(file, seg.bytes)
                    seg.closed = True
        for file in self.dir.glob("*/p*/*.arrows"):
            if file not in known:
                file.unlink()  # written but never committed
        self.commit()

    def commit(self) -> None:
        """Make everything appended so far durable, then record it: the one atomic step."""
        for (table, part), spill in self.parts.items():
            if spill.pending_count or spill.pending_next is not None:
                self._flush(table, part, spill)
        for file in self._dirty:
            try:
                fd = os.open(file, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dirty.clear()
        state = {"version": 1, "partitions": {f"{t}/{p}": s.to_dict() for (t, p), s in sorted(self.parts.items())}}
        tmp = self.dir / f"{STATE}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / STATE)

    # -- capture ---------------------------------------------------------------

    def position(self, table: str, partition: int) -> int | None:
        spill = self.parts.get((table, partition))
        return spill.position if spill else None

    def start(self, table: str, partition: int, offset: int) -> None:
        """Capture of a partition begins (first time) or resumes at ``offset``.

        A resume past ``next`` (the log no longer holds what came between)
        restarts ``since``: the days before it cannot be written from here.
        """
        spill = self.parts.setdefault((table, partition), PartitionSpill())
        position = spill.position  # not None once ``next`` is set
        if spill.next is None or (position is not None and offset > position):
            if spill.next is not None:
                log.warning("%s[%d]: capture resumes at %d, past %d: the log lost what was between",
                            table, partition, offset, spill.position)
            self._close_segment(table, partition, spill)
            spill.since = spill.next = offset
            spill.pending_next = None

    def append(self, table: str, partition: int, offset: int, rows: list[dict[str, Any]] | pa.Table) -> None:
        """The kept rows of the message at ``offset``: dicts (``Intake.rows``) or a table of the
        stored schema (``Intake.arrow``, a block decoded into columns)."""
        spill = self.parts[(table, partition)]
        if isinstance(rows, pa.Table):
            self._settle(table, spill)
            offsets = pa.array(np.full(rows.num_rows, offset, np.int64))
            spill.pending_batches.append(rows.append_column(OFFSET, offsets).cast(self._schemas[table]))
            spill.pending_count += rows.num_rows
        else:
            spill.pending_rows.extend(rows)
            spill.pending_offsets.extend([offset] * len(rows))
            spill.pending_count += len(rows)
        spill.pending_next = offset + 1

    def skip(self, table: str, partition: int, offset: int) -> None:
        """A message that holds no rows for the cache (undecodable: sent to the dead letters)."""
        self.parts[(table, partition)].pending_next = offset + 1

    def fence(self, table: str, partition: int, offset: int) -> None:
        """An EOD fence: the day's segment ends here; the next day starts a new one."""
        spill = self.parts[(table, partition)]
        spill.pending_next = offset + 1
        self._flush(table, partition, spill)
        self._close_segment(table, partition, spill)

    def pending(self) -> int:
        return sum(s.pending_count for s in self.parts.values())

    def _settle(self, table: str, spill: PartitionSpill) -> None:
        """The pending dict rows as one Arrow piece, after the pieces before them."""
        if spill.pending_rows:
            schema = self.catalog[table]
            numbered = SEQ in spill.pending_rows[0]  # by the intake; else derived from the offsets
            batch = schema.to_arrow(spill.pending_rows, seq=numbered)
            if not numbered:
                batch = batch.append_column(SEQ, pa.array(seqs_of_offsets(spill.pending_offsets), pa.int64()))
            batch = batch.append_column(OFFSET, pa.array(spill.pending_offsets, pa.int64()))
            spill.pending_batches.append(batch.cast(self._schemas[table]))
            spill.pending_rows, spill.pending_offsets = [], []

    def _flush(self, table: str, partition: int, spill: PartitionSpill) -> None:
        """Write the pending rows to the open segment (not yet durable: see ``commit``)."""
        self._settle(table, spill)
        if spill.pending_batches:
            # one record batch a flush, as when every row came as a dict
            batch = pa.concat_tables(spill.pending_batches).combine_chunks()
            if spill.writer is None:
                if spill.next is None:
                    raise SpillError(f"{table}[{partition}]: rows to write before capture started")
                part_dir = self._part_dir(table, partition)
                part_dir.mkdir(parents=True, exist_ok=True)
                seg = Segment(file=f"{spill.next:020d}-{uuid.uuid4().hex[:6]}.arrows", begin=spill.next, next=spill.next)
                spill.sink = open(part_dir / seg.file, "wb")
                spill.writer = pa.ipc.new_stream(spill.sink, self._schemas[table])
                spill.segments.append(seg)
            for b in batch.to_batches():
                spill.writer.write_batch(b)
            spill.sink.flush()
            seg = spill.segments[-1]
            seg.rows += batch.num_rows
            seg.bytes = spill.sink.tell()
            self._dirty.add(str(self._part_dir(table, partition) / seg.file))
            spill.pending_batches, spill.pending_count = [], 0
        if spill.pending_next is not None:
            spill.next = spill.pending_next
            if spill.writer is not None:
                spill.segments[-1].next = spill.next
            spill.pending_next = None

    def _close_segment(self, table: str, partition: int, spill: PartitionSpill) -> None:
        if spill.writer is not None:
            spill.writer.close()
            spill.sink.flush()
            seg = spill.segments[-1]
            seg.bytes = spill.sink.tell()
            seg.closed = True
            spill.sink.close()
            spill.writer = spill.sink = None
            self._dirty.add(str(self._part_dir(table, partition) / seg.file))

    def close(self) -> None:
        self.commit()
        for (table, part), spill in self.parts.items():
            self._close_segment(table, part, spill)
        self.commit()
        self._lock.close()

    # -- days ------------------------------------------------------------------

    def missing(self, table: str, ranges: dict[int, tuple[int, int]]) -> list[str]:
        """Why the day with these ranges is not all here yet ([] when it is)."""
        out = []
        for part, (start, end) in sorted(ranges.items()):
            spill = self.parts.get((table, part))
            if spill is None or spill.next is None:
                out.append(f"{table}[{part}]: not captured yet")
            elif spill.since is not None and spill.since > start:
                out.append(f"{table}[{part}]: capture began at {spill.since}, after the day's start {start}")
            elif spill.next <= end:
                out.append(f"{table}[{part}]: captured up to {spill.next}, the day ends at {end}")
        return out

    def lost(self, table: str, ranges: dict[int, tuple[int, int]]) -> bool:
        """True when capture began after the day started: the PDB can never complete it."""
        return any(
            (s := self.parts.get((table, p))) is not None and s.since is not None and s.since > start
            for p, (start, _) in ranges.items()
        )

    def day_files(self, table: str, ranges: dict[int, tuple[int, int]]) -> list[tuple[Path, int, int, bool]]:
        """(file, start, end, filter?) of the segments holding the day, in log order.

        Called when the day is complete: its segments are closed, so another
        thread may read them while capture goes on.
        """
        out = []
        for part, (start, end) in sorted(ranges.items()):
            spill = self.parts[(table, part)]
            for seg in spill.segments:
                if seg.next <= start or seg.begin >= end or not seg.rows:
                    continue
                needs_filter = seg.begin < start or seg.next > end + 1
                out.append((self._part_dir(table, part) / seg.file, start, end, needs_filter))
        return out

    def drop_day(self, table: str, ranges: dict[int, tuple[int, int]]) -> int:
        """Forget the segments of a published day (and any older); return files removed."""
        doomed: list[Path] = []
        for part, (_, end) in ranges.items():
            spill = self.parts.get((table, part))
            if spill is None:
                continue
            keep = []
            for seg in spill.segments:
                if seg.closed and seg.next <= end + 1:
                    doomed.append(self._part_dir(table, part) / seg.file)
                else:
                    keep.append(seg)
            spill.segments = keep
        if doomed:
            self.commit()  # the state forgets them first; a crash now leaves orphans, removed at start
            for file in doomed:
                try:
                    file.unlink()
                except FileNotFoundError:
                    pass
        return len(doomed)


def read_day(files: list[tuple[Path, int, int, bool]]) -> Iterator[pa.RecordBatch]:
    """The rows of a day's segments, in log order (memory-mapped: nothing read twice into RAM)."""
    for path, start, end, needs_filter in files:
        # the map stays open while batches point into it (they hold it), closed when they go
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            if SEQ not in batch.schema.names:  # captured before rows carried seq
                seqs = seqs_of_offsets(batch.column(OFFSET).to_numpy())
                batch = batch.append_column(pa.field(SEQ, pa.int64(), nullable=False), pa.array(seqs, pa.int64()))
            if needs_filter:
                offsets = batch.column(OFFSET)
                batch = batch.filter(pc.and_(pc.greater_equal(offsets, start), pc.less(offsets, end)))
            if batch.num_rows:
                yield batch
