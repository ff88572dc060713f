"""The control topic followed as it grows: the day state (ingest/eod.py) kept current
without re-reading the topic each time (the PDB and the log's archiver follow it)."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, TopicPartition

from ingest.eod import CONTROL_KEY, DayState
from ingest.logread import make_consumer
from ingest.topics import TopicNames
from tickplant.config import Settings


class ControlFollower:
    """The control topic, read as it grows: the day state without re-reading it each time."""

    def __init__(self, settings: Settings):
        self.topic = TopicNames(settings.topic_prefix).control
        self.state = DayState()
        self.consumer = make_consumer(settings)
        self.consumer.assign([TopicPartition(self.topic, 0, 0)])

    def poll(self, until_end: bool = False, timeout: float = 30.0) -> int:
        """Apply new markers; with ``until_end``, read to the end of the topic first."""
        applied = 0
        deadline = time.monotonic() + timeout
        while True:
            at_end = False
            for msg in self.consumer.consume(1000, timeout=0.05 if until_end else 0):
                err = msg.error()
                if err is not None:
                    at_end = at_end or err.code() == KafkaError._PARTITION_EOF
                    continue
                value = msg.value()
                if msg.key() == CONTROL_KEY and value and self.state.apply_message(value, f"{self.topic}@{msg.offset()}"):
                    applied += 1
            if not until_end or at_end:
                return applied
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {self.topic} to its end in {timeout:.0f}s")

    def close(self) -> None:
        self.consumer.close()
