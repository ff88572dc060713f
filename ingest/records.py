"""The control topic's markers, typed: one dataclass each, one encode and one decode.

Every writer (the EOD roller, the PDB's "published" marker) and every reader (the day
state of the RDB, PDB, gateway and status) goes through these, so the JSON on the
topic is spelled in one place. Each marker carries a ``version``; a marker written
before versions existed reads as version 1. A reader that meets a newer version or a
malformed marker gets a ``RecordError`` (one line: what and where) and skips it with
a warning rather than stopping.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

MARKER_VERSION = 1


class RecordError(ValueError):
    """A record this build cannot read: malformed, or a newer version than it knows."""


@dataclass(frozen=True)
class OpenMarker:
    """The plant's first trading day is open."""

    date: dt.date
    at: int  # ns, the clock's
    version: int = MARKER_VERSION
    kind: str = field(default="open", init=False)


@dataclass(frozen=True)
class EodMarker:
    """A day closed: each table partition's [first offset, fence offset] in it, and the next day."""

    date: dt.date
    next: dt.date
    at: int
    tables: dict[str, dict[int, tuple[int, int]]]
    version: int = MARKER_VERSION
    kind: str = field(default="eod", init=False)


@dataclass(frozen=True)
class PublishedMarker:
    """A table's day is in the HDB (written after its manifest)."""

    table: str
    date: dt.date
    rows: int
    files: int
    bytes: int
    time_min: int | None
    time_max: int | None
    root: str
    by: str
    at: int
    version: int = MARKER_VERSION
    kind: str = field(default="published", init=False)


Marker = OpenMarker | EodMarker | PublishedMarker


def check_version(raw: Mapping[str, Any], newest: int, what: str) -> int:
    """A record's version (1 when it says none: written before versions); RecordError if it is
    not one this build reads."""
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(f"{what}: version {version!r} (a positive integer expected)")
    if version > newest:
        raise RecordError(f"{what}: version {version}; this build reads versions up to {newest} (upgrade it)")
    return version


def encode_marker(marker: Marker) -> bytes:
    base: dict[str, Any] = {"kind": marker.kind, "version": marker.version, "date": marker.date.isoformat(),
                            "at": marker.at}
    if isinstance(marker, EodMarker):
        base["next"] = marker.next.isoformat()
        base["tables"] = {t: {str(p): [start, end] for p, (start, end) in sorted(parts.items())}
                          for t, parts in marker.tables.items()}
    elif isinstance(marker, PublishedMarker):
        base.update(table=marker.table, rows=marker.rows, files=marker.files, bytes=marker.bytes,
                    time_min=marker.time_min, time_max=marker.time_max, root=marker.root, by=marker.by)
    return json.dumps(base).encode()


def json_object(value: bytes, what: str) -> dict[str, Any]:
    """A record's JSON object; RecordError saying ``what`` it is (and where) if it is none."""
    try:
        raw = json.loads(value)
    except ValueError as exc:
        raise RecordError(f"{what} that is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{what} that is not a JSON object: {raw!r:.80}")
    return raw


def decode_marker(value: bytes, where: str) -> Marker:
    """The marker in ``value``; RecordError naming ``where`` (topic@offset) if it cannot be read."""
    raw = json_object(value, f"{where}: a control marker")
    kind = raw.get("kind")
    version = check_version(raw, MARKER_VERSION, f"{where}: a {kind!r} marker")
    try:
        date = dt.date.fromisoformat(raw["date"])
        if kind == "open":
            return OpenMarker(date, int(raw.get("at", 0)), version)
        if kind == "eod":
            tables = {str(t): {int(p): (int(se[0]), int(se[1])) for p, se in parts.items()}
                      for t, parts in raw["tables"].items()}
            return EodMarker(date, dt.date.fromisoformat(raw["next"]), int(raw.get("at", 0)), tables, version)
        if kind == "published":
            return PublishedMarker(str(raw["table"]), date, int(raw.get("rows", 0)), int(raw.get("files", 0)),
                                   int(raw.get("bytes", 0)), raw.get("time_min"), raw.get("time_max"),
                                   str(raw.get("root", "")), str(raw.get("by", "")), int(raw.get("at", 0)), version)
    except KeyError as exc:
        raise RecordError(f"{where}: a {kind!r} marker without {exc}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise RecordError(f"{where}: a malformed {kind!r} marker ({exc})") from None
    raise RecordError(f"{where}: a control marker of unknown kind {kind!r} (open, eod or published expected)")


def read_marker(value: bytes, where: str) -> Marker | None:
    """``decode_marker`` for a reader that must go on: an unreadable marker is logged and skipped."""
    try:
        return decode_marker(value, where)
    except RecordError as exc:
        log.warning("skipped: %s", exc)
        return None
