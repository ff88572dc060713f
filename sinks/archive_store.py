"""Where the log's archive lives: ``<archive_root>/<table>/date=YYYY-MM-DD/`` on a disk or S3.

The same layout, filesystems and atomic puts as the HDB's (``sinks.store``),
under its own root (``archive_root``, by default beside the HDB). Files go in
whole or not at all: a temporary file renamed into place on a disk, a single
upload on S3, so a reader never sees half a file under its name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from sinks.archive_manifest import MANIFEST_NAME, ArchiveManifest, ArchiveManifestError
from sinks.store import HdbStore, StoreError
from tickplant.config import Settings

log = logging.getLogger("tickplant.archive")

OFF = ("off", "none", "false", "no", "0")


class ArchiveError(RuntimeError):
    """A day cannot be archived or read from the archive; the message says which and why."""


def archive_root(settings: Settings) -> str | None:
    """Where the archive lives; None when it is switched off (``archive_root = "off"``)."""
    root = settings.archive_root.strip()
    if root.lower() in OFF:
        return None
    if root:
        return root
    hdb = settings.hdb_root.strip().rstrip("/")
    if hdb.startswith("s3://"):
        bucket, _, prefix = hdb[len("s3://"):].partition("/")
        parent = prefix.rpartition("/")[0]
        return f"s3://{bucket}/{parent + '/' if parent else ''}archive"
    if hdb:
        return str(Path(hdb).expanduser().resolve().parent / "archive")
    return str(Path(settings.data_dir).resolve() / "archive")


class ArchiveStore:
    """The archive root on a disk or S3: days' directories, manifests, files put whole."""

    def __init__(self, root: str, s3_endpoint: str = "", s3_region: str = "us-east-1"):
        try:
            self.files = HdbStore(root, s3_endpoint, s3_region)  # the same layout: <table>/date=D/
        except StoreError as exc:
            raise ArchiveError(str(exc).replace("hdb_root", "archive_root")) from None
        self.fs = self.files.fs

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveStore:
        root = archive_root(settings)
        if root is None:
            raise ArchiveError("the archive is off (archive_root = 'off'): no day of the log is archived")
        return cls(root, settings.s3_endpoint, settings.s3_region)

    @property
    def display_root(self) -> str:
        return self.files.display_root

    def day_dir(self, table: str, date: dt.date) -> str:
        return self.files.partition_dir(table, date)

    def path(self, table: str, date: dt.date, name: str) -> str:
        return f"{self.day_dir(table, date)}/{name}"

    def manifest(self, table: str, date: dt.date) -> ArchiveManifest | None:
        path = self.path(table, date, MANIFEST_NAME)
        try:
            raw = self.files.read_bytes(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            text = str(exc).lower()
            if "not exist" in text or "nosuchkey" in text or "404" in text:
                return None
            raise ArchiveError(f"cannot read {path}: {exc}") from exc
        return ArchiveManifest.from_json(raw, path)

    def manifests(self, table: str | None = None) -> list[ArchiveManifest]:
        """Every complete archived day (of ``table``), by table and date; foreign files are skipped."""
        out = []
        for t in [table] if table else self.files.tables():
            for date in self.files.dates(t):
                try:
                    m = self.manifest(t, date)
                except ArchiveManifestError as exc:
                    log.warning("skipping %s", exc)
                    continue
                if m is not None:
                    out.append(m)
        return out

    def put_manifest(self, manifest: ArchiveManifest) -> None:
        self.files.put_atomic(self.path(manifest.table, manifest.date, MANIFEST_NAME), manifest.to_json())

    def open_file(self, table: str, date: dt.date, name: str) -> FileOut:
        return FileOut(self, self.path(table, date, name))

    def remove_strays(self, manifest: ArchiveManifest) -> list[str]:
        """Delete what a crashed attempt left in a day's directory that the manifest does not name."""
        keep = {f.name for f in manifest.files} | {MANIFEST_NAME}
        strays = [n for n in self.files.files(manifest.table, manifest.date) if n not in keep]
        for name in strays:
            self.files.delete(self.path(manifest.table, manifest.date, name))
        return strays


class FileOut:
    """One file written whole or not at all, hashed as it is written (fastavro's output)."""

    def __init__(self, store: ArchiveStore, path: str):
        self.store = store
        self.path = path
        self.sha = hashlib.sha256()
        self.size = 0
        if store.files.is_s3:
            self._tmp = None
            self._out: Any = store.fs.open_output_stream(path)  # the object appears only once closed
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            self._out = open(self._tmp, "wb")  # noqa: SIM115 - closed by close()

    def seekable(self) -> bool:
        return False  # fastavro: a new file, never appended to

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def discard(self) -> None:
        """Drop a file left unfinished (on S3 the upload is never completed: no object appears)."""
        if self._tmp is not None:
            self._out.close()
            Path(self._tmp).unlink(missing_ok=True)

    def close(self) -> None:
        if self._tmp is None:
            self._out.close()
            return
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self._tmp, self.path)
