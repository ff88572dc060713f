"""The tickerplant log on a real broker: both publish modes, order, partitioning, both clients."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from confluent_kafka import Producer

from ingest.decoder import Decoder
from ingest.feeds.synthetic import SyntheticMarket
from ingest.framing import BLOCK_MAGIC, ROW_MAGIC
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.publisher import Tickerplant
from ingest.replay import day_ranges, replay_messages, replay_rows
from ingest.topics import TopicNames, ensure_topics, partition_for
from tickplant.clock import ManualClock


def _by_sym(rows):
    out = defaultdict(list)
    for row in rows:
        out[row["sym"]].append(row)
    return out


@pytest.mark.parametrize("mode", ["batch", "zero"])
def test_round_trip_exact_and_in_order_per_sym(settings, catalog, mode):
    market = SyntheticMarket(syms=20, seed=7, clock=ManualClock(1_763_800_000_000_000_000))
    trades, quotes = market.events(3000)
    with Tickerplant(settings, catalog, mode=mode) as tp:
        for start in range(0, len(quotes), 250):  # several publish calls, as a feed would
            tp.publish_rows("quote", quotes[start:start + 250])
        tp.publish_rows("trade", trades)
        tp.flush()
        assert tp.stats.delivered == {"quote": len(quotes), "trade": len(trades)}
        assert tp.stats.rejected == 0

    for table, sent in (("trade", trades), ("quote", quotes)):
        got = list(replay_rows(settings, table, catalog=catalog))
        assert len(got) == len(sent)
        # exact equality per sym, in publish order (per-sym order is what Kafka keeps)
        assert _by_sym(got) == _by_sym(sent)

    # the framing matches the mode: one row per message, or blocks
    messages = list(replay_messages(settings, "trade", day_ranges(settings, "trade"), catalog))
    if mode == "zero":
        assert all(len(rows) == 1 for _, rows in messages)
        assert len(messages) == len(trades)
    else:
        assert len(messages) < len(trades) / 10


def test_every_row_lands_in_its_syms_partition(settings, catalog):
    market = SyntheticMarket(syms=30, seed=3)
    _, quotes = market.events(600)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("quote", quotes)
        parts = tp.partitions["quote"]
    for position, rows in replay_messages(settings, "quote", day_ranges(settings, "quote"), catalog):
        assert {partition_for(r["sym"], parts) for r in rows} == {position.partition}


def test_partitioner_matches_kafkas_murmur2(settings, catalog):
    """A Java client (or librdkafka's murmur2 partitioner) keyed by sym picks the same partition."""
    counts = ensure_topics(settings, catalog)
    topic = TopicNames(settings.topic_prefix).table("trade")
    producer = Producer(settings.kafka_config(partitioner="murmur2"))
    landed = {}
    syms = [f"SYM{i}" for i in range(40)] + ["AAPL", "MSFT", "BRK.A", "X"]

    def record(err, msg):
        assert err is None
        landed[msg.key().decode()] = msg.partition()

    for sym in syms:
        producer.produce(topic, key=sym.encode(), value=b"x", on_delivery=record)
    producer.flush(30)
    assert landed == {s: partition_for(s, counts[topic]) for s in syms}
    assert len(set(landed.values())) > 1


def test_block_and_row_messages_share_one_topic(settings, catalog):
    market = SyntheticMarket(syms=5, seed=11)
    trades, _ = market.events(400)
    half = len(trades) // 2
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", trades[:half])
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades[half:])
    magics = set()
    consumer = make_consumer(settings)
    topic = TopicNames(settings.topic_prefix).table("trade")
    try:
        for p in range(settings.partitions):
            end = watermarks(consumer, topic, p)[1]
            magics |= {m.value()[:2] for m in read_ranges(consumer, topic, {p: (0, end)})}
    finally:
        consumer.close()
    assert magics == {ROW_MAGIC, BLOCK_MAGIC}
    assert _by_sym(replay_rows(settings, "trade", catalog=catalog)) == _by_sym(trades)


def test_aiokafka_reads_what_confluent_kafka_published(settings, catalog):
    """faust-streaming's client (aiokafka) reads the same log: proves the broker version suits both."""
    import aiokafka

    market = SyntheticMarket(syms=8, seed=5)
    trades, _ = market.events(500)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
    topic = TopicNames(settings.topic_prefix).table("trade")
    decoder = Decoder(catalog)

    async def consume() -> list[dict]:
        consumer = aiokafka.AIOKafkaConsumer(
            topic, bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
            isolation_level="read_committed", enable_auto_commit=False,
        )
        await consumer.start()
        rows: list[dict] = []
        try:
            while len(rows) < len(trades):
                batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                for messages in batches.values():
                    for msg in messages:
                        rows.extend(decoder.decode(msg.value)[1])
        finally:
            await consumer.stop()
        return rows

    got = asyncio.run(consume())
    assert _by_sym(got) == _by_sym(trades)


def test_rows_the_schema_rejects_go_to_the_dead_letter_topic(settings, catalog):
    from ingest.deadletter import read_deadletters

    good = {"time": 1, "sym": "AAPL", "price": 1.0, "size": 1, "exchange": "N", "cond": ""}
    bad = {"time": 2, "sym": "AAPL", "price": "not a price", "size": 1, "exchange": "N", "cond": ""}
    for mode in ("batch", "zero"):
        with Tickerplant(settings, catalog, mode=mode) as tp:
            tp.publish_rows("trade", [good, bad, good])
            tp.flush()
            assert tp.stats.rejected == 1
    assert [r["time"] for r in replay_rows(settings, "trade", catalog=catalog)] == [1, 1, 1, 1]
    letters = read_deadletters(settings)
    assert len(letters) == 2
    assert all("price" in d["reason"] and d["payload"]["price"] == "not a price" for d in letters)


def test_a_row_without_sym_is_refused_at_once(settings, catalog):
    with Tickerplant(settings, catalog, mode="batch") as tp, pytest.raises(ValueError, match="no sym"):
        tp.publish("trade", {"time": 1, "price": 1.0})
