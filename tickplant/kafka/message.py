"""Where a consumed Kafka message sits, typed.

confluent-kafka types a message's topic, partition and offset as optional
(an error event may lack them); a message delivered without an error has all
three, and this says so once instead of at every reader.
"""

from __future__ import annotations

from confluent_kafka import Message


def position(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a message consumed without an error."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"a Kafka message without a log position: {topic}[{partition}]@{offset}")
    return topic, partition, offset
