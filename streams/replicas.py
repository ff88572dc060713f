"""Hot-hot RDB replicas: each is its own consumer group with its own shards, a complete
copy of the day, so the gateway can fail over from one to another. The default replica
keeps the names and paths from before replicas existed, so its shards stay where they are."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ingest.node_record import NodeRecord, RdbRecord
from tickplant.config import Settings

DEFAULT_REPLICA = "a"
_REPLICA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def check_replica(name: str, tables: Iterable[str] = ()) -> str:
    """A replica name: lowercase letters, digits, ``-``/``_``; not a table's name nor
    ``workers`` (both are directories beside the replicas' under ``<data_dir>/rdb``)."""
    if not _REPLICA_NAME.fullmatch(name):
        raise ValueError(f"replica name {name!r}: use 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit")
    if name != DEFAULT_REPLICA and (name == "workers" or name in set(tables)):
        raise ValueError(f"replica name {name!r} is taken (a table or the workers' directory under rdb/)")
    return name


def group_id(settings: Settings, replica: str = DEFAULT_REPLICA) -> str:
    """The replica's consumer group: replicas read the same topics as independent copies."""
    base = f"{settings.topic_prefix}tickplant-rdb"
    return base if replica == DEFAULT_REPLICA else f"{base}-{replica}"


def replica_dir(settings: Settings, replica: str = DEFAULT_REPLICA) -> Path:
    """Where a replica's shards live: ``<data_dir>/rdb`` for the default one,
    ``<data_dir>/rdb/<name>`` for the others."""
    root = Path(settings.data_dir).resolve() / "rdb"
    return root if replica == DEFAULT_REPLICA else root / replica


def shard_path(settings: Settings, table: str, partition: int, replica: str = DEFAULT_REPLICA) -> Path:
    return replica_dir(settings, replica) / table / f"p{partition:03d}"


def replica_peers(nodes: dict[str, NodeRecord], replica: str) -> dict[str, RdbRecord]:
    """The RDB nodes of ``replica``: the only ones its workers forward to."""
    return {node: record for node, record in nodes.items()
            if isinstance(record, RdbRecord) and (record.replica or DEFAULT_REPLICA) == replica}
