"""Subscription (kdb+'s ``.u.sub[table; syms]``): one table's rows, filtered by sym, live.

Starts from now (the log's end) or from the start of the open day. Only the
partitions that hold the requested syms are read, since key = sym.

    with Subscription(settings, "trade", ["AAPL", "MSFT"], since="sod") as sub:
        for row in sub:
            ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from ingest.eod import read_day_state
from ingest.framing import control_of
from ingest.logread import make_consumer, watermarks
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts, partition_for
from tickplant.config import Settings


class Subscription:
    def __init__(
        self,
        settings: Settings,
        table: str,
        syms: list[str] | None = None,
        since: str = "now",
        catalog: SchemaCatalog | None = None,
    ):
        if since not in ("now", "sod"):
            raise ValueError(f"since must be 'now' or 'sod' (start of day), not {since!r}")
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.table = self.catalog[table].name
        self.syms = set(syms) if syms else None
        self.topic = TopicNames(settings.topic_prefix).table(self.table)
        self.decoder = make_decoder(settings, self.catalog)
        self.errors: list[str] = []
        count = partition_counts(settings, [self.topic])[self.topic]
        parts = sorted({partition_for(s, count) for s in self.syms}) if self.syms else list(range(count))
        self.consumer = make_consumer(settings, **{"enable.partition.eof": False})
        if since == "sod":
            state = read_day_state(settings)
            starts = {p: state.start_of_open_day(self.table, p) for p in parts}
        else:
            starts = {p: watermarks(self.consumer, self.topic, p)[1] for p in parts}
        self.consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in parts])

    def poll(self, timeout: float = 0.5, max_messages: int = 1000) -> list[dict[str, Any]]:
        """Rows that arrived since the last poll (waits up to ``timeout`` for the first)."""
        out: list[dict[str, Any]] = []
        for msg in self.consumer.consume(max_messages, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.errors.append(str(err))
                continue
            if control_of(msg.headers()):
                continue
            try:
                _, rows = self.decoder.decode(msg.value())
            except ValueError as exc:
                self.errors.append(f"{self.topic}[{msg.partition()}]@{msg.offset()}: {exc}")
                continue
            if self.syms is None:
                out.extend(rows)
            else:
                out.extend(r for r in rows if r["sym"] in self.syms)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.poll()

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
