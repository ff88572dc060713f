"""The dead-letter topic: every rejected input, with where it came from and why.

A record is JSON: ``{"source", "table", "where", "reason", "payload", "time"}``;
``payload`` is the rejected row (as JSON) or text (a CSV line, or hex of
undecodable bytes). Nothing rejected is dropped: it is here.

A message of the log that readers refuse (``ingest.validate``, or bytes that
do not decode) is met by every consumer, and again after each restart or
replay; it is dead-lettered once, keyed ``<topic>[<partition>]@<offset>``
(its ``where``). ``DeadLetters.report`` takes the source partition's
transactional id as a lock (``init_transactions`` fences any other reporter
and completes its transaction), reads the dead-letter topic up to what is
committed, and writes only the keys not there yet: two consumers meeting the
same message at the same moment write it once between them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from ingest.logread import LogReadError, make_consumer, read_ranges, watermarks
from ingest.topics import TopicNames
from tickplant import metrics
from tickplant.config import Settings

log = logging.getLogger("tickplant.deadletter")
REPORT_ATTEMPTS = 5


_PASSING = {KafkaError._FENCED, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
            KafkaError._MSG_TIMED_OUT, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
            KafkaError.CONCURRENT_TRANSACTIONS}


def _passing(error: KafkaError) -> bool:
    """An error that goes away by itself: the broker away or busy, or another reporter's turn."""
    return error.retriable() or error.code() in _PASSING


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


def letter(source: str, table: str, reason: str, payload: Any, where: str = "") -> bytes:
    """One dead-letter record as it goes on the topic."""
    return json.dumps({"source": source, "table": table, "where": where, "reason": reason,
                       "payload": _jsonable(payload), "time": time.time_ns()}).encode()


class DeadLetters:
    def __init__(self, settings: Settings, source: str):
        self.topic = TopicNames(settings.topic_prefix).deadletter
        self.source = source
        # the metrics' role: "rdb" of "rdb:<node>"; a publisher's source is the tickerplant's
        self.role = source.split(":", 1)[0] if ":" in source else "tickerplant"
        self._producer: Producer | None = None
        self._settings = settings
        self.sent = 0
        self._producers: dict[tuple[str, int], Producer] = {}
        self._index = _Index()

    def expect(self, tables: Any) -> None:
        """Make the dead-letter series of these tables exist at 0 (rates and alerts on them
        have a series before the first rejection)."""
        metrics.init_labels(metrics.DEAD_LETTERS, *({"role": self.role, "table": t} for t in tables))

    def send(self, table: str, reason: str, payload: Any, where: str = "") -> None:
        if self._producer is None:
            self._producer = Producer(self._settings.kafka_config(**{
                "enable.idempotence": True, "acks": "all",
            }))
        self._producer.produce(self.topic, key=table.encode(), value=letter(self.source, table, reason, payload, where))
        self._producer.poll(0)
        self.sent += 1
        metrics.DEAD_LETTERS.labels(self.role, table).inc()

    def report(self, topic: str, partition: int, letters: list[tuple[int, str, str, Any]]) -> int:
        """Dead-letter refused messages of ``topic[partition]``, (offset, table, reason, payload)
        each, unless already there; how many were written. Retried with backoff while the broker
        is away: a consumer must not skip a message it has not reported."""
        wanted = {f"{topic}[{partition}]@{offset}": (table, reason, payload)
                  for offset, table, reason, payload in letters}
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._report_once(topic, partition, wanted)
            except (KafkaException, LogReadError) as exc:
                self._producers.pop((topic, partition), None)  # fenced, or in doubt: a new one next time
                error = exc.args[0] if exc.args else None
                if attempt >= REPORT_ATTEMPTS and isinstance(error, KafkaError) and not _passing(error):
                    raise  # not the broker away nor another reporter (no right to write, say): say so
                log.warning("dead letters of %s[%d] not written yet (%s); again in %.1f s",
                            topic, partition, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _report_once(self, topic: str, partition: int, wanted: dict[str, tuple[str, str, Any]]) -> int:
        if not set(wanted) - self._index.seen:
            return 0
        producer = self._producers.get((topic, partition))
        if producer is None:
            producer = Producer(self._settings.kafka_config(**{
                "transactional.id": f"{self._settings.topic_prefix}tickplant-deadletter-{topic}-{partition}",
                "enable.idempotence": True, "acks": "all", "transaction.timeout.ms": 60_000,
            }))
            producer.init_transactions(30)  # the lock: fences other reporters, completes their transaction
            self._producers[(topic, partition)] = producer
        self._index.catch_up(self._settings, self.topic)
        todo = [key for key in wanted if key not in self._index.seen]
        if not todo:
            return 0
        producer.begin_transaction()
        for key in todo:
            table, reason, payload = wanted[key]
            producer.produce(self.topic, key=key.encode(), value=letter(self.source, table, reason, payload, key))
        try:
            producer.commit_transaction(30)
        except KafkaException:
            try:
                producer.abort_transaction(10)
            except KafkaException:
                pass
            raise
        self._index.seen.update(todo)
        self.sent += len(todo)
        for key in todo:
            metrics.DEAD_LETTERS.labels(self.role, wanted[key][0]).inc()
        return len(todo)

    def flush(self, timeout: float = 30.0) -> None:
        if self._producer is not None and self._producer.flush(timeout):
            raise RuntimeError(f"dead letters not acknowledged by {self.topic} after {timeout:.0f}s")


class _Index:
    """The ``where`` of every dead letter on the topic, read as it grows (committed records only)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.position = 0
        self._lock = threading.Lock()

    def catch_up(self, settings: Settings, topic: str) -> None:
        with self._lock:
            consumer = make_consumer(settings)
            try:
                _, high = watermarks(consumer, topic, 0)
                for msg in read_ranges(consumer, topic, {0: (self.position, high)}):
                    value = msg.value()
                    if value is None:
                        continue  # not a record of ours: nothing to deduplicate against
                    try:
                        self.seen.add(json.loads(value)["where"])
                    except (ValueError, KeyError, TypeError):
                        pass  # not a record of ours: nothing to deduplicate against
                self.position = max(self.position, high)
            finally:
                consumer.close()


def read_deadletters(settings: Settings, since_offset: int = 0) -> list[dict[str, Any]]:
    """Every dead letter from ``since_offset`` on, oldest first."""
    topic = TopicNames(settings.topic_prefix).deadletter
    consumer = make_consumer(settings)
    try:
        _, high = watermarks(consumer, topic, 0)
        letters = []
        for msg in read_ranges(consumer, topic, {0: (since_offset, high)}):
            value = msg.value()
            if value is None:
                raise ValueError(f"{topic}@{msg.offset()}: a dead letter without a value")
            letters.append(json.loads(value))
        return letters
    finally:
        consumer.close()
