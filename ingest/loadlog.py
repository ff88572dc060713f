"""The record of each object loaded, on the compacted ``_tp.loads`` topic.

Keyed by the object's identity (``ObjectRef.identity``: bucket, key and
version or ETag; a file's path, size and mtime). A record is written in the
same Kafka transaction as the rows it counts, so what the topic says was
committed is exactly what the table topics hold: ``chunks`` committed so far
(a restarted load resumes after them) and ``state`` ``done`` once the object
is loaded whole (a second delivery of it loads nothing). Read committed only.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, fields

from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.topics import TopicNames
from tickplant.config import Settings

LOADING, DONE = "loading", "done"


@dataclass
class LoadRecord:
    identity: str
    url: str
    table: str
    source: str
    format: str
    size: int
    version: str = ""
    etag: str = ""
    state: str = LOADING
    chunks: int = 0  # chunks committed (rows, dead letters and this record, one transaction each)
    chunk_rows: int = 0  # file rows per chunk: a resumed load chunks as the first run did, whatever the config
    rows: int = 0  # rows published
    rejected: int = 0  # rows dead-lettered
    checksum: str = ""  # SHA-256 of the object's bytes, once loaded
    started_ns: int = 0
    updated_ns: int = 0
    loader: str = ""  # host:pid of the process that wrote this record

    @property
    def done(self) -> bool:
        return self.state == DONE

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LoadRecord | None:
        try:
            raw = json.loads(data)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError):
            return None  # not a record of ours: nothing to resume from


class LoadIndex:
    """The latest committed record of every object, read as the topic grows."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.topic = TopicNames(settings.topic_prefix).loads
        self.records: dict[str, LoadRecord] = {}
        self.position = 0
        self._lock = threading.Lock()

    def catch_up(self, idle_timeout: float = 120.0) -> dict[str, LoadRecord]:
        """Read to the topic's end (waiting out transactions still open on it: another loader's
        chunk, or a killed loader's until its transaction times out)."""
        with self._lock:
            consumer = make_consumer(self.settings)
            try:
                _, high = watermarks(consumer, self.topic, 0)
                for msg in read_ranges(consumer, self.topic, {0: (self.position, high)}, idle_timeout=idle_timeout):
                    key = (msg.key() or b"").decode("utf-8", "replace")
                    value = msg.value()
                    if value is None:
                        self.records.pop(key, None)  # a tombstone: forgotten, may load again
                        continue
                    record = LoadRecord.decode(value)
                    if record is not None:
                        self.records[key] = record
                self.position = max(self.position, high)
            finally:
                consumer.close()
            return self.records

    def get(self, identity: str) -> LoadRecord | None:
        return self.records.get(identity)


def read_loads(settings: Settings) -> list[LoadRecord]:
    """Every object's latest record, oldest first."""
    records = LoadIndex(settings).catch_up()
    return sorted(records.values(), key=lambda r: (r.started_ns, r.identity))
