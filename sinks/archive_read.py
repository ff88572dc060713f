"""Reading a day back from the log's archive: the same messages, so the same rows, as the log gave.

``ArchiveSource`` is a ``ingest.replay.MessageSource``: replay and backfill run
over it unchanged (``tickplant replay --from-archive``, ``tickplant hdb
backfill --from-archive``), decoding with the writer schemas the manifest
holds. Every file is checked against the manifest's size and SHA-256 before a
record of it is used: a damaged archive is refused, naming the file, rather
than rebuilding a wrong day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Iterator
from typing import Any, cast

import fastavro

from ingest.decoder import Decoder
from ingest.registry import RegistryError
from ingest.replay import LogMessage
from ingest.schemas import SchemaCatalog
from sinks.archive_manifest import ArchiveFile, ArchiveManifest
from sinks.archive_store import ArchiveError, ArchiveStore
from tickplant.config import Settings


class _ArchivedRegistry:
    """The Confluent schema ids a day's messages name, as the registry answered when archived."""

    def __init__(self, schemas: dict[int, dict[str, Any]]):
        self.schemas = schemas

    def writer(self, schema_id: int) -> tuple[dict[str, Any], bool]:
        entry = self.schemas.get(schema_id)
        if entry is None:
            raise RegistryError(f"the archive holds no registry schema id {schema_id}")
        return entry["schema"], bool(entry["block"])


def open_archive(settings: Settings, table: str, date: dt.date | None,
                 store: ArchiveStore | None = None) -> ArchiveSource:
    """The archived day of ``table``; ArchiveError if there is none (the error lists what there is)."""
    if date is None:
        raise ArchiveError("--from-archive needs --date: only closed days are archived")
    store = store or ArchiveStore.from_settings(settings)
    manifest = store.manifest(table, date)
    if manifest is None:
        days = ", ".join(d.isoformat() for d in store.files.dates(table)) or "none"
        raise ArchiveError(f"no archive of {table} {date} in {store.display_root} (archived days of {table}: {days})")
    return ArchiveSource(store, manifest)


class ArchiveSource:
    """One archived day of one table, read as the log was."""

    def __init__(self, store: ArchiveStore, manifest: ArchiveManifest):
        self.store = store
        self.manifest = manifest

    @property
    def ranges(self) -> dict[int, tuple[int, int]]:
        """{partition: (start, end)}: the day's offsets in the log, as its EOD marker had them."""
        return self.manifest.ranges

    def decoder(self, catalog: SchemaCatalog) -> Decoder:
        schemas = self.manifest.schemas
        registry = _ArchivedRegistry(self.manifest.registry_schemas) if self.manifest.registry_schemas else None
        return Decoder(catalog, lambda fp: schemas.get(fp.hex()), registry)

    def date_of(self, table: str, partition: int, offset: int) -> dt.date | None:
        return self.manifest.date

    def read_file(self, entry: ArchiveFile) -> bytes:
        """A file's bytes, once its size and SHA-256 are the manifest's."""
        m = self.manifest
        path = self.store.path(m.table, m.date, entry.name)
        try:
            data = self.store.files.read_bytes(path)
        except OSError as exc:
            raise ArchiveError(f"archive file {path} is unreadable: {exc}") from None
        if len(data) != entry.bytes:
            raise ArchiveError(f"archive file {path} has {len(data)} bytes, the manifest says {entry.bytes}: "
                               "it is damaged")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise ArchiveError(f"archive file {path}: SHA-256 {digest} does not match the manifest's "
                               f"{entry.sha256}: it is damaged")
        return data

    def records(self, partition: int) -> Iterator[dict[str, Any]]:
        """A partition's archived messages as stored (partition, offset, timestamp, key, value, headers)."""
        part = self.manifest.partitions.get(partition)
        for entry in part.files if part else []:
            for record in fastavro.reader(io.BytesIO(self.read_file(entry))):
                yield cast(dict[str, Any], record)  # MESSAGE_SCHEMA is a record: each is a dict

    def messages(self, table: str, ranges: dict[int, tuple[int, int]]) -> Iterator[LogMessage]:
        if table != self.manifest.table:
            raise ArchiveError(f"this archive is of {self.manifest.table}, not {table}")
        for part in sorted(ranges):
            start, end = ranges[part]
            if end <= start:
                continue
            for rec in self.records(part):
                if start <= rec["offset"] < end:
                    yield LogMessage(part, rec["offset"], rec["value"],
                                     [(h["key"], h["value"]) for h in rec["headers"]], rec["key"],
                                     rec["timestamp"], rec["timestamp_type"])

    def verify(self) -> list[str]:
        """Problems with the day's files (each read and hashed): [] if none."""
        problems = []
        for entry in self.manifest.files:
            try:
                self.read_file(entry)
            except ArchiveError as exc:
                problems.append(str(exc))
        return problems
