"""The tickerplant: publishes rows to the log, in zero-latency or batch mode.

As kdb+tick's ``tick.q``: in zero-latency mode each row is sent at once as
its own message; in batch mode rows are gathered per (table, partition) and
every ``batch_interval_ms`` each group goes out as one block message (or
sooner when it reaches ``max_block_rows``). Either way the producer is
idempotent with acks=all and the partition is the sym's, so per-sym order is
the publish order. A row is acknowledged once ``flush()`` returns; rows the
codec rejects go to the dead-letter topic with the reason, never nowhere.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, Producer

from ingest.deadletter import DeadLetters
from ingest.framing import encode_block, encode_row
from ingest.schema_topic import SchemaTopic
from ingest.schemas import SchemaCatalog, TableSchema
from ingest.topics import TopicNames, ensure_topics, partition_for
from tickplant.config import Settings


class PublishError(RuntimeError):
    """Kafka did not acknowledge some rows; the message says how many and why."""


@dataclass
class PublishStats:
    """Counters the status line and feed reports read; updated from delivery reports."""

    delivered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: int = 0
    rejected: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class Tickerplant:
    def __init__(
        self,
        settings: Settings,
        catalog: SchemaCatalog | None = None,
        mode: str | None = None,
        source: str = "publisher",
    ):
        self.settings = settings
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.mode = mode or settings.publish_mode
        if self.mode not in ("batch", "zero"):
            raise ValueError(f"mode must be 'batch' or 'zero', not {self.mode!r}")
        self.names = TopicNames(settings.topic_prefix)
        counts = ensure_topics(settings, self.catalog)
        self.partitions = {t.name: counts[self.names.table(t.name)] for t in self.catalog}
        SchemaTopic(settings).register(self.catalog)
        self.stats = PublishStats()
        self.deadletters = DeadLetters(settings, source)
        batch = self.mode == "batch"
        self.producer = Producer(settings.kafka_config(**{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5 if batch else 0,
            "compression.type": "lz4" if batch else "none",
            "batch.size": 4 * 1024 * 1024,
            "message.max.bytes": 8 * 1024 * 1024,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1024 * 1024,
        }))
        self._buffers: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if batch:
            self._timer = threading.Thread(target=self._tick, name="tp-batch-timer", daemon=True)
            self._timer.start()

    # -- publishing ---------------------------------------------------------

    def _partition(self, table: TableSchema, row: dict[str, Any]) -> int:
        sym = row.get("sym")
        if not isinstance(sym, str) or not sym:
            raise ValueError(f"{table.name} row has no sym (a non-empty string): {row!r}")
        return partition_for(sym, self.partitions[table.name])

    def publish(self, table: str, row: dict[str, Any]) -> None:
        """Publish one row (kdb+'s ``.u.upd``)."""
        self.publish_rows(table, (row,))

    def publish_rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        schema = self.catalog[table]
        if self.mode == "zero":
            for row in rows:
                self._send_row(schema, self._partition(schema, row), row)
            self.producer.poll(0)
            return
        full: list[tuple[str, int]] = []
        cap = self.settings.max_block_rows
        parts = self.partitions[table]
        with self._lock:
            buffers = self._buffers
            for row in rows:
                sym = row.get("sym")
                if not isinstance(sym, str) or not sym:
                    raise ValueError(f"{table} row has no sym (a non-empty string): {row!r}")
                key = (table, partition_for(sym, parts))
                buf = buffers[key]
                buf.append(row)
                if len(buf) >= cap:
                    full.append(key)
            ready = [(key, buffers.pop(key)) for key in dict.fromkeys(full) if key in buffers]
        for (tname, part), block in ready:
            self._send_block(self.catalog[tname], part, block)

    def _send_row(self, schema: TableSchema, part: int, row: dict[str, Any]) -> None:
        try:
            value = encode_row(schema, row)
        except Exception as exc:  # fastavro: ValueError, TypeError, AttributeError...
            self._reject(schema, row, exc)
            return
        self._produce(schema.name, part, row["sym"].encode(), value, 1)

    def _send_block(self, schema: TableSchema, part: int, rows: list[dict[str, Any]]) -> None:
        try:
            value = encode_block(schema, rows)
        except Exception:
            # find the bad rows one by one; the good ones still go as a block
            good = []
            for row in rows:
                try:
                    encode_row(schema, row)
                    good.append(row)
                except Exception as exc:
                    self._reject(schema, row, exc)
            if not good:
                return
            rows, value = good, encode_block(schema, good)
        self._produce(schema.name, part, None, value, len(rows))

    def _produce(self, table: str, part: int, key: bytes | None, value: bytes, nrows: int) -> None:
        topic = self.names.table(table)
        callback = partial(self._delivered, table, nrows)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=part, on_delivery=callback)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _delivered(self, table: str, nrows: int, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.stats.delivered[table] += nrows
            self.stats.messages += 1
        else:
            self.stats.failed += nrows
            self.stats.errors.append(f"{table}: {nrows} rows not acknowledged: {err}")

    def _reject(self, schema: TableSchema, row: dict[str, Any], exc: Exception) -> None:
        self.stats.rejected += 1
        self.deadletters.send(schema.name, f"does not match schema {schema.name}: {exc}", row)

    # -- the batch timer ----------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            ready, self._buffers = self._buffers, defaultdict(list)
        for (table, part), rows in ready.items():
            if rows:
                self._send_block(self.catalog[table], part, rows)
        self.producer.poll(0)

    def _tick(self) -> None:
        interval = self.settings.batch_interval_ms / 1000.0
        while not self._stop.wait(interval):
            self._drain()

    # -- acknowledgement ----------------------------------------------------

    def flush(self, timeout: float = 60.0) -> None:
        """Send what is buffered and wait until Kafka acknowledged every row."""
        self._drain()
        deadline = time.monotonic() + timeout
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
        self.deadletters.flush(timeout)
        if len(self.producer):
            raise PublishError(f"{len(self.producer)} messages not acknowledged after {timeout:.0f}s")
        if self.stats.errors:
            errors, self.stats.errors = self.stats.errors, []
            raise PublishError("; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))

    def close(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._timer:
            self._timer.join()
        self.flush(timeout)

    def __enter__(self) -> Tickerplant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
