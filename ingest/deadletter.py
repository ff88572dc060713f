"""The dead-letter topic: every rejected input, with where it came from and why.

A record is JSON: ``{"source", "table", "where", "reason", "payload", "time"}``;
``payload`` is the rejected row (as JSON) or text (a CSV line, or hex of
undecodable bytes). Nothing rejected is dropped: it is here.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Producer

from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.topics import TopicNames
from tickplant.config import Settings


def _jsonable(payload: Any) -> Any:
    if isinstance(payload, bytes):
        return {"hex": payload[:65536].hex(), "bytes": len(payload)}
    if isinstance(payload, str) and len(payload) > 65536:
        return payload[:65536] + f"... ({len(payload)} chars)"
    try:
        json.dumps(payload)
        return payload
    except (TypeError, ValueError):
        return repr(payload)[:65536]


class DeadLetters:
    def __init__(self, settings: Settings, source: str):
        self.topic = TopicNames(settings.topic_prefix).deadletter
        self.source = source
        self._producer: Producer | None = None
        self._settings = settings
        self.sent = 0

    def send(self, table: str, reason: str, payload: Any, where: str = "") -> None:
        if self._producer is None:
            self._producer = Producer(self._settings.kafka_config(**{
                "enable.idempotence": True, "acks": "all",
            }))
        record = {
            "source": self.source, "table": table, "where": where, "reason": reason,
            "payload": _jsonable(payload), "time": time.time_ns(),
        }
        self._producer.produce(self.topic, key=table.encode(), value=json.dumps(record).encode())
        self._producer.poll(0)
        self.sent += 1

    def flush(self, timeout: float = 30.0) -> None:
        if self._producer is not None and self._producer.flush(timeout):
            raise RuntimeError(f"dead letters not acknowledged by {self.topic} after {timeout:.0f}s")


def read_deadletters(settings: Settings, since_offset: int = 0) -> list[dict[str, Any]]:
    """Every dead letter from ``since_offset`` on, oldest first."""
    topic = TopicNames(settings.topic_prefix).deadletter
    consumer = make_consumer(settings)
    try:
        _, high = watermarks(consumer, topic, 0)
        return [json.loads(m.value()) for m in read_ranges(consumer, topic, {0: (since_offset, high)})]
    finally:
        consumer.close()
