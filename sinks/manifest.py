"""A partition's manifest: the one file that makes a day of history visible.

The write-down writes a partition's Parquet files first and its
``_manifest.json`` last, in one atomic put (a rename on a local disk, a single
PUT on S3). Readers (``sinks.hdb``, ``tickplant hdb ls``, the gateway) list
manifests, never data files: a partition without one does not exist, so a
crash halfway through a write-down shows nothing, and a rerun replaces the
half-written files before it writes the manifest. The manifest says what the
partition holds (rows, time range, syms with their row counts), which files
make it (sizes and SHA-256 checksums, so a copy can be verified), where
in the log it came from (the EOD marker's offset ranges), and the small file of
each sym's latest row (``latest``, sinks.latest) when the day has one.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = "tickplant-hdb/1"
MANIFEST_NAME = "_manifest.json"
LATEST_FILE = "_latest/latest.parquet"  # each sym's latest row of the day (sinks.latest)


class ManifestError(ValueError):
    """A manifest is unreadable or not one of ours."""


@dataclass(frozen=True)
class FileEntry:
    """One Parquet file of a partition, in sort order (file i holds syms <= file i+1's)."""

    name: str
    rows: int
    bytes: int
    sha256: str
    sym_min: str
    sym_max: str
    row_groups: int


@dataclass
class Manifest:
    table: str
    date: dt.date
    rows: int
    time_min: int | None  # ns since the epoch, UTC; None for an empty day
    time_max: int | None
    syms: dict[str, int]  # sym -> rows, in sort order
    files: list[FileEntry]
    log_ranges: dict[int, tuple[int, int]]  # partition -> [start, end) offsets of the day
    columns: list[list[str]]  # [name, arrow type] in file order
    sort: list[str] = field(default_factory=lambda: ["sym", "time"])
    written_by: str = "pdb"
    written_at: int = 0  # ns; informational, not part of the partition's identity
    latest: FileEntry | None = None  # each sym's latest row (sinks.latest); None: written before it existed

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def identity(self) -> dict[str, Any]:
        """What makes two write-downs of a day the same partition (everything but who and when)."""
        out = self.to_dict()
        out.pop("written_by")
        out.pop("written_at")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "table": self.table,
            "date": self.date.isoformat(),
            "rows": self.rows,
            "time_min": self.time_min,
            "time_max": self.time_max,
            "syms": self.syms,
            "files": [asdict(f) for f in self.files],
            "log_ranges": {str(p): list(r) for p, r in sorted(self.log_ranges.items())},
            "columns": self.columns,
            "sort": self.sort,
            "written_by": self.written_by,
            "written_at": self.written_at,
            "latest": asdict(self.latest) if self.latest is not None else None,
        }

    # ``builtins.bytes``: in the class body ``bytes`` is the property above
    def to_json(self) -> builtins.bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_json(cls, raw: builtins.bytes, where: str = "manifest") -> Manifest:
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT:
                raise ManifestError(f"{where}: format {d.get('format')!r} is not {FORMAT!r}")
            return cls(
                table=d["table"],
                date=dt.date.fromisoformat(d["date"]),
                rows=int(d["rows"]),
                time_min=d["time_min"],
                time_max=d["time_max"],
                syms={str(k): int(v) for k, v in d["syms"].items()},
                files=[FileEntry(**f) for f in d["files"]],
                log_ranges={int(p): (int(r[0]), int(r[1])) for p, r in d["log_ranges"].items()},
                columns=[list(c) for c in d["columns"]],
                sort=list(d.get("sort", ["sym", "time"])),
                written_by=d.get("written_by", ""),
                written_at=int(d.get("written_at", 0)),
                latest=FileEntry(**d["latest"]) if d.get("latest") else None,
            )
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{where}: not a valid manifest: {exc}") from exc
