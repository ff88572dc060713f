"""The "published" marker: how the plant learns a day is in the HDB.

Written on the control topic (key ``b"day"``, JSON) after the manifest, so a
reader that sees the marker finds the partition. The RDB drops the day when
it sees it (``streams/rdb.py``), the gateway routes the date to the HDB, and
the PDB forgets its cache of the day. Sending it twice is harmless (the
day state keeps a set), which is what makes a rerun after a crash safe.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer

from ingest.eod import CONTROL_KEY
from ingest.records import PublishedMarker, encode_marker
from ingest.topics import TopicNames
from sinks.manifest import Manifest
from tickplant.config import Settings


class MarkerError(RuntimeError):
    """The marker could not be written: the day stays unpublished, to be tried again."""


def published_marker(manifest: Manifest, root: str) -> PublishedMarker:
    return PublishedMarker(manifest.table, manifest.date, manifest.rows, len(manifest.files), manifest.bytes,
                           manifest.time_min, manifest.time_max, root, manifest.written_by, time.time_ns())


class MarkerPublisher:
    """An idempotent producer on the control topic."""

    def __init__(self, settings: Settings):
        self.topic = TopicNames(settings.topic_prefix).control
        self.producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all"}))

    def publish(self, manifest: Manifest, root: str, timeout: float = 30.0) -> PublishedMarker:
        marker = published_marker(manifest, root)
        errors: list[str] = []

        def delivered(err, _msg) -> None:
            if err is not None:
                errors.append(str(err))

        self.producer.produce(self.topic, key=CONTROL_KEY, value=encode_marker(marker), on_delivery=delivered)
        if self.producer.flush(timeout) or errors:
            raise MarkerError(f"published marker for {manifest.table} {manifest.date} not written: "
                              f"{errors or 'timed out'}")
        return marker
