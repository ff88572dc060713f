"""The write-down: a closed day's rows become a sorted, published Parquet partition.

Steps, each safe to repeat (``write_partition``):

1. delete whatever a crashed earlier attempt left in the partition's
   directory (it has no manifest, so no reader ever saw it);
2. sort the day by (sym, time, log position) within the memory budget
   (``sinks.sort``); the log position is written too, as ``seq``
   (``ingest.seq``), so queries break ties of time as kdb+ does;
3. write ``part-00000.parquet``, ``part-00001.parquet``... each a run of whole
   row groups of ``row_group_rows`` rows (the last may be short): lz4 (the
   ``hdb_compression`` setting), sym
   dictionary-encoded (so are the other string columns), statistics and a page
   index per column, the sort order declared in the footer. Sorted by sym,
   a row group holds a few syms and its min/max statistics let a one-sym query
   skip all the others (what kdb+'s ``p#`` gives a splayed table);
4. write each sym's latest row, ``_latest/latest.parquet`` (``sinks.latest``):
   what "the last quote per sym" of the day reads instead of the day;
5. write ``_manifest.json`` last, atomically: only now does the day exist.

The bytes depend only on the rows, their log order and the options, never
on how the input was chunked, whether the sort ran in memory or through
runs on disk, or who wrote it: the PDB, a rerun after a crash, or a
backfill from the log all give the same files, checksum for checksum.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.schemas import TableSchema
from ingest.seq import SEQ
from sinks.latest import LatestRows, write_latest
from sinks.manifest import FileEntry, Manifest
from sinks.sort import DaySorter, output_schema, times_of
from sinks.store import HdbStore
from tickplant.config import Settings

log = logging.getLogger("tickplant.pdb")

ROW_GROUP_ROWS = 64 * 1024
FILE_ROW_GROUPS = 64  # 4M rows a file: big enough to read fast, small enough to upload in one piece
FAILPOINT_ENV = "TICKPLANT_FAILPOINT"


@dataclass(frozen=True)
class WriteOptions:
    row_group_rows: int = ROW_GROUP_ROWS
    file_row_groups: int = FILE_ROW_GROUPS
    compression: str = "lz4"  # the hdb_compression setting (tickplant/config.py)
    compression_level: int = 1  # zstd's; the other codecs take none

    @classmethod
    def of(cls, settings: Settings) -> WriteOptions:
        """The write-down's options as the plant's settings give them."""
        return cls(compression=settings.hdb_compression)

    @property
    def file_rows(self) -> int:
        return self.row_group_rows * self.file_row_groups


DEFAULT_OPTIONS = WriteOptions()


def _failpoint(name: str, index: int) -> bool:
    """Tests only: ``TICKPLANT_FAILPOINT=<name>:<index>`` stops the write-down there, for a kill -9
    (``pdb-mid-file:<table>:<n>``: half-way through file n; ``pdb-before-manifest:0``)."""
    return os.environ.get(FAILPOINT_ENV) == f"{name}:{index}"


def _hang_forever() -> None:
    log.warning("failpoint %s reached: waiting to be killed", os.environ.get(FAILPOINT_ENV))
    while True:
        time.sleep(3600)


class PartitionWriter:
    """Sorted tables in, Parquet files of whole row groups out, with their checksums."""

    def __init__(self, store: HdbStore, table: str, date: dt.date, schema: pa.Schema,
                 options: WriteOptions = DEFAULT_OPTIONS, directory: str | None = None):
        self.store = store
        self.table = table
        self.date = date
        self.directory = directory or store.partition_dir(table, date)
        self.schema = schema
        self.options = options
        self.files: list[FileEntry] = []
        self.rows = 0
        self.time_min: int | None = None
        self.time_max: int | None = None
        self.sym_counts: np.ndarray | None = None
        self.sym_values: pa.Array | None = None
        self._carry: pa.Table | None = None
        self.latest = LatestRows()  # each sym's last row in sort order: its latest (sinks.latest)
        self._writer: pq.ParquetWriter | None = None
        self._buffer: pa.BufferOutputStream | None = None
        self._file_rows = 0
        self._file_groups = 0
        self._file_syms: tuple[str, str] | None = None
        strings = [f.name for f in schema if pa.types.is_string(f.type) or isinstance(f.type, pa.DictionaryType)]
        self._parquet_args: dict[str, Any] = {
            "compression": options.compression,
            "compression_level": options.compression_level if options.compression == "zstd" else None,
            "use_dictionary": strings,
            "write_statistics": True,
            "write_page_index": True,
            "sorting_columns": [pq.SortingColumn(schema.get_field_index(c)) for c in ("sym", "time", SEQ)
                                if c in schema.names],
            "store_schema": True,
        }

    # -- bookkeeping ------------------------------------------------------------

    def _account(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        times = times_of(table)
        lo, hi = int(times.min()), int(times.max())
        self.time_min = lo if self.time_min is None else min(self.time_min, lo)
        self.time_max = hi if self.time_max is None else max(self.time_max, hi)
        self.rows += table.num_rows
        for chunk in table.column("sym").chunks:
            counts = np.bincount(chunk.indices.to_numpy(), minlength=len(chunk.dictionary))
            if self.sym_counts is None:
                self.sym_counts, self.sym_values = counts, chunk.dictionary
            else:
                self.sym_counts = self.sym_counts + counts

    @property
    def syms(self) -> dict[str, int]:
        if self.sym_counts is None or self.sym_values is None:
            return {}
        names = self.sym_values.to_pylist()
        return {names[i]: int(c) for i, c in enumerate(self.sym_counts) if c}

    # -- writing -----------------------------------------------------------------

    def write(self, table: pa.Table) -> None:
        """Rows in sort order, continuing the previous call's."""
        self._account(table)
        self.latest.add(table)
        rg = self.options.row_group_rows
        if self._carry is not None:
            need = rg - self._carry.num_rows
            combined = pa.concat_tables([self._carry, table.slice(0, need)])
            if combined.num_rows < rg:
                self._carry = combined
                return
            self._carry = None
            self._write_group(combined)
            table = table.slice(need)
        pos = 0
        while pos + rg <= table.num_rows:
            self._write_group(table.slice(pos, rg))
            pos += rg
        if pos < table.num_rows:
            self._carry = table.slice(pos)

    def _write_group(self, group: pa.Table) -> None:
        if self._writer is None:
            self._buffer = pa.BufferOutputStream()
            self._writer = pq.ParquetWriter(self._buffer, self.schema, **self._parquet_args)
            self._file_rows = self._file_groups = 0
            self._file_syms = None
        group = group.combine_chunks()
        self._writer.write_table(group, row_group_size=max(1, group.num_rows))
        syms = group.column("sym").chunk(0)
        first = syms.dictionary[syms.indices[0].as_py()].as_py()
        last = syms.dictionary[syms.indices[-1].as_py()].as_py()
        self._file_syms = (self._file_syms[0] if self._file_syms else first, last)
        self._file_rows += group.num_rows
        self._file_groups += 1
        if self._file_groups >= self.options.file_row_groups:
            self._finish_file()

    def _finish_file(self) -> None:
        if self._writer is None:  # an empty day: one file with the schema and no rows
            self._buffer = pa.BufferOutputStream()
            self._writer = pq.ParquetWriter(self._buffer, self.schema, **self._parquet_args)
            self._file_rows = self._file_groups = 0
            self._file_syms = None
        assert self._buffer is not None
        self._writer.close()
        data = self._buffer.getvalue()
        index = len(self.files)
        name = f"part-{index:05d}.parquet"
        path = f"{self.directory}/{name}"
        with self.store.open_output(path) as out:
            if _failpoint(f"pdb-mid-file:{self.table}", index):
                out.write(data[: len(data) // 2])
                out.flush()
                _hang_forever()
            out.write(data)
        sym_min, sym_max = self._file_syms or ("", "")
        self.files.append(FileEntry(name=name, rows=self._file_rows, bytes=len(data),
                                    sha256=hashlib.sha256(data).hexdigest(), sym_min=sym_min,
                                    sym_max=sym_max, row_groups=self._file_groups))
        self._writer = self._buffer = None

    def write_latest(self) -> FileEntry:
        """The small file of each sym's latest row (``sinks.latest``), once every row went by."""
        return write_latest(self.store, self.directory, self.schema, self.latest.table(), self._parquet_args)

    def close(self) -> list[FileEntry]:
        if self._carry is not None:
            carry, self._carry = self._carry, None
            self._write_group(carry)
        if self._writer is not None or not self.files:
            self._finish_file()
        return self.files


def conform(batch: pa.RecordBatch, schema: TableSchema, first: int = 0) -> pa.RecordBatch:
    """A captured batch in the table's current stored schema (its fields and ``seq``): its
    columns, in order, nothing else.

    A column the batch lacks (captured before the field was added) is filled
    with the field's Avro default, or nulls; a batch without ``seq`` gets its
    rows' places in the input, ``first`` on (the input is in log order).
    """
    target = schema.stored_schema
    if batch.schema.equals(target):
        return batch
    arrays = []
    defaults = {f["name"]: f.get("default") for f in schema.fields}
    for f in target:
        if f.name in batch.schema.names:
            col = batch.column(f.name)
            arrays.append(col if col.type == f.type else col.cast(f.type))
        elif f.name == SEQ:
            arrays.append(pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64)))
        else:
            arrays.append(pa.array([defaults.get(f.name)] * batch.num_rows, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def write_partition(
    store: HdbStore,
    schema: TableSchema,
    date: dt.date,
    batches: Iterable[pa.RecordBatch],
    log_ranges: dict[int, tuple[int, int]],
    *,
    memory_bytes: int = 2 << 30,
    tmp_dir: Path | None = None,
    written_by: str = "pdb",
    options: WriteOptions = DEFAULT_OPTIONS,
    staging: str | None = None,
) -> Manifest:
    """Sort and write one day of ``schema``'s table; publish its manifest last.

    ``batches``: the day's rows in log order (partition by partition, offsets
    ascending). The caller has checked the day has no manifest yet, or gives
    ``staging``: a directory outside every partition the files go to instead,
    with no manifest written (``HdbStore.swap_in`` publishes them, so a
    partition being rewritten is served whole until the new one is complete).
    """
    table = schema.name
    leftovers = store.clear_partition(table, date) if staging is None else []
    if leftovers:
        log.info("%s %s: removed %d file(s) of an unfinished write-down", table, date, len(leftovers))
    with tempfile.TemporaryDirectory(prefix=f"sort-{table}-{date}-", dir=tmp_dir) as tmp:
        sorter = DaySorter(run_bytes=max(1 << 20, memory_bytes // 3), tmp_dir=Path(tmp))
        seen = 0
        for batch in batches:
            sorter.add(conform(batch, schema, seen))
            seen += batch.num_rows
        writer = PartitionWriter(store, table, date, output_schema(schema.stored_schema), options, staging)
        for part in sorter.sorted():
            writer.write(part)
        files = writer.close()
        latest = writer.write_latest()
    manifest = Manifest(
        table=table, date=date, rows=writer.rows, time_min=writer.time_min, time_max=writer.time_max,
        syms=writer.syms, files=files, log_ranges=dict(log_ranges),
        columns=[[f.name, str(f.type)] for f in schema.stored_schema],
        written_by=written_by, written_at=time.time_ns(), latest=latest,
    )
    if staging is not None:
        return manifest
    if _failpoint("pdb-before-manifest", 0):
        _hang_forever()
    store.put_atomic(store.manifest_path(table, date), manifest.to_json())
    return manifest
