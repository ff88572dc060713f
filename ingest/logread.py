"""Reading bounded ranges of the log: the one primitive under replay, EOD and schemas.

Every reader here is read_committed (aborted transactions never appear) and
uses no consumer group: it assigns partitions and offsets itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from tickplant.config import Settings

_NO_LEADER = {
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
}


class LogReadError(RuntimeError):
    """A range could not be read to its end in time."""


# A consumer that follows the live end of the log asks with this wait: the broker answers a fetch
# as soon as a row arrives (fetch.min.bytes is 1), so the wait costs no latency; it only bounds
# how often an idle reader asks, and each ask costs the broker CPU (one reader at 5 ms with
# nothing to read: 13% of a core here)
TAIL_FETCH_WAIT_MS = 100


def make_consumer(settings: Settings, **extra: object) -> Consumer:
    config = settings.kafka_config(**{
        "group.id": f"tickplant-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        # an empty fetch at the log's end is held this long by the broker (default 500 ms):
        # short, so reaching the end of a range is seen at once
        "fetch.wait.max.ms": 20,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        **extra,
    })
    return Consumer(config)


def make_tail_consumer(settings: Settings, **extra: object) -> Consumer:
    """A consumer that follows the live end of the log (no end-of-partition events; see
    ``TAIL_FETCH_WAIT_MS``)."""
    return make_consumer(settings, **{"enable.partition.eof": False, "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS,
                                      **extra})


def watermarks(consumer: Consumer, topic: str, partition: int, timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) offsets; retried while a new topic's partition has no leader yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() not in _NO_LEADER or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_ranges(
    consumer: Consumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    idle_timeout: float = 30.0,
    batch: int = 10_000,
) -> Iterator[Message]:
    """Yield every committed message of ``topic`` with start <= offset < end, per partition.

    Partitions are interleaved as the broker returns them; within one the
    order is the log's. Raises LogReadError if no progress for ``idle_timeout``.
    """
    todo = {p: (s, e) for p, (s, e) in ranges.items() if e > s}
    if not todo:
        return
    consumer.assign([
        TopicPartition(topic, p, s if s >= 0 else OFFSET_BEGINNING) for p, (s, _) in todo.items()
    ])
    last_progress = time.monotonic()
    try:
        while todo:
            # consume() waits out its timeout unless the batch fills: keep it short
            messages = consumer.consume(batch, timeout=0.05)
            if not messages:
                if time.monotonic() - last_progress > idle_timeout:
                    raise LogReadError(
                        f"reading {topic}: no progress for {idle_timeout:.0f}s; still waiting on "
                        + ", ".join(f"partition {p} up to offset {e}" for p, (_, e) in todo.items())
                    )
                continue
            last_progress = time.monotonic()
            for msg in messages:
                part = msg.partition()
                if part not in todo:
                    continue
                # an EOF event and a delivered message both carry an offset; -1 if one ever did not
                offset = msg.offset()
                at = -1 if offset is None else offset
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if at >= todo[part][1]:
                            del todo[part]
                        continue
                    raise LogReadError(f"reading {topic}[{part}]: {err}")
                if at >= todo[part][1]:
                    del todo[part]
                    continue
                yield msg
                if at >= todo[part][1] - 1:
                    del todo[part]
    finally:
        consumer.unassign()
