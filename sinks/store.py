"""Where history lives: ``<root>/<table>/date=YYYY-MM-DD/`` on a local disk or S3.

One interface over both (pyarrow's filesystems), so the PDB, the backfill and
the readers never ask which it is. The root is ``settings.hdb_root``: a local
directory (default ``<data_dir>/hdb``) or ``s3://bucket/prefix`` on AWS or any
S3-compatible endpoint (``settings.s3_endpoint``, e.g. SeaweedFS or MinIO);
S3 credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID``...).

A partition exists for readers only once its manifest does (``sinks.manifest``):
``dates`` and ``manifests`` list manifests, never data files.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from sinks.manifest import MANIFEST_NAME, Manifest, ManifestError
from tickplant.config import Settings

_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_GLOB_CHARS = set("*?{}[]'\\")


class StoreError(RuntimeError):
    """The HDB root is misconfigured or unreachable; the message names it."""


def hdb_root(settings: Settings) -> str:
    """The configured root, the default being ``<data_dir>/hdb``."""
    return settings.hdb_root or str(Path(settings.data_dir).resolve() / "hdb")


class HdbStore:
    """The HDB root: partition paths, manifests, and atomic puts."""

    def __init__(self, root: str, s3_endpoint: str = "", s3_region: str = "us-east-1"):
        self.root = root
        self.s3_endpoint = s3_endpoint.rstrip("/")
        self.s3_region = s3_region or "us-east-1"
        self.is_s3 = root.startswith("s3://")
        if self.is_s3:
            bucket, _, prefix = root[len("s3://"):].strip("/").partition("/")
            if not bucket:
                raise StoreError(f"hdb_root {root!r} names no bucket (s3://bucket/prefix)")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            kwargs: dict[str, object] = {
                "region": self.s3_region, "connect_timeout": 5, "request_timeout": 60,
                "check_directory_existence_before_creation": False,
            }
            if self.s3_endpoint:
                url = urlparse(self.s3_endpoint if "://" in self.s3_endpoint else f"http://{self.s3_endpoint}")
                kwargs.update(endpoint_override=url.netloc, scheme=url.scheme or "http", force_virtual_addressing=False)
            self.fs: pafs.FileSystem = pafs.S3FileSystem(**kwargs)
            self.base = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = str(Path(root).expanduser().resolve())
        if _GLOB_CHARS & set(self.base):
            raise StoreError(f"hdb_root {root!r} must not contain any of {''.join(sorted(_GLOB_CHARS))}")

    @classmethod
    def from_settings(cls, settings: Settings) -> HdbStore:
        return cls(hdb_root(settings), settings.s3_endpoint, settings.s3_region)

    def __repr__(self) -> str:
        return f"HdbStore({self.display_root!r})"

    @property
    def display_root(self) -> str:
        return f"s3://{self.base}" if self.is_s3 else self.base

    # -- paths ----------------------------------------------------------------

    def table_dir(self, table: str) -> str:
        return f"{self.base}/{table}"

    def partition_dir(self, table: str, date: dt.date) -> str:
        return f"{self.base}/{table}/date={date.isoformat()}"

    def manifest_path(self, table: str, date: dt.date) -> str:
        return f"{self.partition_dir(table, date)}/{MANIFEST_NAME}"

    # -- reading ----------------------------------------------------------------

    def _list(self, path: str, recursive: bool) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
        except OSError as exc:
            raise StoreError(f"cannot list {self.display_root}: {exc}") from exc

    def tables(self) -> list[str]:
        """Tables with at least one published partition."""
        tables = set()
        base_depth = self.base.count("/")
        for info in self._list(self.base, recursive=True):
            parts = info.path.split("/")
            if info.path.endswith("/" + MANIFEST_NAME) and len(parts) == base_depth + 4:
                tables.add(parts[base_depth + 1])
        return sorted(tables)

    def dates(self, table: str) -> list[dt.date]:
        """Published days of ``table``: those with a manifest, oldest first."""
        return sorted(self.published(table))

    def published(self, table: str) -> dict[dt.date, str]:
        """Published days of ``table``, each with its manifest's stamp (size and modification
        time, as listed): a stamp that changed means the day was written again."""
        out = {}
        prefix = self.table_dir(table) + "/"
        for info in self._list(self.table_dir(table), recursive=True):
            rel = info.path[len(prefix):] if info.path.startswith(prefix) else ""
            head, _, name = rel.partition("/")
            m = _DATE_DIR.match(head)
            if m and name == MANIFEST_NAME:
                out[dt.date.fromisoformat(m.group(1))] = f"{info.size}:{info.mtime_ns}"
        return out

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def manifest(self, table: str, date: dt.date) -> Manifest | None:
        path = self.manifest_path(table, date)
        try:
            raw = self.read_bytes(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if "not exist" in str(exc).lower() or "nosuchkey" in str(exc).lower() or "404" in str(exc):
                return None
            raise StoreError(f"cannot read {path}: {exc}") from exc
        return Manifest.from_json(raw, path)

    def manifests(self, table: str | None = None) -> list[Manifest]:
        out = []
        for t in [table] if table else self.tables():
            for date in self.dates(t):
                try:
                    m = self.manifest(t, date)
                except ManifestError:
                    continue  # not ours: never shown, never overwritten silently
                if m is not None:
                    out.append(m)
        return out

    def files(self, table: str, date: dt.date) -> dict[str, int]:
        """Every object under a partition's directory: name -> size (data files and strays)."""
        prefix = self.partition_dir(table, date) + "/"
        return {
            info.path[len(prefix):]: info.size
            for info in self._list(self.partition_dir(table, date), recursive=True)
            if info.type == pafs.FileType.File
        }

    def verify(self, manifest: Manifest) -> list[str]:
        """Problems with a published partition's files (missing, wrong size): [] if none."""
        present = self.files(manifest.table, manifest.date)
        problems = []
        for f in [*manifest.files, *([manifest.latest] if manifest.latest else [])]:
            if f.name not in present:
                problems.append(f"{f.name} is missing")
            elif present[f.name] != f.bytes:
                problems.append(f"{f.name} has {present[f.name]} bytes, the manifest says {f.bytes}")
        return problems

    # -- writing ----------------------------------------------------------------

    def open_output(self, path: str) -> pafs.NativeFile:
        if not self.is_s3:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return self.fs.open_output_stream(path)

    def put_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` all at once: readers see the old content or the new."""
        if self.is_s3:
            with self.fs.open_output_stream(path) as out:  # one PUT: atomic on S3
                out.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def clear_partition(self, table: str, date: dt.date, keep_manifest: bool = False) -> list[str]:
        """Delete a partition's files (a crashed write-down's leftovers); return their names."""
        removed = []
        for name in self.files(table, date):
            if keep_manifest and name == MANIFEST_NAME:
                continue
            self.delete(f"{self.partition_dir(table, date)}/{name}")
            removed.append(name)
        return removed

    def staging_dir(self, table: str, date: dt.date) -> str:
        """A fresh directory beside the table's partitions (no query's ``date=`` glob, nor
        ``dates``, sees it) where a rewrite of a partition is written before ``swap_in``."""
        return f"{self.table_dir(table)}/.rewrite-date={date.isoformat()}-{uuid.uuid4().hex[:8]}"

    def remove_dir(self, path: str) -> None:
        """Delete a directory and everything in it (a staging directory)."""
        try:
            self.fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass

    def swap_in(self, manifest: Manifest, staging: str) -> None:
        """Replace a published partition with the files written in ``staging``: the old
        manifest goes first (the day is unlisted), then its files; the new files move in
        and the new manifest makes the day visible again. A crash in between leaves a
        partition without a manifest, invisible and redone from the log, never a mix."""
        table, date = manifest.table, manifest.date
        self.unpublish(table, date)
        target = self.partition_dir(table, date)
        if not self.is_s3:
            os.makedirs(target, exist_ok=True)
        for f in [*manifest.files, *([manifest.latest] if manifest.latest else [])]:
            if not self.is_s3:
                os.makedirs(os.path.dirname(f"{target}/{f.name}"), exist_ok=True)
            self.fs.move(f"{staging}/{f.name}", f"{target}/{f.name}")
        self.put_atomic(self.manifest_path(table, date), manifest.to_json())
        self.remove_dir(staging)

    def unpublish(self, table: str, date: dt.date) -> None:
        """Make a partition invisible (manifest first), then remove its files."""
        self.delete(self.manifest_path(table, date))
        self.clear_partition(table, date)
