"""RDB benchmarks: ingest per worker, publish -> visible latency, queries, restart, memory.

    python -m bench.rdb [--quick]      (or all benchmarks: python -m bench)

Each figure is printed beside a baseline measured in the same run where one
exists: ingest against a raw confluent-kafka consumer reading the same topic
(no decoding), restart against the worker's cold start with an empty shard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition

from bench.common import Report, Result, format_table, run_alone
from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, partition_counts, partition_for
from streams.client import RdbClient, RdbClientError
from streams.shard import Resources, Shard
from tickplant import internal
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
        self.client = RdbClient(f"http://127.0.0.1:{self.port}", timeout=60, settings=settings)
        self.rows_timed = 0

    def start(self, serving: bool = True) -> float:
        """Start; return seconds until it answers with its partitions assigned and shards open
        (``serving``: and caught up with the log; else as soon as it answers at all)."""
        start = time.perf_counter()
        self.child.start()
        while True:
            assert self.child.alive, f"worker died: see {self.child.log_path}"
            try:
                if self.client.status()["serving"] or not serving:
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

    def wait_applied(self, rows: int, timeout: float = 900) -> float:
        """``wait_rows`` by the worker's own count of rows applied, which it gives while catching
        up (a count query waits for it to serve: by then a fast catch-up is over)."""
        deadline = time.perf_counter() + timeout
        first_seen, first_rows = None, 0
        while time.perf_counter() < deadline:
            try:
                held = self.client.status(detail=False)["rows_applied"]
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
        worker.start(serving=False)  # a worker serves once caught up: the catch-up is what is timed
        elapsed = worker.wait_applied(rows)
        status = worker.client.status()
    finally:
        worker.stop()
    rate = worker.rows_timed / elapsed
    target = 1_000_000 if mode == "batch" else 10_000  # issue 14: >= 1M rows/s a worker in batch mode
    return result(f"RDB ingest per worker, {mode} mode", rate, "rows/s", raw, f">= {target:,} rows/s",
                  rate >= target, f"{rows:,} rows, {status['messages'] / max(1, status['batches']):.0f} messages "
                  "per read; baseline: raw confluent-kafka consumer, no decode")


def percentiles(values_ns: list[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "n": len(ordered)}


class AckClock:
    """Publish -> broker acknowledged, per row: the tickerplant's delivery callback, timed.

    Delivery reports of one partition come in produce order, so the n-th report
    of a partition is its n-th row. Reports are served by ``producer.poll``, which
    the tickerplant calls on every publish (here every ~0.5 ms): a report can
    wait that long.
    """

    def __init__(self, tp: Tickerplant, table: str):
        self.sent: dict[int, list[int]] = {}
        self.acked: dict[int, list[int]] = {}
        self.partitions = tp.partitions[table]
        inner = tp._row_callback.get(f"_inner_{table}") or tp._row_callback[table]
        tp._row_callback[f"_inner_{table}"] = inner

        def on_delivery(err: object, msg: object) -> None:
            self.acked.setdefault(msg.partition(), []).append(time.time_ns())  # type: ignore[attr-defined]
            inner(err, msg)

        tp._row_callback[table] = on_delivery

    def published(self, rows: list[dict]) -> None:
        for row in rows:
            self.sent.setdefault(partition_for(row["sym"], self.partitions), []).append(row["time"])

    def latencies(self) -> list[int]:
        return [a - t for p, acks in self.acked.items() for t, a in zip(self.sent.get(p, []), acks, strict=False)]


class QueryProbe(threading.Thread):
    """What a client polling ``last`` sees: publish -> a query returns the row.

    Adds the probe's own poll interval and query round trip to the true
    visibility (the worker's own stamp); both are reported beside it.
    """

    def __init__(self, client: RdbClient, syms: list[str], interval: float = 0.002):
        super().__init__(name="query-probe", daemon=True)
        self.client, self.syms, self.interval = client, syms, interval
        self.seen: list[int] = []
        self.round_trips: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last: dict[str, int] = {}
        while not self.stop.is_set():
            began = time.time_ns()
            try:
                table = self.client.last("quote", self.syms, columns=["time", "sym"])
            except RdbClientError:
                continue
            now = time.time_ns()
            self.round_trips.append(now - began)
            times = table.column("time").cast(pa.int64()).to_pylist()
            for sym, t in zip(table.column("sym").to_pylist(), times, strict=True):
                if last.get(sym) is not None and t != last[sym]:
                    self.seen.append(now - t)
                last[sym] = t
            self.stop.wait(self.interval)


WARM_UP_SECONDS = 2.0


def reset_stages(url: str, settings: Settings) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/rdb/v1/stages/reset", method="POST",
                                                  headers=internal.headers(settings)), timeout=10).read()


def bench_latency(base: Settings, catalog: SchemaCatalog, tmp: Path, seconds: float = 10, rate: int = 10_000,
                  probe: bool = True) -> list[Result]:
    """Publish -> visible at ``rate`` rows/s in zero-latency mode, and where the time goes.

    The headline figure is the worker's own stamp (rows are committed to the
    shard, so any query from then on sees them); the stages split it: producer
    -> broker ack (this process), publish -> the reader holds the row, the
    reader -> committed, and per read the decode / Arrow / RocksDB cost. A
    query probe shows what a polling client adds on top.
    """
    settings = base.replace(topic_prefix=f"lat{rate}.", data_dir=tmp / f"latency-{rate}")
    open_first_day(settings, catalog)
    worker = BenchWorker(settings, "lat")
    worker.start()
    market = SyntheticMarket(syms=50, seed=2)
    query = QueryProbe(RdbClient(worker.client.url, timeout=5, settings=settings), market.syms[:3])
    try:
        with Tickerplant(settings, catalog, mode="zero") as tp:
            warmed = 0
            for phase in ("warm-up", "measured"):
                # warm-up: connections, the producer id, the broker's JIT; then the samples restart
                acks = AckClock(tp, "quote")
                if phase == "measured":
                    tp.flush()
                    worker.wait_rows("quote", warmed, timeout=120)  # the warm-up's backlog applied
                    reset_stages(worker.client.url, settings)
                    before = worker.client.status()["sched_ns"]
                    if probe:
                        query.start()
                start = time.perf_counter()
                sent = 0
                while time.perf_counter() - start < (seconds if phase == "measured" else WARM_UP_SECONDS):
                    due = int((time.perf_counter() - start) * rate) - sent
                    if due > 0:
                        _, quotes = market.events(due)
                        tp.publish_rows("quote", quotes)
                        acks.published(quotes)
                        sent += due
                    time.sleep(0.0005)
                warmed = sent
            after = worker.client.status()["sched_ns"]
            tp.flush()
        time.sleep(1.0)
        query.stop.set()
        status = worker.client.status()
    finally:
        query.stop.set()
        worker.stop()
    latency = status["visible_latency_ms"]
    stages = status["stages_ms"]
    acked = percentiles(acks.latencies())
    target, ok = ("< 10 ms", latency["p99"] < 10) if rate >= 10_000 else ("-", None)
    name = f"zero-latency at {rate:,} rows/s"
    out = [result(f"publish -> visible in RDB, {name}, p99", latency["p99"], "ms", None, target, ok,
                  f"p50 {latency['p50']} ms, {latency['n']:,} rows over {seconds:g}s, one worker")]

    def stage(label: str, got: dict | None, note: str = "") -> None:
        if got:
            out.append(result(f"  stage {label}, p99", got["p99"], "ms", None, "-", None,
                              f"p50 {got['p50']} ms{'; ' + note if note else ''}"))

    stage("publish -> broker ack", acked, "delivery callback, served on each publish call")
    stage("publish -> reader holds row", stages["fetched"], "producer + broker + consumer fetch")
    stage("reader holds row -> committed", stages["applied"], "per row: queued in its read, applied")
    stage("read: decode", stages["read_decode"], f"per read of p50 {stages['read_messages']['p50']:.0f} / "
          f"p99 {stages['read_messages']['p99']:.0f} messages")
    stage("read: Arrow", stages["read_arrow"])
    stage("read: to the shard", stages["read_write"], "the tail (memory) for small runs, RocksDB for large")
    stage("tail -> RocksDB (flush)", stages["flush"], "every 200 ms or 4096 rows, merges included")
    stage("read: total", stages["read_total"])
    stage("housekeeping on the event loop", stages["stall"], "metadata refresh every 2 s (holds the GIL)")
    for who in ("reader", "process"):
        wall = after[who]["at"] - before[who]["at"]
        cpu = (after[who]["cpu"] - before[who]["cpu"]) / wall * 100
        wait = (after[who]["runqueue_wait"] - before[who]["runqueue_wait"]) / wall * 100
        out.append(result(f"  worker {who}: waiting for a CPU", wait, "% wall", None, "-", None,
                          f"on a CPU {cpu:.0f}% of wall; load average {status['loadavg'][0]:.1f} on "
                          f"{os.cpu_count()} CPUs"))
    if probe and query.seen:
        seen, trips = percentiles(query.seen), percentiles(query.round_trips)
        stage("as seen by a client polling last", seen,
              f"poll every {query.interval * 1e3:g} ms + query round trip p50 {trips['p50']} ms")
    return out


def bench_apply_cpu(catalog: SchemaCatalog, tmp: Path, rows_per_read: int = 20, reads: int = 2000) -> Result:
    """CPU per row of the worker's apply path for a live zero-latency stream (small reads):
    to Arrow once per read, each partition's run to its shard's tail, a flush per 200 ms
    of a 10k rows/s stream; against each run written straight to RocksDB (the path
    before the tail), in the same run. CPU time, not wall: it holds under contention."""
    schema = catalog["quote"]
    market = SyntheticMarket(syms=50, seed=3)
    batches = [market.events(rows_per_read)[1] for _ in range(reads)]
    flush_every = max(1, 2_000 // rows_per_read)
    cpu = {}
    for defer in (True, False):
        resources = Resources(cache_bytes=32 << 20, write_buffer_bytes=32 << 20)
        shards = [Shard(tmp / f"apply-{defer}" / f"p{p}", resources) for p in range(4)]
        offset = 0
        began = time.process_time()
        for i, batch in enumerate(batches):
            by_part: dict[int, list[dict]] = {}
            for row in batch:
                by_part.setdefault(partition_for(row["sym"], 4), []).append(row)
            ordered = [row for p in sorted(by_part) for row in by_part[p]]
            arrow, start = schema.to_arrow(ordered), 0
            for p in sorted(by_part):
                offset += 1
                shards[p].apply(offset, "2026-11-22", arrow.slice(start, len(by_part[p])), defer=defer)
                start += len(by_part[p])
            if defer and i % flush_every == flush_every - 1:
                for shard in shards:
                    shard.flush()
        cpu[defer] = (time.process_time() - began) / (reads * rows_per_read) * 1e6
        for shard in shards:
            shard.close()
    return result(f"RDB apply CPU per row, live zero-latency reads of {rows_per_read} rows", cpu[True], "us/row",
                  cpu[False], "-", None, "baseline: each run written to RocksDB at once (no tail); CPU time")


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
    steps = {
        "ingest-batch": lambda: [bench_ingest(settings, catalog, rows, "batch", tmp)],
        "ingest-zero": lambda: [bench_ingest(settings, catalog, zero_rows, "zero", tmp)],
        "apply-cpu": lambda: [bench_apply_cpu(catalog, tmp)],
        "latency": lambda: bench_latency(settings, catalog, tmp),
        "latency-2k": lambda: bench_latency(settings, catalog, tmp, rate=2_000, probe=False),
        "queries": lambda: [r for n in big for r in bench_queries_restart_memory(settings, catalog, n, tmp)],
    }
    only = [s.strip() for s in (getattr(args, "steps", None) or "").split(",") if s.strip()]
    unknown = [s for s in only if s not in steps]
    if unknown:
        raise SystemExit(f"bench rdb: unknown step(s) {', '.join(unknown)}; steps: {', '.join(steps)}")
    try:
        for name, step in steps.items():
            if only and name not in only:
                continue
            try:
                got = step()
            except Exception as exc:  # a failed figure is a row of the table, the others still count
                got = [result(f"RDB FAILED: {type(exc).__name__}", 0, "", None, "", False, str(exc)[:200])]
            report.results.extend(got)
            print(format_table(got), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.notes.append(
        "RDB: one worker process (Faust + RocksDB) per figure; ingest is timed from the first row counted "
        "to the last; the raw baseline reads the same messages with a bare confluent-kafka consumer."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.rdb", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
