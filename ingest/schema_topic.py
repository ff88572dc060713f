"""Writer schemas by fingerprint on a compacted topic: the registry the log carries itself.

Every publisher registers the schemas it writes before its first row, so a
consumer holding an older or newer ``schemas/`` can always find the writer's
schema of any retained message, with no schema-registry server.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from confluent_kafka import Producer

from ingest.decoder import Decoder
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from tickplant.config import Settings


class SchemaTopic:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.topic = TopicNames(settings.topic_prefix).schemas
        self._known: dict[bytes, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._position = 0  # the topic is read up to here
        self._consumer: Any = None

    def register(self, catalog: SchemaCatalog) -> None:
        """Publish each table's writer schema (idempotent: compaction keeps one per key)."""
        producer = Producer(self.settings.kafka_config(**{"enable.idempotence": True}))
        for table in catalog:
            producer.produce(self.topic, key=table.fingerprint.hex().encode(), value=json.dumps(table.avro).encode())
            self._known[table.fingerprint] = table.avro
        remaining = producer.flush(30)
        if remaining:
            raise RuntimeError(f"could not register {remaining} schemas on {self.topic}")

    def reload(self) -> None:
        """Read what was added to the topic since the last read (all of it the first time).

        An unknown fingerprint (a corrupt or foreign message) costs one look at the
        topic's end, and a read only if schemas were added meanwhile: a burst of such
        messages must not re-read the whole topic each.
        """
        if self._consumer is None:
            self._consumer = make_consumer(self.settings)
        _, high = watermarks(self._consumer, self.topic, 0)
        if high <= self._position:
            return
        for msg in read_ranges(self._consumer, self.topic, {0: (self._position, high)}):
            key, value = msg.key(), msg.value()
            if value:
                if key is None:
                    raise ValueError(f"{self.topic}@{msg.offset()}: a schema record without a key")
                self._known[bytes.fromhex(key.decode())] = json.loads(value)
        self._position = high

    def lookup(self, fingerprint: bytes) -> dict[str, Any] | None:
        with self._lock:
            if fingerprint not in self._known:
                self.reload()
            return self._known.get(fingerprint)


def make_decoder(settings: Settings, catalog: SchemaCatalog) -> Decoder:
    """The plant's decoder: writer schemas from the schemas topic, or the registry if configured."""
    registry = None
    if settings.schema_registry_url:
        from ingest.registry import Registry

        registry = Registry(settings.schema_registry_url)
    return Decoder(catalog, SchemaTopic(settings).lookup, registry)
