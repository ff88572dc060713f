"""A day's latest row per sym, kept beside the partition: kdb+'s answer to ``select by sym``.

"The last quote of each sym" over history would otherwise read every row of
the day to keep one per sym. The write-down sees the day in its sort order
(sym, time, log position), so each sym's last row *is* its latest: the one of
greatest time, of those the last published (``seq``, ingest.seq), the row the
RDB's ``last`` keeps for today. ``LatestRows`` collects those rows as the
sorted parts go by; ``write_latest`` writes them, one small Parquet file, at

    <partition>/_latest/latest.parquet

a level below the day's data files, so the day's reads (``date=D/*.parquet``:
ClickHouse's ``*`` never crosses a ``/``) never see it, while the files of
the day, rewrites and deletions (which walk the partition's directory) carry
it along. The manifest records it (``Manifest.latest``), written last as
ever: a reader trusts the file only when the manifest names it, so a day
written before this file existed is read whole, as before.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sinks.manifest import LATEST_FILE, FileEntry
from sinks.store import HdbStore


class LatestRows:
    """Each sym's last row of sorted tables seen one after another."""

    def __init__(self) -> None:
        self._tails: list[pa.Table] = []

    def add(self, part: pa.Table) -> None:
        """The last row of each sym run of ``part`` (rows in sort order, continuing the last call's)."""
        if not part.num_rows:
            return
        self._tails.append(_run_ends(part))
        if len(self._tails) > 64:  # keep the candidates few: a long day goes by in many parts
            self._tails = [_run_ends(pa.concat_tables(self._tails))]

    def table(self) -> pa.Table | None:
        """One row per sym, in sym order (the last seen of each), or None before any row."""
        return _run_ends(pa.concat_tables(self._tails)) if self._tails else None


def _run_ends(part: pa.Table) -> pa.Table:
    """The last row of each run of equal syms."""
    syms = part.column("sym")
    if pa.types.is_dictionary(syms.type):
        syms = pc.cast(syms, pa.string())
    flat = syms.combine_chunks()
    n = len(flat)
    ends = [n - 1]
    if n > 1:
        ends = pc.indices_nonzero(pc.not_equal(flat.slice(1), flat.slice(0, n - 1))).to_numpy().tolist() + ends
    return part.take(pa.array(ends, pa.int64()))


def write_latest(store: HdbStore, directory: str, schema: pa.Schema, rows: pa.Table | None,
                 parquet_args: dict[str, Any]) -> FileEntry:
    """Write the day's latest rows (none for an empty day: a file with the schema alone) into
    ``directory`` (the partition's, or a rewrite's staging one); the manifest's entry for it."""
    table = (rows if rows is not None else schema.empty_table()).cast(schema).combine_chunks()
    buffer = pa.BufferOutputStream()
    with pq.ParquetWriter(buffer, schema, **parquet_args) as writer:
        writer.write_table(table, row_group_size=max(1, table.num_rows))
    data = buffer.getvalue()
    with store.open_output(f"{directory}/{LATEST_FILE}") as out:
        out.write(data)
    syms = pc.cast(table.column("sym"), pa.string()).to_pylist() if table.num_rows else []
    return FileEntry(name=LATEST_FILE, rows=table.num_rows, bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), sym_min=syms[0] if syms else "",
                     sym_max=syms[-1] if syms else "", row_groups=1)
