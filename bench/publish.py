"""Publish throughput of the tickerplant, against the raw confluent-kafka client.

Measured on the real embedded broker, in rows/s from the first publish to
``flush()`` returning (every row acknowledged):

- batch mode (``Tickerplant(mode="batch")``): rows gathered per partition into
  block messages, lz4, linger 5 ms; the baseline is a bare ``Producer`` with
  the same settings re-sending the very block payloads the tickerplant wrote
  (read back from its topic: same sizes, count and partitions);
- ``publish_frame`` in batch mode: the same rows as one pandas DataFrame in one call,
  against the same raw baseline (its log is the same blocks);
- zero-latency mode (``mode="zero"``): one message per row; the baseline
  re-sends the same single-row payloads, keys and partitions.

Rows are synthetic trades generated before timing and handed to
``publish_rows`` ``--chunk`` at a time, as a feed handler would. Then the
same rows go through each stage alone, without Kafka, to show where the time
goes. ``python -m bench.publish --help`` for the options.
"""

from __future__ import annotations

import argparse
import gc
import io
import sys
import time
from collections.abc import Callable
from typing import Any

import fastavro
from confluent_kafka import Producer

from bench.common import (
    Report,
    Result,
    add_arguments,
    embedded_broker,
    format_table,
    fresh,
    machine,
)
from ingest.feeds.synthetic import SyntheticMarket
from ingest.framing import ROW_MAGIC, codec_for, encode_row
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.publisher import ENCODE_BATCH, Tickerplant, producer_config
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, ensure_topics, partition_for
from tickplant.clock import ManualClock
from tickplant.config import Settings

TABLE = "trade"
BATCH_TARGET = 500_000
BATCH_RATIO_TARGET = 0.7
ZERO_TARGET = 100_000
SINGLE_CALL_ROWS = 50_000  # rows for the one-publish()-per-row figure (information only)
START_NS = 1_763_800_000_000_000_000


def warm_up(producer: Producer, settings: Settings) -> None:
    """Connect, fetch metadata and get the idempotent producer id before the clock starts:
    one empty message to the bench prefix's (unused) quote topic, acknowledged."""
    producer.produce(TopicNames(settings.topic_prefix).table("quote"), b"", partition=0)
    if producer.flush(30):
        raise RuntimeError("warm-up message not acknowledged")


def make_rows(count: int, syms: int = 50, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` synthetic trades (every event prints a trade), deterministic."""
    market = SyntheticMarket(syms=syms, seed=seed, clock=ManualClock(START_NS), trade_ratio=1.0)
    rows: list[dict[str, Any]] = []
    while len(rows) < count:
        trades, _ = market.events(min(100_000, count - len(rows)))
        rows.extend(trades)
    return rows[:count]


# -- the tickerplant ----------------------------------------------------------

def run_tickerplant(settings: Settings, catalog: SchemaCatalog, mode: str,
                    rows: list[dict[str, Any]], chunk: int) -> tuple[float, Settings]:
    """Seconds from the first publish to flush() done; and the settings it wrote under."""
    local = fresh(settings)
    with Tickerplant(local, catalog, mode=mode, source="bench") as tp:
        warm_up(tp.producer, local)
        start = time.perf_counter()
        if chunk == 1:
            for row in rows:
                tp.publish(TABLE, row)
        else:
            for i in range(0, len(rows), chunk):
                tp.publish_rows(TABLE, rows[i:i + chunk])
        tp.flush()
        seconds = time.perf_counter() - start
        if tp.stats.delivered[TABLE] != len(rows) or tp.stats.rejected:
            raise RuntimeError(f"{mode}: {tp.stats.delivered[TABLE]} of {len(rows)} rows acknowledged, "
                               f"{tp.stats.rejected} rejected")
    return seconds, local


def run_frame(settings: Settings, catalog: SchemaCatalog, frame: Any, stub: bool = False) -> float:
    """Seconds from ``publish_frame`` of the whole DataFrame to flush() done (``stub``: the
    producer stubbed out, the tickerplant's own work alone)."""
    local = fresh(settings)
    with Tickerplant(local, catalog, mode="batch", source="bench") as tp:
        warm_up(tp.producer, local)
        if stub:
            tp.producer = NullProducer()
        start = time.perf_counter()
        tp.publish_frame(TABLE, frame)
        tp.flush()
        seconds = time.perf_counter() - start
        if tp.stats.delivered[TABLE] != len(frame) or tp.stats.rejected:
            raise RuntimeError(f"publish_frame: {tp.stats.delivered[TABLE]} of {len(frame)} rows acknowledged, "
                               f"{tp.stats.rejected} rejected")
    return seconds


class NullProducer:
    """Stands in for the Producer to time the tickerplant's own work: accepts
    everything, and runs delivery callbacks on poll/flush as librdkafka would."""

    def __init__(self) -> None:
        self._acks: list[Callable[..., None]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1, on_delivery: Callable[..., None] | None = None, **_: Any) -> None:
        if on_delivery is not None:
            self._acks.append(on_delivery)

    def poll(self, timeout: float = 0.0) -> int:
        acks, self._acks = self._acks, []
        for ack in acks:
            ack(None, None)
        return len(acks)

    def flush(self, timeout: float = 0.0) -> int:
        self.poll()
        return 0

    def __len__(self) -> int:
        return 0


def run_without_kafka(settings: Settings, catalog: SchemaCatalog, mode: str,
                      rows: list[dict[str, Any]], chunk: int) -> float:
    """Seconds for the tickerplant's Python work alone (producer stubbed out)."""
    with Tickerplant(fresh(settings), catalog, mode=mode, source="bench") as tp:
        warm_up(tp.producer, tp.settings)
        tp.producer = NullProducer()
        start = time.perf_counter()
        for i in range(0, len(rows), chunk):
            tp.publish_rows(TABLE, rows[i:i + chunk])
        tp.flush()
        seconds = time.perf_counter() - start
        assert tp.stats.delivered[TABLE] == len(rows)
    return seconds


# -- the raw client -----------------------------------------------------------

def read_back(settings: Settings) -> list[tuple[int, bytes, bytes | None]]:
    """Every message the tickerplant wrote to the table topic: (partition, value, key),
    partitions interleaved one message at a time."""
    topic = TopicNames(settings.topic_prefix).table(TABLE)
    consumer = make_consumer(settings)
    per_part: dict[int, list[tuple[int, bytes, bytes | None]]] = {}
    try:
        ranges = {p: (0, watermarks(consumer, topic, p)[1]) for p in range(settings.partitions)}
        for msg in read_ranges(consumer, topic, ranges):
            per_part.setdefault(msg.partition(), []).append((msg.partition(), msg.value(), msg.key()))
    finally:
        consumer.close()
    queues = list(per_part.values())
    out = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def run_raw(settings: Settings, catalog: SchemaCatalog, mode: str,
            messages: list[tuple[int, bytes, bytes | None]], callback: bool = False) -> float:
    """Seconds for a bare Producer, the tickerplant's settings, to send ``messages`` and flush
    (with ``callback``, a delivery callback counting each message, as the tickerplant has)."""
    local = fresh(settings)
    ensure_topics(local, catalog)
    topic = TopicNames(local.topic_prefix).table(TABLE)
    producer = Producer(producer_config(local, mode))
    warm_up(producer, local)
    produce, poll = producer.produce, producer.poll
    acked = [0]

    def count(err: Any, _msg: Any) -> None:
        if err is None:
            acked[0] += 1

    extra = (count,) if callback else ()
    start = time.perf_counter()
    for n, (part, value, key) in enumerate(messages):
        while True:
            try:
                produce(topic, value, key, part, *extra)
                break
            except BufferError:
                poll(0.05)
        if not n % 10_000:
            poll(0)
    while len(producer):
        producer.flush(1.0)
    seconds = time.perf_counter() - start
    consumer = make_consumer(local)
    try:
        landed = sum(watermarks(consumer, topic, p)[1] for p in range(local.partitions))
    finally:
        consumer.close()
    if landed != len(messages) or (callback and acked[0] != len(messages)):
        raise RuntimeError(f"raw {mode}: {landed} of {len(messages)} messages landed")
    return seconds


# -- the stages alone ---------------------------------------------------------

def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stage_times(catalog: SchemaCatalog, rows: list[dict[str, Any]], zero_rows: list[dict[str, Any]],
                block_rows: int, partitions: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Seconds for each stage of the batch and zero-latency paths alone on the same rows (no Kafka)."""
    table = catalog[TABLE]
    codec = codec_for(table)
    plain_block = fastavro.parse_schema({"type": "array", "items": table.avro}, _write_hint=False)
    plain_row = table.parsed  # as ingest.schemas leaves it: re-parsed by every schemaless_writer call

    def fastavro_blocks() -> None:
        for i in range(0, len(rows), block_rows):
            out = io.BytesIO()
            fastavro.schemaless_writer(out, plain_block, rows[i:i + block_rows])

    def reading() -> None:
        for i in range(0, len(rows), ENCODE_BATCH):
            chunk = rows[i:i + ENCODE_BATCH]
            for name in table.columns:
                [r[name] for r in chunk]

    def columnwise() -> None:
        for i in range(0, len(rows), ENCODE_BATCH):
            codec.records(rows[i:i + ENCODE_BATCH])

    cache = {r["sym"]: partition_for(r["sym"], partitions) for r in rows}

    def partitioning() -> None:
        # as Tickerplant._sym_info: one dict lookup per row in a per-sym cache
        [cache[r["sym"]] for r in rows]

    batch = [
        (f"fastavro alone, blocks of {block_rows} (the encoder before)", timed(fastavro_blocks)),
        (f"column-wise encoder alone, {ENCODE_BATCH}-row batches", timed(columnwise)),
        ("  of which reading the values out of the row dicts", timed(reading)),
        ("partition lookup (per-sym cache)", timed(partitioning)),
    ]

    def fastavro_rows_reparsed() -> None:
        for r in zero_rows:
            out = io.BytesIO()
            out.write(ROW_MAGIC)
            fastavro.schemaless_writer(out, plain_row, r)

    def fastavro_rows() -> None:
        for r in zero_rows:
            out = io.BytesIO()
            out.write(codec.row_header)
            fastavro.schemaless_writer(out, codec.parsed, r)

    def compiled_rows() -> None:
        for r in zero_rows:
            encode_row(table, r)

    def columnwise_rows() -> None:
        for i in range(0, len(zero_rows), 1000):
            data, ends = codec.records(zero_rows[i:i + 1000], prefix=codec.row_header)
            buf, start = data.tobytes(), 0
            for end in ends.tolist():
                _ = buf[start:end]
                start = end

    zero = [
        ("fastavro per row, schema re-parsed each call (before)", timed(fastavro_rows_reparsed)),
        ("fastavro per row, schema parsed once (encode_row before)", timed(fastavro_rows)),
        ("compiled writer per row, ingest/rowcode.py (encode_row now)", timed(compiled_rows)),
        ("column-wise encoder, 1000-row calls, cut into rows", timed(columnwise_rows)),
    ]
    return batch, zero


def stage_lines(title: str, stages: list[tuple[str, float]], rows: int) -> list[str]:
    width = max(len(label) for label, _ in stages)
    return [title] + [
        f"  {label:<{width}}  {seconds / rows * 1e6:6.2f} us/row  {rows / seconds / 1e3:8,.0f}k rows/s"
        for label, seconds in stages
    ]


# -- the benchmark ------------------------------------------------------------

def collect(settings: Settings, args: argparse.Namespace) -> Report:
    quick = args.quick
    batch_count = args.rows or (200_000 if quick else 1_000_000)
    zero_count = max(1, int(batch_count * 0.3))
    repeat = args.repeat or (1 if quick else 2)
    chunk = max(1, args.chunk)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    report = Report()
    log = report.notes.append

    started = time.perf_counter()
    rows = make_rows(batch_count)
    zero_rows = rows[:zero_count]
    gc.collect()
    gc.freeze()  # the pre-generated rows are a bench artifact: keep the cyclic GC off them
    print(f"  {batch_count:,} trade rows generated in {time.perf_counter() - started:.1f}s", file=sys.stderr)

    # warm up the broker (JIT, page cache) and our code paths
    warm = rows[:min(len(rows), 50_000)]
    run_tickerplant(settings, catalog, "batch", warm, chunk)
    run_tickerplant(settings, catalog, "zero", warm[:20_000], chunk)

    figures: dict[str, float] = {}
    sent: dict[str, list[tuple[int, bytes, bytes | None]]] = {}
    for mode, sample in (("batch", rows), ("zero", zero_rows)):
        best_tp, best_raw, messages = float("inf"), float("inf"), None
        for _ in range(repeat):
            seconds, written = run_tickerplant(settings, catalog, mode, sample, chunk)
            best_tp = min(best_tp, seconds)
            if messages is None:
                messages = sent[mode] = read_back(written)
            best_raw = min(best_raw, run_raw(settings, catalog, mode, messages))
        figures[mode] = best_tp
        figures[f"{mode} raw"] = best_raw
        figures[f"{mode} messages"] = len(sent[mode])
        print(f"  {mode}: tickerplant {len(sample) / best_tp:,.0f} rows/s, raw {len(sample) / best_raw:,.0f} rows/s",
              file=sys.stderr)
    import pandas as pd

    frame = pd.DataFrame(rows)  # the same rows as columns, made before the clock starts
    run_frame(settings, catalog, frame.iloc[:50_000])  # warm-up
    figures["frame"] = min(run_frame(settings, catalog, frame) for _ in range(repeat))
    print(f"  publish_frame: {batch_count / figures['frame']:,.0f} rows/s", file=sys.stderr)
    single = zero_rows[:min(len(zero_rows), SINGLE_CALL_ROWS)]
    single_seconds = run_tickerplant(settings, catalog, "zero", single, 1)[0]

    batch_rate = batch_count / figures["batch"]
    batch_raw = batch_count / figures["batch raw"]
    zero_rate = zero_count / figures["zero"]
    zero_raw = zero_count / figures["zero raw"]
    report.results += [
        Result(f"publish, batch mode ({batch_count:,} rows)", batch_rate, batch_raw,
               f">= {BATCH_TARGET / 1e3:.0f}k and >= {BATCH_RATIO_TARGET:.1f}x raw",
               batch_rate >= BATCH_TARGET and batch_rate >= BATCH_RATIO_TARGET * batch_raw),
        Result(f"publish_frame, batch mode ({batch_count:,} rows from a DataFrame)", batch_count / figures["frame"],
               batch_raw, f">= {BATCH_RATIO_TARGET:.1f}x raw",
               batch_count / figures["frame"] >= BATCH_RATIO_TARGET * batch_raw,
               note="one call; baseline: the raw producer re-sending publish_rows' blocks"),
        Result(f"publish, zero-latency ({zero_count:,} rows)", zero_rate, zero_raw,
               f">= {ZERO_TARGET / 1e3:.0f}k", zero_rate >= ZERO_TARGET),
        Result(f"publish(), one row a call, zero-latency ({len(single):,})", len(single) / single_seconds,
               zero_raw),
    ]

    # where the time goes
    block_rows = settings.max_block_rows
    tp_only = {mode: min(run_without_kafka(settings, catalog, mode, sample, chunk) for _ in range(repeat))
               for mode, sample in (("batch", rows), ("zero", zero_rows))}
    frame_only = min(run_frame(settings, catalog, frame, stub=True) for _ in range(repeat))
    raw_with_acks = min(run_raw(settings, catalog, "zero", sent["zero"], callback=True) for _ in range(repeat))
    batch_stages, zero_stages = stage_times(catalog, rows, zero_rows, block_rows, settings.partitions)
    log(f"publish: {machine()}; {settings.partitions} partitions, 50 syms, {chunk} rows per publish_rows call, "
        f"max_block_rows {block_rows}, best of {repeat}")
    report.notes += stage_lines(
        f"batch mode, {batch_count:,} rows in {figures['batch messages']:,} block messages "
        f"(~{batch_count / max(1, figures['batch messages']):,.0f} rows each):",
        [*batch_stages,
         ("tickerplant's own work (producer stubbed out)", tp_only["batch"]),
         ("raw producer, the same blocks (the baseline)", figures["batch raw"]),
         ("tickerplant end to end", figures["batch"]),
         ("publish_frame of a DataFrame, own work (producer stubbed out)", frame_only),
         ("publish_frame of a DataFrame, end to end", figures["frame"])],
        batch_count)
    report.notes += stage_lines(
        f"zero-latency mode, {zero_count:,} rows, one message each:",
        [*zero_stages,
         ("tickerplant's own work (producer stubbed out)", tp_only["zero"]),
         ("raw producer, the same messages (the baseline)", figures["zero raw"]),
         ("raw producer + a delivery callback per message", raw_with_acks),
         ("tickerplant end to end", figures["zero"])],
        zero_count)
    log("(librdkafka's threads and the broker share the CPUs with the caller: stages overlap, not add up)")
    gc.unfreeze()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with embedded_broker() as settings:
        report = collect(settings, args)
    print(format_table(report.results))
    print()
    print("\n".join(report.notes))
    if args.check and any(r.passed is False for r in report.results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
