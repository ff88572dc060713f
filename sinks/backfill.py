"""Backfill: write a past day's partition straight from the retained log (replay, ``-11!``), or from
the log's archive once Kafka has deleted the day (``sinks.archive``).

For a day the PDB could not write (it started after the day began, or its
cache was lost) or to rewrite a partition (``force``: the new one is written
beside the old and swapped in only once complete; a message of the day that
every reader refuses is dead-lettered and left out, as the PDB leaves it out). The rows come from
``ingest.replay`` in log order, partition by partition, exactly the EOD
marker's ranges, and go through the same write-down as the PDB's, so the
partition is the same, checksum for checksum, as the PDB would have written.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from ingest.eod import read_day_state
from ingest.gather import Gathered
from ingest.replay import MessageSource, day_ranges, replay_messages, unretained
from ingest.schemas import SchemaCatalog, TableSchema
from sinks.manifest import Manifest
from sinks.markers import MarkerPublisher
from sinks.store import HdbStore
from sinks.writedown import WriteOptions, write_partition
from tickplant.config import Settings

if TYPE_CHECKING:
    from sinks.archive_read import ArchiveSource

BATCH_ROWS = 65_536


class BackfillError(ValueError):
    """The day cannot be written from the log; the message says why."""


def _batches(settings: Settings, schema: TableSchema, ranges: dict[int, tuple[int, int]],
             catalog: SchemaCatalog, origin: MessageSource | None = None) -> Iterator[pa.RecordBatch]:
    rows = Gathered(schema)
    for _, message_rows in replay_messages(settings, schema.name, ranges, catalog, seq=True, columns=True,
                                           origin=origin):
        rows.add(message_rows)
        if len(rows) >= BATCH_ROWS:
            yield from rows.table().combine_chunks().to_batches()  # type: ignore[union-attr]
            rows = Gathered(schema)
    if len(rows):
        yield from rows.table().combine_chunks().to_batches()  # type: ignore[union-attr]


def backfill(settings: Settings, table: str, date: dt.date, force: bool = False,
             catalog: SchemaCatalog | None = None, options: WriteOptions | None = None,
             store: HdbStore | None = None, from_archive: bool = False) -> tuple[Manifest, bool]:
    """Write ``table``'s partition for ``date`` from the log and publish it.

    ``from_archive``: from the day's archive (``sinks.archive``) instead, when Kafka no
    longer holds it: the same messages, so the same files.
    Returns (manifest, written): written is False when the day was already in
    the HDB and ``force`` was not given (its marker is re-sent, harmlessly).
    """
    catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
    schema = catalog[table]
    store = store or HdbStore.from_settings(settings)
    archive: ArchiveSource | None = None
    if from_archive:
        from sinks.archive_read import open_archive

        archive = open_archive(settings, table, date)
    origin: MessageSource | None = archive
    state = read_day_state(settings)
    if origin is None and date not in state.closed:
        if date == state.open_date:
            raise BackfillError(f"{date} is the open day; it can be written once it is closed ('tickplant eod')")
        known = ", ".join(d.isoformat() for d in sorted(state.closed)) or "none"
        raise BackfillError(f"no closed day {date} in the log (closed days: {known})")
    markers = MarkerPublisher(settings)
    existing = store.manifest(table, date)
    if existing is not None and not force:
        markers.publish(existing, store.display_root)
        return existing, False
    if archive is not None:
        ranges = archive.ranges
    else:
        ranges = day_ranges(settings, table, date, state)
        gone = unretained(settings, table, ranges)
        if gone is not None:
            part, low, start = gone
            raise BackfillError(
                f"the log no longer holds all of {table} {date}: partition {part} starts at offset {low}, "
                f"the day at {start} (retention_hours is {settings.retention_hours}); "
                "--from-archive rebuilds it from the log's archive")
    work = Path(settings.data_dir).resolve() / "pdb"
    work.mkdir(parents=True, exist_ok=True)
    # a published partition is rewritten beside itself and swapped in only once complete:
    # whatever fails meanwhile, the old one is still there
    staging = store.staging_dir(table, date) if existing is not None else None
    try:
        with tempfile.TemporaryDirectory(prefix="backfill-", dir=work) as tmp:
            manifest = write_partition(
                store, schema, date, _batches(settings, schema, ranges, catalog, origin), ranges,
                memory_bytes=settings.pdb_memory_mb << 20, tmp_dir=Path(tmp), written_by="backfill",
                options=options or WriteOptions.of(settings), staging=staging,
            )
        if staging is not None:
            store.swap_in(manifest, staging)
    finally:
        if staging is not None:
            store.remove_dir(staging)
    markers.publish(manifest, store.display_root)
    return manifest, True
