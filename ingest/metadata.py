"""Node metadata on a compacted topic: who holds what, and where it answers.

Each node of the plant publishes, every few seconds, one record keyed by its
node id, with its ``kind``: an RDB worker its query URL, the tables and
partitions it holds (and whether it has caught up), per date the rows and time
range, its pid and memory; a CEP worker, a gateway and the PDB likewise what
they are and where. The gateway reads the topic to route a request to the
owner of a sym and to notice a node that stopped refreshing (dead) or said
goodbye (a tombstone on clean shutdown); ``tickplant status`` lists them all.
It is part of the log's protocol, below every role: any of them announces itself.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Producer

from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.topics import TopicNames
from tickplant.config import Settings

STALE_SECONDS = 10.0


class MetadataPublisher:
    def __init__(self, settings: Settings, node_id: str):
        self.topic = TopicNames(settings.topic_prefix).metadata
        self.node_id = node_id
        self.producer = Producer(settings.kafka_config(**{"linger.ms": 0}))

    def publish(self, record: dict[str, Any]) -> None:
        value = {"node": self.node_id, "updated": time.time(), **record}
        self.producer.produce(self.topic, key=self.node_id.encode(), value=json.dumps(value).encode())
        self.producer.poll(0)

    def goodbye(self) -> None:
        self.producer.produce(self.topic, key=self.node_id.encode(), value=None)
        self.producer.flush(10)


def read_metadata(settings: Settings, include_stale: bool = False) -> dict[str, dict[str, Any]]:
    """The latest record of every live node (stale ones only if asked), by node id."""
    topic = TopicNames(settings.topic_prefix).metadata
    nodes: dict[str, dict[str, Any]] = {}
    consumer = make_consumer(settings)
    try:
        _, high = watermarks(consumer, topic, 0)
        for msg in read_ranges(consumer, topic, {0: (0, high)}):
            raw_key, value = msg.key(), msg.value()
            if raw_key is None:
                raise ValueError(f"{topic}@{msg.offset()}: a node record without a key (the node's id)")
            key = raw_key.decode()
            if value is None:
                nodes.pop(key, None)
            else:
                nodes[key] = json.loads(value)
    finally:
        consumer.close()
    now = time.time()
    for record in nodes.values():
        record["stale"] = now - record.get("updated", 0) > STALE_SECONDS
    return {k: v for k, v in nodes.items() if include_stale or not v["stale"]}
