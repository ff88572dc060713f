"""Files and S3 objects the batch loader reads: what one is, and how to stream it.

An object's identity is what makes "loaded once" mean once: an S3 object's
bucket, key and version (its ETag when the bucket is not versioned: a new
upload under the same key is a new object, the same bytes delivered twice are
not); a file's absolute path, size and modification time. Reads go through
pyarrow's filesystems (sequential streams for CSV, random access for
Parquet's footer and row groups); an S3 object's version and ETag come from
boto3's HEAD, which pyarrow does not expose.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from tickplant.config import Settings

FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


class ObjectError(ValueError):
    """An object cannot be found, read or told apart; the message names it."""


@dataclass(frozen=True)
class ObjectRef:
    """One object to load: where it is and which version of it."""

    url: str  # s3://bucket/key or an absolute path
    size: int
    version: str = ""  # S3 version id (versioned buckets)
    etag: str = ""  # S3 ETag, quotes stripped
    mtime_ns: int = 0  # files

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.url[len("s3://"):].partition("/")
        return bucket, key

    @property
    def name(self) -> str:
        """The key or path, as sources' ``match`` globs see it."""
        return self.bucket_key[1] if self.is_s3 else self.url

    @property
    def identity(self) -> str:
        """What the load record is keyed by: the object and its version."""
        if self.is_s3:
            return f"{self.url}?versionId={self.version}" if self.version else f"{self.url}#etag={self.etag}"
        return f"{self.url}#size={self.size}&mtime_ns={self.mtime_ns}"

    @property
    def digest(self) -> str:
        """A short, fixed-length name for the identity (transactional ids, log lines)."""
        return hashlib.sha256(self.identity.encode()).hexdigest()[:24]

    @property
    def format(self) -> str:
        suffix = os.path.splitext(self.name)[1].lower()
        try:
            return FORMATS[suffix]
        except KeyError:
            raise ObjectError(f"{self.url}: cannot tell CSV from Parquet by its name "
                              f"(expected one of {', '.join(FORMATS)})") from None


def split_s3(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ObjectError(f"{url!r} is not s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_filesystem(settings: Settings) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {"region": settings.s3_region or "us-east-1", "connect_timeout": 5,
                              "request_timeout": 60}
    if settings.s3_endpoint:
        url = urlparse(settings.s3_endpoint if "://" in settings.s3_endpoint else f"http://{settings.s3_endpoint}")
        kwargs.update(endpoint_override=url.netloc, scheme=url.scheme or "http", force_virtual_addressing=False)
    return pafs.S3FileSystem(**kwargs)


def s3_client(settings: Settings) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint or None, region_name=settings.s3_region or None)


class Store:
    """The filesystems objects are read from, made once per loader."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._s3: pafs.S3FileSystem | None = None
        self._client: Any = None
        self.local = pafs.LocalFileSystem()

    @property
    def s3(self) -> pafs.S3FileSystem:
        if self._s3 is None:
            self._s3 = s3_filesystem(self.settings)
        return self._s3

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.settings)
        return self._client

    def resolve(self, url: str, version: str = "", etag: str = "") -> ObjectRef:
        """An object as it is now (its size, version, ETag or mtime): a one-line error if absent."""
        if url.startswith("s3://"):
            bucket, key = split_s3(url)
            extra = {"VersionId": version} if version else {}
            try:
                head = self.client.head_object(Bucket=bucket, Key=key, **extra)
            except Exception as exc:  # botocore ClientError (404, 403), endpoint unreachable
                raise ObjectError(f"s3://{bucket}/{key}: cannot be read: {exc}") from None
            return ObjectRef(f"s3://{bucket}/{key}", int(head["ContentLength"]),
                             version=head.get("VersionId") or version or "",
                             etag=(head.get("ETag") or etag or "").strip('"'))
        path = Path(url.removeprefix("file://")).expanduser().resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise ObjectError(f"{path}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise ObjectError(f"{path}: not a file")
        return ObjectRef(str(path), st.st_size, mtime_ns=st.st_mtime_ns)

    def listing(self, source: str) -> Iterator[ObjectRef]:
        """Every loadable object under a directory or ``s3://bucket/prefix``, oldest first."""
        if source.startswith("s3://"):
            bucket, prefix = split_s3(source)
            found = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    found.append((item["LastModified"], ObjectRef(
                        f"s3://{bucket}/{item['Key']}", int(item["Size"]), etag=item.get("ETag", "").strip('"'))))
            yield from (ref for _, ref in sorted(found, key=lambda f: (f[0], f[1].url)) if _loadable(ref))
            return
        root = Path(source).expanduser().resolve()
        if not root.is_dir():
            raise ObjectError(f"{root}: not a directory")
        refs = []
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                st = path.stat()
                refs.append(ObjectRef(str(path), st.st_size, mtime_ns=st.st_mtime_ns))
        yield from (r for r in sorted(refs, key=lambda r: (r.mtime_ns, r.url)) if _loadable(r))

    def _fs_path(self, ref: ObjectRef) -> tuple[pafs.FileSystem, str]:
        if ref.is_s3:
            bucket, key = ref.bucket_key
            return self.s3, f"{bucket}/{key}"
        return self.local, ref.url

    def open_stream(self, ref: ObjectRef) -> Any:
        fs, path = self._fs_path(ref)
        try:
            return fs.open_input_stream(path, compression=None)
        except OSError as exc:
            raise ObjectError(f"{ref.url}: cannot be read: {exc}") from None

    def open_file(self, ref: ObjectRef) -> Any:
        fs, path = self._fs_path(ref)
        try:
            return fs.open_input_file(path)
        except OSError as exc:
            raise ObjectError(f"{ref.url}: cannot be read: {exc}") from None

    def checksum(self, ref: ObjectRef, block: int = 8 << 20) -> str:
        """SHA-256 of the object's bytes, read as a stream."""
        digest = hashlib.sha256()
        fs, path = self._fs_path(ref)
        with fs.open_input_stream(path) as f:
            while chunk := f.read(block):
                digest.update(chunk)
        return digest.hexdigest()


def _loadable(ref: ObjectRef) -> bool:
    try:
        return bool(ref.format)
    except ObjectError:
        return False


class HashingStream:
    """A raw stream that hashes what passes through it: the CSV reader's input, so the object's
    checksum costs no second read."""

    def __init__(self, raw: Any):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n) if n is not None and n >= 0 else self.raw.read()
        self.digest.update(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.raw.close()

    def drain(self, block: int = 8 << 20) -> str:
        """Read whatever the reader left (after its last row) and return the hex digest."""
        while self.read(block):
            pass
        return self.digest.hexdigest()
