"""CEP benchmarks: ticks/s per worker against a raw consumer, tick -> analytic latency.

    python -m bench.cep [--quick]      (or all benchmarks: python -m bench)

- Throughput: trades and quotes (batch mode) already in the log; one CEP
  worker reads them from scratch: every tick decoded, folded into the
  analytics and bars, state and outputs written to RocksDB, outputs
  committed to rte.bars / rte.analytics in Kafka transactions. Timed from
  the first tick applied to the last. Baseline: a bare confluent-kafka
  consumer reading the same messages of both topics (bytes only, no decode),
  in the same run.
- Output encoding: the engine's records (rte.analytics of a busy sym, closed bars)
  written by the log's one row writer (``ingest.framing.encode_row``, compiled per
  schema in ``ingest/rowcode.py``) against fastavro writing the same records with
  the schema parsed once, in the same run: the writer the engine's outputs
  would otherwise cost.
- Latency: ticks (quotes and trades) published in zero-latency mode at 10k/s,
  stamped with the wall clock, for a 2 s warm-up and then the measured
  seconds. Three figures from the same ticks: a WebSocket client of the
  gateway subscribed to ``analytics`` (the Query Manager reading the
  engine's live feed) takes now - the record's time (the sym's latest tick)
  for each update: tick -> analytic -> subscriber, the issue's target; beside
  it, as the baseline, the tick itself read by a bare consumer of the trade
  topic (what the Kafka hop alone costs on this machine); and a read_committed
  consumer of rte.analytics (the durable record, a transaction later). The
  worker's own figure (tick -> its outputs committed) is shown with where
  its time goes: the reader's wall and CPU time per read, the commit round
  trip, the worker process's CPU per tick (all threads; the one figure a
  busy machine does not blur) and the load average (latency on a shared
  2-CPU machine is mostly waiting for a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import Report, Result, format_table, run_alone
from bench.rdb import message_count, raw_consume_rate
from bench.subscribe import WARMUP_SECONDS, Gateway, measured, ms, percentile, run_probe
from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.logread import make_tail_consumer
from ingest.publisher import Tickerplant
from ingest.schema_topic import make_decoder
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from streams.cep.topics import CepTopics
from tickplant import internal
from tickplant.clock import ManualClock
from tickplant.config import Settings
from tickplant.kafka.broker import free_port


class BenchCep:
    """One ``cep run`` worker process."""

    def __init__(self, settings: Settings, node: str, log_dir: Path):
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{node}.log"
        self.argv = [sys.executable, "-m", "tickplant", "cep", "run", "--id", node, "--port", str(self.port)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        env = {**os.environ, **self.settings.child_env()}
        start = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        while True:
            assert self.proc.poll() is None, f"CEP worker died: see {self.log_path}"
            status = self.status()
            if status and status["serving"]:
                return time.perf_counter() - start
            time.sleep(0.05)

    def status(self) -> dict[str, Any] | None:
        try:
            request = urllib.request.Request(f"{self.url}/cep/v1/status", headers=internal.headers(self.settings))
            with urllib.request.urlopen(request, timeout=30) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def wait_rows(self, rows: int, timeout: float = 900) -> tuple[float, int]:
        """(seconds from the first row applied to the last, rows timed)."""
        deadline = time.perf_counter() + timeout
        first_seen, first_rows = None, 0
        while time.perf_counter() < deadline:
            status = self.status() or {"rows": 0}
            now = time.perf_counter()
            if status["rows"] and first_seen is None:
                first_seen, first_rows = now, status["rows"]
            if status["rows"] >= rows:
                return now - (first_seen or now), rows - first_rows
            time.sleep(0.02)
        raise TimeoutError(f"the CEP did not reach {rows} rows; see {self.log_path}")

    def cpu_seconds(self) -> float:
        """The worker process's CPU time so far (all its threads, user + system)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_throughput(base: Settings, catalog: SchemaCatalog, ticks: int, tmp: Path) -> Result:
    settings = base.replace(topic_prefix="cepthru.", data_dir=tmp / "throughput")
    open_first_day(settings, catalog)
    clock = ManualClock(time.time_ns())
    market = SyntheticMarket(syms=50, seed=1, trade_ratio=0.3, clock=clock)
    sent = {"trade": 0, "quote": 0}
    with Tickerplant(settings, catalog, mode="batch") as tp:
        while sum(sent.values()) < ticks:
            clock.advance(10.0)  # 20k events per 10 s of market time: one-minute bars close as it goes
            trades, quotes = market.events(20_000)
            tp.publish_rows("trade", trades)
            tp.publish_rows("quote", quotes)
            sent["trade"] += len(trades)
            sent["quote"] += len(quotes)
        tp.flush()
    names = TopicNames(settings.topic_prefix)
    raw_seconds = 0.0
    for table, rows in sent.items():  # the raw rate of each topic, combined as total rows / total time
        topic = names.table(table)
        raw_seconds += rows / raw_consume_rate(settings, topic, message_count(settings, topic), rows)
    total = sum(sent.values())
    raw = total / raw_seconds
    worker = BenchCep(settings, "cep-thru", tmp)
    try:
        worker.start()
        cpu_start = worker.cpu_seconds()
        elapsed, timed = worker.wait_rows(total)
        cpu = worker.cpu_seconds() - cpu_start
        status = worker.status() or {}
    finally:
        worker.stop()
    rate = timed / elapsed
    bars = sum(p["bars_closed"] for p in status.get("partition_state", {}).values())
    transactions = sum(p["transactions"] for p in status.get("partition_state", {}).values())
    return Result("CEP ticks processed per worker (trades + quotes, batch mode)", rate, raw, ">= 100,000 ticks/s",
                  rate >= 100_000, "ticks/s",
                  f"{total:,} ticks ({sent['trade']:,} trades), {transactions} transactions, "
                  f"{bars} bars; worker process CPU {1e6 * cpu / total:.1f} us a tick; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; baseline: raw confluent-kafka consumer, no decode")


def bench_output_encoding(records: int = 20_000) -> Result:
    import io

    import fastavro

    from ingest.framing import codec_for, encode_row
    from tickplant.config import REPO_ROOT

    rte = SchemaCatalog.load(REPO_ROOT / "schemas" / "rte")
    analytics, bars = rte["analytics"], rte["bars"]
    names = [f["name"] for f in analytics.avro["fields"]]
    record = {name: None for name in names} | {
        "time": time.time_ns(), "sym": "AAPL", "date": "2026-12-07", "last_price": 189.5, "last_size": 100,
        "last_time": time.time_ns(), "open": 188.0, "high": 190.25, "low": 187.5, "volume": 1_234_567,
        "trades": 8_812, "vwap": 189.01, "bid": 189.49, "ask": 189.51, "mid": 189.5, "spread": 0.02}
    record = {k: v for k, v in record.items() if k in names} | {n: None for n in names if n not in record}
    bar = {"time": time.time_ns(), "sym": "AAPL", "date": "2026-12-07", "end": time.time_ns() + 60 * 10**9,
           "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10, "trades": 2, "vwap": 1.25,
           "closed_by": "next"}
    work = [(analytics, record), (bars, bar)] * (records // 2)

    def ours() -> float:
        start = time.perf_counter()
        for table, r in work:
            encode_row(table, r)
        return time.perf_counter() - start

    def fastavros() -> float:
        start = time.perf_counter()
        for table, r in work:
            out = io.BytesIO()
            out.write(codec_for(table).row_header)
            fastavro.schemaless_writer(out, codec_for(table).parsed, r)
        return time.perf_counter() - start

    mine, theirs = min(ours() for _ in range(3)), min(fastavros() for _ in range(3))
    return Result("CEP output records encoded (rte.analytics and rte.bars, one each in turn)", len(work) / mine,
                  len(work) / theirs, "", None, "records/s",
                  f"{1e6 * mine / len(work):.2f} us a record, fastavro {1e6 * theirs / len(work):.2f}; best of 3; "
                  f"baseline: fastavro, schema parsed once; load average {os.getloadavg()[0]:.1f}")


def bench_latency(base: Settings, catalog: SchemaCatalog, tmp: Path, rate: int = 10_000,
                  seconds: float = 10.0) -> list[Result]:
    settings = base.replace(topic_prefix=f"ceplat{rate}.", data_dir=tmp / f"latency-{rate}")
    open_first_day(settings, catalog)  # today, on the system clock: ticks carry the wall clock
    worker = BenchCep(settings, "cep-lat", tmp)
    worker.start()
    topic = CepTopics(settings).outputs["analytics"]
    decoder = make_decoder(settings, SchemaCatalog.load(settings.schemas_dir / "rte"))
    committed: list[tuple[int, int]] = []  # (the record's tick stamp, latency) of the committed topic
    halt = threading.Event()

    def committed_reader() -> None:
        consumer = make_tail_consumer(settings, **{"auto.offset.reset": "latest"})
        consumer.subscribe([topic])
        try:
            while not halt.is_set():
                for msg in consumer.consume(1000, timeout=0.05):
                    if msg.error() is None:
                        now = time.time_ns()
                        (record,) = decoder.decode(msg.value())[1]
                        committed.append((record["time"], now - record["time"]))
        finally:
            consumer.close()

    measure: dict[str, float] = {}

    def publish() -> tuple[int, int]:
        """Ticks at ``rate`` for the warm-up and then ``seconds``; (ticks, the first measured stamp)."""
        market = SyntheticMarket(syms=50, seed=2, trade_ratio=0.3)
        measure["cpu"] = worker.cpu_seconds()
        with Tickerplant(settings, catalog, mode="zero") as tp:
            start = time.perf_counter()
            since = time.time_ns() + int(WARMUP_SECONDS * 1e9)
            sent = 0
            while time.perf_counter() - start < seconds + WARMUP_SECONDS:
                due = int((time.perf_counter() - start) * rate) - sent
                if due > 0:
                    trades, quotes = market.events(due)
                    tp.publish_rows("quote", quotes)
                    tp.publish_rows("trade", trades)
                    sent += due
                time.sleep(0.0005)
            tp.flush()
        measure["cpu"] = worker.cpu_seconds() - measure["cpu"]
        return sent, since

    reader = threading.Thread(target=committed_reader, daemon=True)
    reader.start()
    gateway = Gateway(settings)
    try:
        time.sleep(3.0)  # the committed reader has joined and sits at the end
        probe = run_probe(gateway, publish, 1, 0, seconds, raw=True, source="analytics")
        time.sleep(1.0)
        status = worker.status() or {}
        own = status.get("visible_latency_ms") or {}
        parts = status.get("partition_state", {}).values()
        commit_ms = max((p["commit_ms_avg"] for p in parts), default=0.0)
        transactions = sum(p["transactions"] for p in parts)
        load = os.getloadavg()[0]
    finally:
        halt.set()
        reader.join(10)
        gateway.stop()
        worker.stop()
    live, raw = probe["latencies"], probe["raw"]
    durable = measured([list(x) for x in committed], probe["since"])
    if not live or not durable:
        raise RuntimeError(f"no analytics read: {len(live)} by the subscriber, {len(durable)} committed")
    ticks = probe["sent"]
    p99, raw99 = percentile(live, 0.99), percentile(raw, 0.99)
    return [
        Result(f"tick -> analytic -> WebSocket subscriber at {rate:,} ticks/s, p99", ms(p99), ms(raw99), "< 20 ms",
               p99 < 20e6, "ms",
               f"p50 {ms(percentile(live, 0.5))} ms (raw p50 {ms(percentile(raw, 0.5))} ms), {len(live):,} updates "
               f"through the gateway from the engine's live feed, after a {WARMUP_SECONDS:.0f} s warm-up; baseline: "
               f"the tick itself read by a bare consumer of the trade topic; load average {load:.1f} on "
               f"{os.cpu_count()} CPUs"),
        Result(f"tick -> analytic committed on rte.analytics at {rate:,} ticks/s, p99", ms(percentile(durable, 0.99)),
               None, "-", None, "ms", f"p50 {ms(percentile(durable, 0.5))} ms, {len(durable):,} records read by a "
               "read_committed consumer: the durable record, a Kafka transaction later"),
        Result("tick -> CEP outputs committed (worker's own sample), p99", own.get("p99", 0.0), None, "-", None,
               "ms", f"p50 {own.get('p50')} ms; worker process CPU {1e6 * measure['cpu'] / max(1, ticks):.1f} us a "
               f"tick ({measure['cpu']:.1f} s for {ticks:,} ticks); per read: {status.get('apply_ms_avg')} ms applying "
               f"({status.get('apply_cpu_ms_avg')} ms CPU, {status.get('apply_cpu_us_per_message')} us CPU a message), "
               f"{commit_ms} ms per transaction commit; {status.get('reads')} reads, "
               f"{status.get('messages_read')} messages, {transactions} transactions"),
    ]


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    """The CEP figures on the shared bench broker (``python -m bench``)."""
    ticks = 200_000 if args.quick else 1_000_000
    tmp = Path(tempfile.mkdtemp(prefix="tpbench-cep-"))
    catalog = SchemaCatalog.load(settings.schemas_dir)
    report = Report()
    steps = [lambda: [bench_output_encoding()],
             lambda: [bench_throughput(settings, catalog, ticks, tmp)],
             lambda: bench_latency(settings, catalog, tmp)]
    try:
        for step in steps:
            try:
                report.results.extend(step())
            except Exception as exc:  # a failed figure is a row of the table, the others still count
                report.results.append(Result(f"CEP FAILED: {type(exc).__name__}", 0, None, "", False, "",
                                             str(exc)[:200]))
            print(format_table(report.results[-1:]), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.notes.append(
        "CEP: one worker process (Faust group + a bulk reader thread, RocksDB state, transactional outputs); "
        "throughput timed from the first tick applied to the last; the raw baseline reads the same messages "
        "of both topics with a bare confluent-kafka consumer."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.cep", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
