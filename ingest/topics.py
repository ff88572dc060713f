"""The tickerplant log's topics: one per table, keyed by sym, plus the plant's own.

- ``<prefix><table>``: the table's log; partition = murmur2(sym) as Kafka's
  Java clients compute it, so a set of partitions is a set of syms;
- ``<prefix>_tp.control``: end-of-day markers (one partition: a total order);
- ``<prefix>_tp.schemas``: writer schemas by fingerprint (compacted);
- ``<prefix>_tp.deadletter``: rejected input with the reason;
- ``<prefix>_tp.metadata``: what each data node holds and its address (compacted);
- ``<prefix>_tp.loads``: the batch loader's record of each object loaded (compacted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

from confluent_kafka.admin import AdminClient, NewTopic

from ingest.schemas import SchemaCatalog
from tickplant.config import Settings
from tickplant.kafka.admin import admin_client

_M = 0x5BD1E995


@lru_cache(maxsize=1 << 16)
def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), unsigned."""
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = length & ~3
    extra = length % 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(sym: str, partitions: int) -> int:
    """The partition of a sym: the Java client's default for key = sym."""
    return (murmur2(sym.encode()) & 0x7FFFFFFF) % partitions


class TopicError(RuntimeError):
    """A topic is missing or could not be created."""


@dataclass(frozen=True)
class TopicNames:
    prefix: str = ""

    def table(self, table: str) -> str:
        return f"{self.prefix}{table}"

    @property
    def control(self) -> str:
        return f"{self.prefix}_tp.control"

    @property
    def schemas(self) -> str:
        return f"{self.prefix}_tp.schemas"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}_tp.deadletter"

    @property
    def rdb_assignment(self) -> str:
        """The RDB group's membership topic: partition p of it is partition p of every table."""
        return f"{self.prefix}_tp.rdb.assignment"

    @property
    def metadata(self) -> str:
        """Data nodes say what they hold and where they answer (compacted, key = node id)."""
        return f"{self.prefix}_tp.metadata"

    @property
    def loads(self) -> str:
        """The batch loader's load records (compacted, key = the object and its version)."""
        return f"{self.prefix}_tp.loads"

    def derived(self, name: str) -> str:
        """A real-time engine's output (``rte.bars``, ``rte.analytics``): keyed by sym, Avro."""
        return f"{self.prefix}rte.{name}"


def partition_counts(settings: Settings, topics: list[str], timeout: float = 10.0) -> dict[str, int]:
    """Partition count of each existing topic (missing topics are absent)."""
    meta = admin_client(settings).list_topics(timeout=timeout)
    return {t: len(meta.topics[t].partitions) for t in topics if t in meta.topics and not meta.topics[t].error}


def ensure_topics(settings: Settings, catalog: SchemaCatalog, timeout: float = 30.0) -> dict[str, int]:
    """Create whatever topics are missing; return every plant topic's partition count."""
    names = TopicNames(settings.topic_prefix)
    retention = str(settings.retention_hours * 3600 * 1000)
    rf = settings.replication_factor
    wanted = {
        names.table(t.name): NewTopic(
            names.table(t.name), settings.partitions, rf,
            config={"retention.ms": retention, "max.message.bytes": "8388608"},
        )
        for t in catalog
    }
    wanted[names.control] = NewTopic(names.control, 1, rf, config={"retention.ms": "-1"})
    wanted[names.schemas] = NewTopic(names.schemas, 1, rf, config={"cleanup.policy": "compact"})
    wanted[names.deadletter] = NewTopic(names.deadletter, 1, rf, config={"retention.ms": retention})
    wanted[names.rdb_assignment] = NewTopic(names.rdb_assignment, settings.partitions, rf)
    wanted[names.metadata] = NewTopic(
        names.metadata, 1, rf, config={"cleanup.policy": "compact", "segment.ms": "600000"}
    )
    wanted[names.loads] = NewTopic(names.loads, 1, rf, config={"cleanup.policy": "compact"})
    return create_topics(settings, wanted, timeout)


CREATE_ATTEMPTS = 3


def create_topics(settings: Settings, wanted: dict[str, NewTopic], timeout: float = 30.0) -> dict[str, int]:
    """Create those of ``wanted`` that are missing (racing creators are fine) and wait until
    every one has leaders; return each one's partition count."""
    admin = admin_client(settings)
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except Exception as exc:
        raise TopicError(f"Kafka at {settings.bootstrap} is unreachable: {exc}") from exc
    missing = [nt for name, nt in wanted.items() if name not in existing]
    for attempt in range(CREATE_ATTEMPTS):  # a cluster just formed may move its controller meanwhile
        failed: dict[str, Exception] = {}
        for name, future in (admin.create_topics(missing, operation_timeout=timeout).items() if missing else ()):
            try:
                future.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    failed[name] = exc
        if not failed:
            break
        if attempt == CREATE_ATTEMPTS - 1:
            name, error = next(iter(failed.items()))
            raise TopicError(f"could not create topic {name}: {error}") from error
        time.sleep(1.0)
        missing = [nt for nt in missing if nt.topic in failed]
    return _wait_for_leaders(admin, list(wanted), timeout)


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float) -> dict[str, int]:
    """A new topic answers reads only once every partition has a leader."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(timeout=timeout).topics
        pending = [
            t for t in topics
            if t not in meta or meta[t].error or any(p.leader < 0 for p in meta[t].partitions.values())
        ]
        if not pending:
            return {t: len(meta[t].partitions) for t in topics}
        if time.monotonic() > deadline:
            raise TopicError(f"topics without a leader after {timeout:.0f}s: {pending}")
        time.sleep(0.1)
