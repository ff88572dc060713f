"""One active scaler: a Kafka consumer group of one partition is the lease.

Every scaler joins group ``<prefix>tickplant-scaler`` on the one-partition topic
``<prefix>_tp.scaler``; the broker gives the partition to exactly one member, which
is the active scaler. The others wait in the group; when the holder stops (it leaves
the group) or dies (its session times out), the broker gives the partition to one of
them. A background thread keeps polling so the membership stays alive while the
control loop is busy (a scale-in's handover can take minutes); the loop checks
``held`` before every call that changes the Auto Scaling group.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import NewTopic

from ingest.topics import create_topics
from tickplant.config import Settings

log = logging.getLogger("tickplant.scaler")
SESSION_TIMEOUT_MS = 6000  # the broker's minimum: a dead scaler's lease passes on soon


def lease_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}_tp.scaler"


class Lease:
    def __init__(self, settings: Settings, name: str = ""):
        self.settings = settings
        self.name = name or f"scaler-{uuid.uuid4().hex[:6]}"
        topic = lease_topic(settings)
        create_topics(settings, {topic: NewTopic(topic, 1, settings.replication_factor)})
        self._consumer = Consumer(settings.kafka_config(**{
            "group.id": f"{settings.topic_prefix}tickplant-scaler", "client.id": self.name,
            "enable.auto.commit": False, "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1000, "partition.assignment.strategy": "range",
        }))
        self._held = threading.Event()
        self._stop = threading.Event()
        self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)
        self._thread = threading.Thread(target=self._poll, name="scaler-lease", daemon=True)
        self._thread.start()

    def _on_assign(self, consumer: Consumer, partitions: list) -> None:
        if partitions:
            log.warning("%s: holds the scaler lease: this scaler is the active one", self.name)
            self._held.set()

    def _on_revoke(self, consumer: Consumer, partitions: list) -> None:
        if partitions and self._held.is_set():
            log.warning("%s: lost the scaler lease", self.name)
        self._held.clear()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._consumer.poll(0.5)  # the group's heartbeats and rebalances run in here
        self._held.clear()
        self._consumer.close()  # leaves the group: the next scaler takes the lease at once

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._held.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
