"""Streaming subscriptions (the Query Manager): publish -> WebSocket subscriber latency, and
how many concurrent subscribers one gateway holds.

    python -m bench.subscribe [--quick]      (or all benchmarks: python -m bench)

Three processes besides the broker, as in production: the gateway's streaming
routes (``--serve``, uvicorn), a probe (``--probe``) holding the WebSocket
clients and, for the baseline, a bare confluent-kafka consumer of the same
topic, and this process publishing zero-latency trades stamped with
``time.time_ns()``. A row's latency is its arrival at a client (or at the raw
consumer, after decoding it) minus that stamp: the subscriber's figure and the
raw one come from the same rows in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.common import Report, Result, add_arguments, format_table, fresh, run_alone
from ingest.publisher import Tickerplant
from ingest.schemas import SchemaCatalog
from ingest.topics import ensure_topics
from tickplant.config import Settings, load_settings
from tickplant.kafka.broker import free_port

SYMS = [f"S{i:03d}" for i in range(50)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the gateway (--serve) ---------------------------------------------------------

def serve(port: int) -> None:
    import uvicorn

    from gateway.streaming import standalone_app
    from gateway.subscriptions import Hub

    settings = load_settings()
    uvicorn.run(standalone_app(Hub(settings, max_queued=200_000)), host="127.0.0.1", port=port,
                log_level="warning", ws_ping_interval=None)


# -- the probe (--probe): WebSocket clients and the raw consumer --------------------

def raw_consumer(settings: Settings, stop: threading.Event, samples: list[tuple[int, int]],
                 ready: threading.Event) -> None:
    """The baseline: a bare confluent-kafka consumer of every partition from the end, decoding each row."""
    from confluent_kafka import TopicPartition

    from ingest.logread import make_tail_consumer, watermarks
    from ingest.schema_topic import make_decoder
    from ingest.topics import TopicNames, partition_counts

    catalog = SchemaCatalog.load(settings.schemas_dir)
    decoder = make_decoder(settings, catalog)
    topic = TopicNames(settings.topic_prefix).table("trade")
    consumer = make_tail_consumer(settings)
    parts = range(partition_counts(settings, [topic])[topic])
    consumer.assign([TopicPartition(topic, p, watermarks(consumer, topic, p)[1]) for p in parts])
    ready.set()
    try:
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            now = time.time_ns()
            samples.extend((r["time"], now - r["time"]) for r in decoder.decode(msg.value())[1])
    finally:
        consumer.close()


async def clients(url: str, source: str, groups: list[list[str]], count: int, seconds: float,
                  samples: list[tuple[int, int]], rows: list[int]) -> None:
    from websockets.asyncio.client import connect

    started = asyncio.Event()
    subscribed = 0

    async def one(i: int) -> None:
        nonlocal subscribed
        async with connect(url, max_size=None, open_timeout=60, ping_interval=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "source": source, "syms": groups[i % len(groups)]}))
            message = json.loads(await ws.recv())
            if message.get("type") != "snapshot":
                raise RuntimeError(f"client {i}: {message}")
            subscribed += 1
            if subscribed == count:
                started.set()
            await started.wait()
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    text = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    break
                now = time.time_ns()
                message = json.loads(text)
                if message.get("type") != "update":
                    raise RuntimeError(f"client {i}: {message}")
                got = message["rows"]
                rows[i] += len(got)
                samples.extend((r["time"], now - r["time"]) for r in got)

    async def announce() -> None:
        await started.wait()
        print("READY", flush=True)

    announcer = asyncio.create_task(announce())
    # connect in waves, so the server is not asked for hundreds of handshakes at once
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(one(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    announcer.cancel()


def probe(url: str, source: str, count: int, group_size: int, seconds: float, raw: bool) -> None:
    settings = load_settings()
    groups = [SYMS[i:i + group_size] for i in range(0, len(SYMS), group_size)] if group_size else [[]]
    stop, ready = threading.Event(), threading.Event()
    raw_lat: list[tuple[int, int]] = []
    thread = None
    if raw:
        thread = threading.Thread(target=raw_consumer, args=(settings, stop, raw_lat, ready), daemon=True)
        thread.start()
        ready.wait(60)
    latencies: list[tuple[int, int]] = []
    rows = [0] * count
    asyncio.run(clients(url, source, groups, count, seconds, latencies, rows))
    stop.set()
    if thread:
        thread.join(10)
    print(json.dumps({"latencies": latencies, "raw": raw_lat, "rows": rows}), flush=True)


# -- the benchmark ------------------------------------------------------------------

WARMUP_SECONDS = 2.0


def publish_paced(settings: Settings, catalog: SchemaCatalog, rate: int, seconds: float) -> tuple[int, int]:
    """Zero-latency trades at ``rate`` rows/s for ``WARMUP_SECONDS`` + ``seconds``, each stamped
    when made; the rows sent and the stamp from which they count (after the warm-up)."""
    sent = 0
    tick = 0.005
    per_tick = max(1, int(rate * tick))
    with Tickerplant(settings, catalog, mode="zero") as tp:
        start = time.monotonic()
        measured_from = time.time_ns() + int(WARMUP_SECONDS * 1e9)
        while (elapsed := time.monotonic() - start) < seconds + WARMUP_SECONDS:
            due = int(elapsed * rate) + per_tick
            n = due - sent
            if n > 0:
                now = time.time_ns()
                tp.publish_rows("trade", [
                    {"time": now, "sym": SYMS[(sent + i) % len(SYMS)], "price": 100.0, "size": 1,
                     "exchange": "N", "cond": ""} for i in range(n)])
                tp.producer.poll(0)
                sent += n
            time.sleep(tick)
        tp.flush()
    return sent, measured_from


def measured(samples: list[list[int]], since: int) -> list[int]:
    """The latencies of the rows stamped from ``since`` on: the first second or so of a run is the
    broker's and the producer's warm-up (a backlog of ~0.5 s clearing, in the raw figure too)."""
    return [latency for stamp, latency in samples if stamp >= since]


class Gateway:
    def __init__(self, settings: Settings):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v1/ws"
        self.env = {**os.environ, **settings.child_env()}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.subscribe", "--serve", str(self.port)],
                                     env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_probe(gateway: Gateway, publish: Callable[[], tuple[int, int]], count: int, group_size: int,
              seconds: float, raw: bool, source: str = "trade") -> dict[str, Any]:
    """Start the probe, ``publish`` once every client has its snapshot, return what it measured
    (latencies of the rows stamped after the warm-up)."""
    cmd = [sys.executable, "-m", "bench.subscribe", "--probe", gateway.url, "--source", source,
           "--clients", str(count), "--group-size", str(group_size),
           "--seconds", str(seconds + WARMUP_SECONDS + 2)] + (["--raw"] if raw else [])
    proc = subprocess.Popen(cmd, env=gateway.env, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"the probe did not get its {count} subscriptions: {line!r}")
    sent, since = publish()
    out, _ = proc.communicate(timeout=120)
    result = json.loads(out)
    result["sent"], result["since"] = sent, since
    result["latencies"] = measured(result["latencies"], since)
    result["raw"] = measured(result["raw"], since)
    return result


def ms(ns: float) -> float:
    return round(ns / 1e6, 2)


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    """The Query Manager figures on the shared bench broker (``python -m bench``)."""
    settings = fresh(settings)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    ensure_topics(settings, catalog)
    seconds = 5 if args.quick else 10
    subscribers = 500
    report = Report()
    gateway = Gateway(settings)
    try:
        # 1. latency at 10k rows/s: one client subscribed to every sym, beside the raw consumer
        lat = run_probe(gateway, lambda: publish_paced(settings, catalog, 10_000, seconds), 1, 0, seconds, raw=True)
        sub, raw = lat["latencies"], lat["raw"]
        p99, raw99 = percentile(sub, 0.99), percentile(raw, 0.99)
        got = sum(lat["rows"])
        report.results.append(Result(
            "publish -> WebSocket subscriber at 10k rows/s, p99", ms(p99), ms(raw99), "< 20 ms", p99 < 20e6, "ms",
            f"p50 {ms(statistics.median(sub))} ms (raw p50 {ms(statistics.median(raw))} ms); "
            f"{got:,}/{lat['sent']:,} rows received; after a {WARMUP_SECONDS:.0f} s warm-up; "
            "baseline: bare confluent-kafka consumer + decode",
        ))
        print(format_table(report.results[-1:]), file=sys.stderr)
        # 2. concurrent subscribers: 500 clients in 10 sym sets of 5 (10 upstreams, 50 clients each)
        held = run_probe(gateway, lambda: publish_paced(settings, catalog, 1_000, seconds), subscribers, 5,
                         seconds, raw=False)
        receiving = sum(1 for n in held["rows"] if n > 0)
        expected_each = held["sent"] * 5 // len(SYMS)  # warm-up rows included: every row is counted
        complete = sum(1 for n in held["rows"] if n >= expected_each)
        report.results.append(Result(
            "concurrent WebSocket subscribers, every one receiving", receiving, None, ">= 500",
            receiving >= subscribers, "clients",
            f"{complete} got all {expected_each:,} rows of their 5 syms at 1k rows/s published; "
            f"p99 {ms(percentile(held['latencies'], 0.99))} ms, "
            f"p50 {ms(statistics.median(held['latencies']) if held['latencies'] else float('nan'))} ms",
        ))
        print(format_table(report.results[-1:]), file=sys.stderr)
    finally:
        gateway.stop()
    report.notes.append(
        "Subscriptions: gateway (uvicorn, the hub), WebSocket clients and the publisher are separate "
        "processes on the same cores as the broker; latency = arrival at the client - the row's stamp at publish "
        "(zero-latency mode); the raw baseline is a confluent-kafka consumer of the same rows in the probe process."
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.subscribe", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--source", default="trade", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--group-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.probe:
        probe(args.probe, args.source, args.clients, args.group_size, args.seconds, args.raw)
        return 0
    return run_alone(collect, "python -m bench.subscribe", __doc__, args=args)


if __name__ == "__main__":
    sys.exit(main())
