"""A killed RDB host's partitions moving to another host: how long until it serves them.

Two RDB workers, each on a disk of its own (nothing shared but the broker),
split a day of trades between them. The first is killed with kill -9; the
second is given its partitions, has no copy of them, and rebuilds them from
the log (from the real-time days' fences). The figure is the time from the
kill until the survivor serves every partition with every row; the baseline,
measured in the same run, is a bare confluent-kafka consumer reading the moved
partitions' messages from the same log (what any rebuild must at least read).

    python -m bench handover [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench.common import Report, Result, fresh, run_alone
from bench.rdb import BenchWorker, publish
from ingest.eod import open_first_day
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from streams.client import RdbClientError
from tickplant.config import Settings


def bench_handover(base: Settings, catalog: SchemaCatalog, rows: int, tmp: Path) -> list[Result]:
    settings = fresh(base).replace(internal_secret="bench-handover")  # two hosts, one plant
    open_first_day(settings, catalog)
    publish(settings, catalog, "trade", rows, "batch")
    hosts = [BenchWorker(settings.replace(data_dir=tmp / f"host-{n}"), f"rdb-host-{n}") for n in "ab"]
    try:
        for worker in hosts:
            worker.start()
        first, second = hosts
        while not (_partitions(first) and _partitions(second) and _held(second) >= rows):
            time.sleep(0.1)  # both hold some partitions, the whole day is in (a count is forwarded)
        moved = sorted(_partitions(first))
        killed = time.perf_counter()
        first.kill9()
        while not (len(_partitions(second)) == settings.partitions and second.client.status()["serving"]
                   and _held(second) >= rows):
            time.sleep(0.05)
        took = time.perf_counter() - killed
        raw, messages = _raw_read(settings, moved)
    finally:
        for worker in hosts:
            worker.stop()
    return [Result(f"RDB host killed: partitions moved and rebuilt ({rows:,}-row day)", took, raw, "-", None, "s",
                   f"{len(moved)} of {settings.partitions} partitions, {messages:,} messages; kill -9 until the "
                   "survivor serves every row; baseline: a bare consumer reading those partitions")]


def _partitions(worker: BenchWorker) -> set[int]:
    try:
        return set(worker.client.status()["tables"].get("trade", {}).get("partitions", []))
    except RdbClientError:
        return set()


def _held(worker: BenchWorker) -> int:
    """The day's rows the worker answers for (forwarded to its peer for partitions it lacks)."""
    try:
        return sum(worker.client.count("trade").values())
    except RdbClientError:  # its peer just died: not yet
        return 0


def _raw_read(settings: Settings, partitions: list[int]) -> tuple[float, int]:
    """Seconds for a bare confluent-kafka consumer to read these partitions of the day."""
    topic = TopicNames(settings.topic_prefix).table("trade")
    consumer = Consumer(settings.kafka_config(**{"group.id": "bench-raw", "enable.auto.commit": False}))
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen, done = 0, set()
    while len(done) < len(partitions):
        for msg in consumer.consume(10_000, timeout=1.0):
            if msg.error():
                continue
            seen += 1
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
    took = time.perf_counter() - started
    consumer.close()
    return took, seen


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="tpbench-handover-"))
    try:
        results = bench_handover(settings, SchemaCatalog.load(settings.schemas_dir), rows, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Report(results, ["handover: two RDB workers with disks of their own; the survivor has no copy of the "
                            "killed one's partitions and rebuilds them from the log."])


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.handover", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
