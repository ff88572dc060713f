"""RDB benchmarks: ingest per worker, publish -> visible latency, queries, restart, memory.

    python -m bench.rdb [--quick]      (or all benchmarks: python -m bench)

Each figure is printed beside a baseline measured in the same run where one
exists: ingest against a raw confluent-kafka consumer reading the same topic
(no decoding), restart against the worker's cold start with an empty shard.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench.common import Report, Result, add_arguments, embedded_broker, format_table
from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts
from streams.client import RdbClient, RdbClientError
from tickplant.config import Settings
from tickplant.kafka.broker import free_port
from tickplant.supervisor import Child


def result(metric: str, value: float, unit: str, baseline: float | None, target: str, ok: bool | None,
           note: str = "") -> Result:
    return Result(metric, value, baseline, target, ok, unit, note)


def raw_consume_rate(settings: Settings, topic: str, expected_messages: int, rows: int) -> float:
    """Rows/s a bare confluent-kafka consumer moves the same messages (bytes only)."""
    consumer = Consumer(settings.kafka_config(**{"group.id": f"raw-{time.time_ns()}", "enable.auto.commit": False,
                                                  "fetch.wait.max.ms": 20}))
    parts = partition_counts(settings, [topic])[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in range(parts)])
    first = consumer.consume(1, timeout=30)  # connected and fetching: start the clock
    seen = len(first)
    start = time.perf_counter()
    while seen < expected_messages:
        seen += len(consumer.consume(10000, timeout=0.05))
    elapsed = time.perf_counter() - start
    consumer.close()
    return rows * (expected_messages - 1) / expected_messages / elapsed


def message_count(settings: Settings, topic: str) -> int:
    consumer = Consumer(settings.kafka_config(**{"group.id": "count"}))
    parts = partition_counts(settings, [topic])[topic]
    total = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(parts))
    consumer.close()
    return total


class BenchWorker:
    def __init__(self, settings: Settings, node: str):
        self.port = free_port()
        self.child = Child(node, ["rdb", "worker", "--id", node, "--port", str(self.port)], settings)
        self.client = RdbClient(f"http://127.0.0.1:{self.port}", timeout=60)
        self.rows_timed = 0

    def start(self) -> float:
        """Start; return seconds until it answers with its partitions assigned and shards open."""
        start = time.perf_counter()
        self.child.start()
        while True:
            assert self.child.alive, f"worker died: see {self.child.log_path}"
            try:
                if self.client.status()["serving"]:
                    return time.perf_counter() - start
            except RdbClientError:
                pass
            time.sleep(0.05)

    def wait_rows(self, table: str, rows: int, timeout: float = 900) -> float:
        """Seconds from the first row counted to the last (the catch-up, not the start-up)."""
        deadline = time.perf_counter() + timeout
        first_seen, first_rows = None, 0
        while time.perf_counter() < deadline:
            try:
                held = sum(self.client.count(table).values())
            except RdbClientError:
                held = 0
            now = time.perf_counter()
            if held and first_seen is None:
                first_seen, first_rows = now, held
            if held >= rows:
                self.rows_timed = rows - first_rows
                return now - first_seen if first_seen and now > first_seen else float("nan")
            time.sleep(0.02)
        raise TimeoutError(f"worker did not reach {rows} rows")

    def stop(self) -> None:
        self.child.stop()

    def kill9(self) -> None:
        if self.child.proc:
            self.child.proc.kill()
            self.child.proc.wait()


def publish(settings: Settings, catalog: SchemaCatalog, table: str, rows: int, mode: str, syms: int = 50) -> None:
    market = SyntheticMarket(syms=syms, seed=1, trade_ratio=1.0)
    with Tickerplant(settings, catalog, mode=mode) as tp:
        done = 0
        while done < rows:
            trades, quotes = market.events(min(50_000, rows - done))
            tp.publish_rows(table, trades if table == "trade" else quotes)
            done += len(trades)
        tp.flush()


def bench_ingest(base: Settings, catalog: SchemaCatalog, rows: int, mode: str, tmp: Path) -> Result:
    settings = base.replace(topic_prefix=f"ing{mode}.", data_dir=tmp / f"ingest-{mode}")
    open_first_day(settings, catalog)
    publish(settings, catalog, "trade", rows, mode)
    topic = TopicNames(settings.topic_prefix).table("trade")
    raw = raw_consume_rate(settings, topic, message_count(settings, topic), rows)
    worker = BenchWorker(settings, "bench")
    try:
        worker.start()
        elapsed = worker.wait_rows("trade", rows)
        status = worker.client.status()
    finally:
        worker.stop()
    rate = worker.rows_timed / elapsed
    target = 250_000 if mode == "batch" else 10_000
    return result(f"RDB ingest per worker, {mode} mode", rate, "rows/s", raw, f">= {target:,} rows/s",
                  rate >= target, f"{rows:,} rows, {status['messages'] / max(1, status['batches']):.0f} messages "
                  "per read; baseline: raw confluent-kafka consumer, no decode")


def bench_latency(base: Settings, catalog: SchemaCatalog, tmp: Path, seconds: float = 10, rate: int = 10_000) -> Result:
    settings = base.replace(topic_prefix=f"lat{rate}.", data_dir=tmp / f"latency-{rate}")
    open_first_day(settings, catalog)
    worker = BenchWorker(settings, "lat")
    worker.start()
    market = SyntheticMarket(syms=50, seed=2)
    stop = threading.Event()
    try:
        with Tickerplant(settings, catalog, mode="zero") as tp:
            start = time.perf_counter()
            sent = 0
            while time.perf_counter() - start < seconds:
                due = int((time.perf_counter() - start) * rate) - sent
                if due > 0:
                    _, quotes = market.events(due)
                    tp.publish_rows("quote", quotes)
                    sent += due
                time.sleep(0.0005)
            tp.flush()
        time.sleep(1.0)
        latency = worker.client.status()["visible_latency_ms"]
    finally:
        stop.set()
        worker.stop()
    target, ok = ("< 10 ms", latency["p99"] < 10) if rate >= 10_000 else ("-", None)
    return result(f"publish -> visible in RDB, zero-latency at {rate:,} rows/s, p99", latency["p99"], "ms",
                  None, target, ok, f"p50 {latency['p50']} ms over {seconds:g}s, one worker")


def bench_queries_restart_memory(base: Settings, catalog: SchemaCatalog, rows: int, tmp: Path) -> list[Result]:
    settings = base.replace(topic_prefix=f"big{rows}.", data_dir=tmp / f"big-{rows}")
    open_first_day(settings, catalog)
    # one sym with 100k rows for the one-sym query, the rest spread over 100 syms
    one_sym = [{"time": 1_795_300_000_000_000_000 + i * 1000, "sym": "ONE", "price": 100.0 + i % 7, "size": 100,
                "exchange": "N", "cond": ""} for i in range(100_000)]
    with Tickerplant(settings, catalog, mode="batch") as tp:
        for i in range(0, len(one_sym), 20_000):
            tp.publish_rows("trade", one_sym[i:i + 20_000])
    publish(settings, catalog, "trade", rows - len(one_sym), "batch", syms=100)
    worker = BenchWorker(settings, "big")
    out = []
    try:
        cold = worker.start()
        worker.wait_rows("trade", rows)
        timings = []
        for _ in range(20):
            start = time.perf_counter()
            table = worker.client.rows("trade", ["ONE"])
            timings.append(time.perf_counter() - start)
        assert table.num_rows == 100_000, table.num_rows
        one = statistics.median(timings) * 1000
        out.append(result("RDB query: one sym's day (100k rows, Arrow)", one, "ms", None, "< 20 ms", one < 20,
                          f"median of 20, day of {rows:,} rows"))
        timings = []
        for _ in range(20):
            start = time.perf_counter()
            last = worker.client.last("trade")
            timings.append(time.perf_counter() - start)
        lastms = statistics.median(timings) * 1000
        out.append(result(f"RDB query: last row of every sym ({last.num_rows} syms)", lastms, "ms", None,
                          "-", None, "median of 20"))
        rss = worker.client.status()["rss"] / 2**20
        out.append(result(f"RDB worker RSS with {rows:,} rows in the day", rss, "MiB", None, "< 1024 MiB",
                          rss < 1024))
        worker.kill9()
        restart = worker.start()
        held = sum(worker.client.count("trade").values())
        assert held == rows, f"after restart the worker serves {held} of {rows} rows"
        out.append(result(f"RDB restart to serving, {rows:,} rows in the day", restart, "s", cold,
                          "< 5 s", restart < 5, "baseline: the same worker's cold start, empty shards"))
    finally:
        worker.stop()
    return out


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    """The RDB figures on the shared bench broker (``python -m bench``)."""
    quick = args.quick
    rows = 200_000 if quick else 1_000_000
    zero_rows = 20_000 if quick else 60_000
    big = [300_000] if quick else [1_000_000, 10_000_000]
    tmp = Path(tempfile.mkdtemp(prefix="tpbench-rdb-"))
    catalog = SchemaCatalog.load(settings.schemas_dir)
    report = Report()
    steps = [
        lambda: [bench_ingest(settings, catalog, rows, "batch", tmp)],
        lambda: [bench_ingest(settings, catalog, zero_rows, "zero", tmp)],
        lambda: [bench_latency(settings, catalog, tmp)],
        lambda: [bench_latency(settings, catalog, tmp, rate=2_000)],
        *[lambda n=n: bench_queries_restart_memory(settings, catalog, n, tmp) for n in big],
    ]
    try:
        for step in steps:
            try:
                report.results.extend(step())
            except Exception as exc:  # a failed figure is a row of the table, the others still count
                report.results.append(result(f"RDB FAILED: {type(exc).__name__}", 0, "", None, "", False,
                                             str(exc)[:200]))
            print(format_table(report.results[-1:]), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.notes.append(
        "RDB: one worker process (Faust + RocksDB) per figure; ingest is timed from the first row counted "
        "to the last; the raw baseline reads the same messages with a bare confluent-kafka consumer."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rdb", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with embedded_broker() as settings:
        report = collect(settings, args)
    print(format_table(report.results))
    print("\n".join(report.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
