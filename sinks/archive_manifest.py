"""An archived day's manifest: the one file that makes a day of the log's archive complete.

The archiver writes a day's Avro container files first and ``_manifest.json``
last, in one atomic put: a day without a manifest is unfinished (a crash) and
is written again, never read. The manifest says, per partition of the table's
topic, which offsets the day spans in the log (the EOD marker's ``[start,
end)``), the first and last offset archived and how many messages, which files
hold them with each one's size and SHA-256 (checked before any file is read),
and every writer schema the day's messages name, by fingerprint (and by
Confluent schema id), so the archive decodes without the schemas topic or the
registry.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sinks.manifest import MANIFEST_NAME

FORMAT = "tickplant-archive/1"
__all__ = ["MANIFEST_NAME", "ArchiveFile", "ArchiveManifest", "ArchiveManifestError", "PartitionArchive"]


class ArchiveManifestError(ValueError):
    """A manifest is unreadable or not an archive's."""


@dataclass(frozen=True)
class ArchiveFile:
    """One Avro container file: consecutive messages of one partition."""

    name: str
    messages: int
    bytes: int
    sha256: str
    first_offset: int
    last_offset: int


@dataclass
class PartitionArchive:
    """What the archive holds of one partition's day."""

    start: int  # the day's range in the log, [start, end): end is the fence's offset
    end: int
    messages: int = 0  # committed messages read in the range (aborted ones are not in the log)
    first_offset: int | None = None
    last_offset: int | None = None
    files: list[ArchiveFile] = field(default_factory=list)


@dataclass
class ArchiveManifest:
    table: str
    topic: str
    date: dt.date
    partitions: dict[int, PartitionArchive]
    schemas: dict[str, dict[str, Any]]  # writer schema fingerprint (hex) -> the Avro schema
    registry_schemas: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {"schema", "block"}
    written_by: str = "archiver"
    written_at: int = 0  # ns; informational, not part of the archive's identity

    @property
    def files(self) -> list[ArchiveFile]:
        return [f for p in sorted(self.partitions) for f in self.partitions[p].files]

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions.values())

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def ranges(self) -> dict[int, tuple[int, int]]:
        return {p: (a.start, a.end) for p, a in sorted(self.partitions.items())}

    def identity(self) -> dict[str, Any]:
        """What makes two archives of a day the same (everything but who wrote it and when)."""
        out = self.to_dict()
        out.pop("written_by")
        out.pop("written_at")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "table": self.table,
            "topic": self.topic,
            "date": self.date.isoformat(),
            "partitions": {
                str(p): {**{k: v for k, v in asdict(a).items() if k != "files"},
                         "files": [asdict(f) for f in a.files]}
                for p, a in sorted(self.partitions.items())
            },
            "schemas": dict(sorted(self.schemas.items())),
            "registry_schemas": {str(i): s for i, s in sorted(self.registry_schemas.items())},
            "written_by": self.written_by,
            "written_at": self.written_at,
        }

    def to_json(self) -> builtins.bytes:  # builtins': ``bytes`` here is the size property
        return json.dumps(self.to_dict(), indent=1, sort_keys=False).encode()

    @classmethod
    def from_json(cls, raw: builtins.bytes, where: str) -> ArchiveManifest:
        try:
            d = json.loads(raw)
            if d.get("format") != FORMAT:
                raise ArchiveManifestError(f"{where}: not an archive manifest (format {d.get('format')!r})")
            partitions = {
                int(p): PartitionArchive(
                    start=a["start"], end=a["end"], messages=a["messages"], first_offset=a["first_offset"],
                    last_offset=a["last_offset"], files=[ArchiveFile(**f) for f in a["files"]],
                )
                for p, a in d["partitions"].items()
            }
            return cls(
                table=d["table"], topic=d["topic"], date=dt.date.fromisoformat(d["date"]), partitions=partitions,
                schemas=d["schemas"], registry_schemas={int(i): s for i, s in d.get("registry_schemas", {}).items()},
                written_by=d.get("written_by", ""), written_at=d.get("written_at", 0),
            )
        except ArchiveManifestError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveManifestError(f"{where}: unreadable archive manifest: {exc}") from exc
