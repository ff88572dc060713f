"""What the benchmarks share: a throwaway broker, the options, the result table."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickplant.config import Settings
from tickplant.kafka.broker import EmbeddedKafka, free_port_pair


@dataclass
class Result:
    """One line of the table: a figure against its baseline measured in the same run."""

    metric: str
    value: float
    baseline: float | None = None
    target: str = ""
    passed: bool | None = None  # None: no target, for information
    unit: str = "rows/s"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=None,
                        help="rows for batch mode (default 1,000,000; zero-latency uses 30%% of it)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (200k rows, one repeat)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure; the best is kept (default 2)")
    parser.add_argument("--chunk", type=int, default=1000, help="rows per publish_rows call (default 1000)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a figure is short of its target")
    parser.add_argument("--steps", default=None,
                        help="comma-separated steps of a benchmark that has several (rdb: ingest-batch, "
                             "ingest-zero, apply-cpu, latency, latency-2k, queries)")


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# a fresh JVM compiles the broker's hot paths for its first ~30 s of traffic (C2 compiler threads
# took ~40% of a core here, doubling the raw hop's p99): the figures are of a broker in its
# steady state, as a plant's is after its first minute of the day
BROKER_WARMUP_SECONDS = 25.0
WARMUP_RATE = 10_000


def warm_up(settings: Settings, seconds: float = BROKER_WARMUP_SECONDS) -> None:
    """Put the broker through what the benchmarks do (zero-latency keyed messages, a tailing
    read_committed consumer, transactions) until its JIT has done the bulk of its work."""
    from confluent_kafka import Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from ingest.logread import make_tail_consumer
    from ingest.publisher import producer_config

    topic = f"_bench.warmup.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, settings.partitions, 1)])[topic].result()
    producer = Producer(producer_config(settings, "zero"))
    transactional = Producer(settings.kafka_config(**{"transactional.id": topic, "linger.ms": 0}))
    transactional.init_transactions(30)
    consumer = make_tail_consumer(settings)
    consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
    start = time.monotonic()
    sent = read = 0
    next_txn = start
    print(f"warming the broker up: {seconds:.0f} s of {WARMUP_RATE:,} messages/s", file=sys.stderr, flush=True)
    while (now := time.monotonic()) - start < seconds:
        for _ in range(int((now - start) * WARMUP_RATE) - sent):
            producer.produce(topic, b"%d" % time.time_ns(), key=b"%d" % (sent % 50))
            sent += 1
        producer.poll(0)
        if now >= next_txn:
            transactional.begin_transaction()
            for p in range(settings.partitions):
                transactional.produce(topic, b"txn", partition=p)
            transactional.commit_transaction(10)
            next_txn = now + 0.05
        read += len(consumer.consume(5000, timeout=0.001))
    producer.flush(30)
    consumer.close()
    admin.delete_topics([topic])[topic].result()
    print(f"  {sent:,} sent, {read:,} read", file=sys.stderr, flush=True)


@contextmanager
def embedded_broker(warm: float = BROKER_WARMUP_SECONDS) -> Iterator[Settings]:
    """A fresh single-node broker in a temp directory on free ports, warmed up (``warm_up``);
    always stopped and removed."""
    data_dir = Path(tempfile.mkdtemp(prefix="tickplant-bench-"))
    settings = Settings(data_dir=data_dir, kafka_port=free_port_pair())
    kafka = EmbeddedKafka(settings)
    previous = signal.signal(signal.SIGTERM, _raise_exit)  # so `finally` runs on kill too
    try:
        kafka.start()
        if warm > 0:
            warm_up(settings, warm)
        yield settings
    finally:
        try:
            kafka.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(data_dir, ignore_errors=True)


def fresh(settings: Settings) -> Settings:
    """The same broker under a topic prefix of its own."""
    return settings.replace(topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")


def machine() -> str:
    import confluent_kafka

    return (f"{os.cpu_count()} CPUs (shared with the broker), Python {platform.python_version()}, "
            f"librdkafka {confluent_kafka.libversion()[0]}")


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(results: list[Result]) -> str:
    header = ["benchmark", "value", "unit", "baseline", "ratio", "target", "result"]
    notes = any(r.note for r in results)
    if notes:
        header.append("note")
    lines = []
    for r in results:
        line = [
            r.metric, _figure(r.value), r.unit, _figure(r.baseline),
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            r.target or "-", {True: "pass", False: "SHORT", None: "-"}[r.passed],
        ]
        lines.append([*line, r.note] if notes else line)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    right = {1, 3, 4}

    def fmt(row: list[str]) -> str:
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def run_alone(collect: Any, prog: str, doc: str, argv: list[str] | None = None,
              args: argparse.Namespace | None = None) -> int:
    """``python -m bench.<name>``: one benchmark's ``collect`` on its own throwaway broker."""
    if args is None:
        parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args(argv)
    with embedded_broker() as settings:
        report = collect(settings, args)
    print(format_table(report.results))
    print("\n".join(report.notes))
    return 0
