"""Prefix scans of a raw-mode RocksDB store (the RDB shards and the CEP partition stores).

Both stores keep records of one kind under a one-letter key prefix and read
them by seeking to the prefix and stopping at the first key past it; this is
that loop once, typed: a raw-mode store's keys and values are always bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from rocksdict import Rdict


def scan(db: Rdict, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every key under ``prefix`` in key order, from ``start`` (a key under
    the prefix) or the prefix's first key."""
    for key, value in db.items(from_key=prefix if start is None else start):
        key = cast(bytes, key)  # raw mode: bytes, whatever rocksdict's stub allows
        if not key.startswith(prefix):
            return
        yield key, value


def scan_keys(db: Rdict, prefix: bytes) -> Iterator[bytes]:
    """The keys under ``prefix`` in key order, without reading their values."""
    for key in db.keys(from_key=prefix):
        key = cast(bytes, key)  # raw mode: bytes
        if not key.startswith(prefix):
            return
        yield key
