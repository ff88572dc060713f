"""Subscription (kdb+'s ``.u.sub[table; syms]``): one source's rows, filtered by sym, live.

A source is a topic keyed by sym carrying framed Avro rows: a plant table's
log (``trade``, ``quote``) or a real-time engine's derived topic
(``<prefix>rte.bars``; pass ``topic=``). Starts from now (the log's end) or,
for a table, from the start of the open day. Only the partitions that hold the
requested syms are read, since key = sym. ``start_offsets`` records where each
partition's reading began, so a caller can take a snapshot after it and know
that no row published later is missed (the gateway's hub does).
``positions`` is where each partition's reading stands after the last poll: a
subscriber that kept it resumes there (``offsets=``) with no row missed or
repeated, since a poll hands over every row of the messages it read.

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
from ingest.intake import Intake
from ingest.logread import make_tail_consumer, watermarks
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts, partition_for
from tickplant.config import Settings
from tickplant.kafka.message import position


class Subscription:
    def __init__(
        self,
        settings: Settings,
        table: str,
        syms: list[str] | None = None,
        since: str = "now",
        catalog: SchemaCatalog | None = None,
        topic: str | None = None,
        offsets: dict[int, int] | None = None,
    ):
        """``topic`` reads that topic (a derived source) instead of ``table``'s log; ``table``
        is then only the source's name and need not be in the catalog: rows decode with
        their writer's schema from the schemas topic. ``offsets`` (partition -> offset, a
        ``positions`` kept from an earlier subscription of the same syms) resumes there
        instead of ``since``; a position the log no longer (or not yet) holds is a ValueError."""
        if since not in ("now", "sod"):
            raise ValueError(f"since must be 'now' or 'sod' (start of day), not {since!r}")
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        if topic is None:
            self.table = self.catalog[table].name
            self.topic = TopicNames(settings.topic_prefix).table(self.table)
        else:
            if since == "sod":
                raise ValueError(f"since='sod' needs a plant table's day; {table!r} is a derived source")
            self.table, self.topic = table, topic
        self.syms = set(syms) if syms else None
        self.decoder = make_decoder(settings, self.catalog)
        self.errors: list[str] = []
        count = partition_counts(settings, [self.topic]).get(self.topic)
        if count is None:
            raise ValueError(f"source {self.table!r}: topic {self.topic!r} does not exist")
        parts = sorted({partition_for(s, count) for s in self.syms}) if self.syms else list(range(count))
        self.consumer = make_tail_consumer(settings)
        # a plant table's rows pass the checks every consumer makes (refused ones are the
        # consumers' to dead-letter); a derived source's are the engine's own output
        self.settings = settings
        self.intake = Intake(settings, self.catalog, self.decoder, None) if topic is None else None
        self.days = read_day_state(settings) if topic is None else None
        if offsets is not None:
            starts = self._resume_at(offsets, parts)
        elif since == "sod":
            state = self.days or read_day_state(settings)
            starts = {p: state.start_of_open_day(self.table, p) for p in parts}
        else:
            starts = {p: watermarks(self.consumer, self.topic, p)[1] for p in parts}
        self.start_offsets: dict[int, int] = starts
        self.positions: dict[int, int] = dict(starts)
        self.consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in parts])

    def _resume_at(self, offsets: dict[int, int], parts: list[int]) -> dict[int, int]:
        """The resume position checked against the partitions these syms need and the log's
        bounds, so a resume never silently skips or repeats rows."""
        if sorted(offsets) != parts:
            raise ValueError(f"resume position of {self.table!r} names partitions {sorted(offsets)}; "
                             f"these syms are read from partitions {parts}")
        for part in parts:
            low, high = watermarks(self.consumer, self.topic, part)
            if not low <= offsets[part] <= high:
                raise ValueError(f"resume position {self.topic}[{part}]@{offsets[part]} is outside the log, "
                                 f"which holds offsets {low} to {high}")
        return dict(offsets)

    def poll(self, timeout: float = 0.5, max_messages: int = 1000) -> list[dict[str, Any]]:
        """Rows that arrived since the last poll (waits up to ``timeout`` for the first).

        Returns as soon as one message is there, with whatever else is already
        fetched: ``consume(n, timeout)`` alone would wait out its timeout unless n
        messages came, which costs a live subscriber its latency.
        """
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        messages = [first]
        if max_messages > 1:
            messages.extend(self.consumer.consume(max_messages - 1, timeout=0))
        out: list[dict[str, Any]] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.errors.append(f"{self.topic}: {err}")
                continue
            _, part, offset = position(msg)
            self.positions[part] = offset + 1
            if control_of(msg.headers()):
                if self.intake is not None:
                    self.days = read_day_state(self.settings)  # the day the rows after it belong to
                continue
            if self.intake is not None and self.days is not None:
                rows = self.intake.rows(self.table, part, offset, msg.value(), self.days.date_of(self.table, part, offset))
                if self.intake.pending:
                    self.errors.append(f"{self.topic}[{part}]@{offset}: {self.intake.pending.popitem()[1][0][2]}")
                    self.intake.pending.clear()
            else:
                try:
                    _, rows = self.decoder.decode(msg.value())
                except ValueError as exc:
                    self.errors.append(f"{self.topic}[{part}]@{offset}: {exc}")
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
