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

import dataclasses
import logging
import time

from confluent_kafka import Producer

from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.node_record import NodeRecord, decode_node, encode_node
from ingest.records import RecordError
from ingest.topics import TopicNames
from tickplant.config import Settings

log = logging.getLogger(__name__)

STALE_SECONDS = 10.0


class MetadataPublisher:
    def __init__(self, settings: Settings, node_id: str):
        self.topic = TopicNames(settings.topic_prefix).metadata
        self.node_id = node_id
        self.producer = Producer(settings.kafka_config(**{"linger.ms": 0}))

    def publish(self, record: NodeRecord) -> None:
        """Announce ``record`` as this node's, stamped now."""
        value = encode_node(dataclasses.replace(record, node=self.node_id, updated=time.time()))
        self.producer.produce(self.topic, key=self.node_id.encode(), value=value)
        self.producer.poll(0)

    def goodbye(self) -> None:
        self.producer.produce(self.topic, key=self.node_id.encode(), value=None)
        self.producer.flush(10)


def read_metadata(settings: Settings, include_stale: bool = False) -> dict[str, NodeRecord]:
    """The latest record of every live node (stale ones only if asked), by node id; a record
    this build cannot read is logged and left out."""
    topic = TopicNames(settings.topic_prefix).metadata
    nodes: dict[str, NodeRecord] = {}
    consumer = make_consumer(settings)
    try:
        _, high = watermarks(consumer, topic, 0)
        for msg in read_ranges(consumer, topic, {0: (0, high)}):
            raw_key, value = msg.key(), msg.value()
            if raw_key is None:
                log.warning("skipped: %s@%s: a node record without a key (the node's id)", topic, msg.offset())
                continue
            key = raw_key.decode()
            if value is None:
                nodes.pop(key, None)
                continue
            try:
                nodes[key] = decode_node(key, value, f"{topic}@{msg.offset()}")
            except RecordError as exc:
                log.warning("skipped: %s", exc)
                nodes.pop(key, None)  # its earlier record is not what it says now
    finally:
        consumer.close()
    now = time.time()
    marked = {k: dataclasses.replace(r, stale=now - r.updated > STALE_SECONDS) for k, r in nodes.items()}
    return {k: r for k, r in marked.items() if include_stale or not r.stale}
