"""Poison messages in the log (issue 20): produced straight into the trade topic while an RDB
worker, a CEP worker and the PDB run. Each is dead-lettered exactly once plant-wide (a second
replica and a replay reading them again add nothing), every process stays up, every good row
around them is in the RDB, the engine's analytics and bars and, after end of day, the HDB."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time

import pytest
from confluent_kafka import Producer
from procs import Cep, PlantChild, Worker, wait_until
from test_cep import derived

from ingest.deadletter import read_deadletters
from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.framing import CONTROL_HEADER, ROW_MAGIC, encode_block, encode_row
from ingest.publisher import Tickerplant
from ingest.replay import replay_rows
from ingest.schema_topic import SchemaTopic
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames, ensure_topics, partition_for
from sinks.store import HdbStore
from tickplant.clock import ManualClock

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY = dt.date(2026, 11, 22)
INT64_MAX = (1 << 63) - 1


class PdbChild(PlantChild):
    def argv(self) -> list[str]:
        return ["pdb", "run", "--id", self.node_id]


def _trade(sym: str, time_ns: int = T0 + 10**9, price: float = 10.0) -> dict:
    return {"time": time_ns, "sym": sym, "price": price, "size": 5, "exchange": "N", "cond": ""}


def poison(catalog) -> list[tuple[str, bytes, str]]:
    """(key sym, value, what the dead letter's reason says) of each bad message."""
    trade, quote = catalog["trade"], catalog["quote"]
    quote_row = {"time": T0 + 10**9, "sym": "AAPL", "bid": 1.0, "ask": 1.1, "bsize": 1, "asize": 1, "exchange": "N"}
    return [
        ("AAPL", encode_row(quote, quote_row), "'quote' row in the 'trade' topic"),
        ("AB", encode_row(trade, _trade("A\x00B")), "control or unprintable"),
        ("LONG", encode_row(trade, _trade("X" * 10_000)), "byte limit"),
        ("AAPL", encode_row(trade, _trade("")), "sym is empty"),
        ("AAPL", encode_row(trade, _trade("AAPL", INT64_MAX)), "max_future_seconds"),
        ("AAPL", encode_row(trade, _trade("AAPL", T0 + 365 * 86400 * 10**9)), "max_future_seconds"),
        ("AAPL", encode_row(trade, _trade("AAPL", -5)), "before the epoch"),
        ("AAPL", encode_row(trade, _trade("AAPL", price=math.nan)), "NaN and infinities"),
        ("AAPL", encode_row(trade, _trade("AAPL", price=math.inf)), "NaN and infinities"),
        ("AAPL", ROW_MAGIC + os.urandom(8) + b"\x02", "unknown writer schema"),
        ("AAPL", b"\xc3\xb1" + b"\x01" * 3, "too short"),
    ]


@pytest.mark.timeout(240)
def test_poison_messages_are_dead_lettered_once_and_stop_nothing(settings, catalog, tmp_path):
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    names = TopicNames(settings.topic_prefix)
    topic = names.table("trade")
    market = SyntheticMarket(syms=8, seed=11, clock=clock)
    procs: list[PlantChild] = []
    try:
        rdb = Worker(settings, "rdb-1", tmp_path).start()
        cep = Cep(settings, "cep-1", tmp_path, "--bar-seconds", "1", "--grace-seconds", "0").start()
        pdb = PdbChild(settings, "pdb-1", tmp_path).start()
        procs += [rdb, cep, pdb]
        rdb.wait_serving()
        wait_until(lambda: cep.status() is not None, 60, "the CEP to serve", cep.log_tail)

        good: list[dict] = []
        with Tickerplant(settings, catalog, mode="batch") as tp:
            trades, _ = market.events(600)
            tp.publish_rows("trade", trades)
            tp.flush()
            good += trades

        raw = Producer(settings.kafka_config())
        sent: dict[str, str] = {}  # where -> what its reason must say

        def produce(sym: str, value: bytes, why: str, part: int | None = None, **extra) -> None:
            part = partition_for(sym, settings.partitions) if part is None else part

            def delivered(err, msg) -> None:
                assert err is None, err
                if why:
                    sent[f"{topic}[{msg.partition()}]@{msg.offset()}"] = why

            raw.produce(topic, key=sym.encode(), value=value, partition=part, on_delivery=delivered, **extra)

        for sym, value, why in poison(catalog):
            produce(sym, value, why)
        # a block of three rows, the middle one bad: the two good ones are kept
        block_rows = [_trade("IBM", T0 + 2 * 10**9), _trade("IB\x07M", T0 + 2 * 10**9), _trade("IBM", T0 + 3 * 10**9)]
        produce("IBM", encode_block(catalog["trade"], block_rows), "control or unprintable")
        good += [block_rows[0], block_rows[2]]
        # a good trade from a clock well ahead (within the day's window): it must not stop the bars
        close = int(dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()) * 10**9
        ahead = _trade("MSFT", close + 1800 * 10**9, 42.0)
        produce("MSFT", encode_row(catalog["trade"], ahead), "")
        good.append(ahead)
        # a good row in another sym's partition (librdkafka's default partitioner): refused, with where it belongs
        wrong = (partition_for("AAPL", settings.partitions) + 1) % settings.partitions
        produce("AAPL", encode_row(catalog["trade"], _trade("AAPL")), f"belongs in partition "
                f"{partition_for('AAPL', settings.partitions)}, not {wrong}", part=wrong)
        # 300 unknown writer schemas: each must not re-read the whole schemas topic
        for _ in range(300):
            produce("MSFT", ROW_MAGIC + os.urandom(8) + b"\x02", "unknown writer schema")
        # a fence header no roll wrote (no committed marker): ignored at once, not after 30 s
        produce("AAPL", b"", "", headers=[(CONTROL_HEADER, b"eod:" + DAY.isoformat().encode())])
        assert raw.flush(30) == 0

        clock.advance(60)
        started = time.monotonic()
        with Tickerplant(settings, catalog, mode="zero") as tp:
            trades, _ = market.events(600)
            tp.publish_rows("trade", trades)
            tp.flush()
            good += trades
        n = len(good)

        def rdb_rows() -> int:
            return sum(rdb.client.count("trade", date=DAY.isoformat()).values())

        def engine_trades() -> int:
            return sum(a["trades"] or 0 for a in cep.get("/cep/v1/analytics")["analytics"].values())

        wait_until(lambda: rdb_rows() == n, 60, "every good row in the RDB", lambda: f"{rdb_rows()} != {n}")
        wait_until(lambda: engine_trades() == n, 60, "every good trade in the engine",
                   lambda: f"{engine_trades()} != {n}\n{cep.log_tail()}")
        caught_up = time.monotonic() - started
        assert caught_up < 25, f"the rows after the poison took {caught_up:.1f} s to be served"

        # the RDB serves good rows only: no quote read as a trade, no bad sym
        rows = rdb.client.rows("trade", date=DAY.isoformat()).to_pylist()
        assert sorted((r["sym"], r["price"]) for r in rows) == sorted((r["sym"], r["price"]) for r in good)

        def letters() -> dict[str, list[dict]]:
            by_where: dict[str, list[dict]] = {}
            for letter in read_deadletters(settings):
                by_where.setdefault(letter["where"], []).append(letter)
            return by_where

        wait_until(lambda: set(letters()) == set(sent), 60, "every poison message dead-lettered",
                   lambda: f"{len(letters())} of {len(sent)}")

        # each reader counts what it refused (its status), each message once
        assert rdb.client.status()["refused"]["messages"] == len(sent)
        assert cep.get("/cep/v1/status")["refused"]["messages"] == len(sent)

        # read again by a whole second replica and by a replay: not one more dead letter
        replica = Worker(settings, "rdb-b1", tmp_path, replica="b").start()
        procs.append(replica)
        replica.wait_serving()
        wait_until(lambda: sum(replica.client.count("trade", date=DAY.isoformat()).values()) == n, 60,
                   "the second replica to read the log", replica.log_tail)
        assert len(list(replay_rows(settings, "trade", catalog=catalog))) == n

        clock.advance(86400)
        assert roll_day(settings, catalog, clock).date == DAY
        store = HdbStore.from_settings(settings)
        wait_until(lambda: store.manifest("trade", DAY) is not None, 90, "the HDB partition", pdb.log_tail)
        assert store.manifest("trade", DAY).rows == n
        # the fence closed every open bar: each good trade is in exactly one published bar, none late
        def in_bars() -> int:
            return sum(b["trades"] for b in derived(settings, "bars"))

        wait_until(lambda: in_bars() == n, 60, "every good trade in a bar", lambda: f"{in_bars()} != {n}")
        late = {p: s["late_trades"] for p, s in cep.get("/cep/v1/status")["partition_state"].items()}
        assert not any(v for s in late.values() for v in s.values()), late

        final = letters()
        assert set(final) == set(sent)
        for where, copies in final.items():
            assert len(copies) == 1, (where, copies)
            assert sent[where] in copies[0]["reason"], (sent[where], copies[0]["reason"])
        for proc in procs:
            assert proc.proc is not None and proc.proc.poll() is None, f"{proc.node_id} exited:\n{proc.log_tail()}"
    finally:
        for proc in procs:
            proc.stop()


def test_unknown_fingerprints_do_not_reread_the_schemas_topic(settings, catalog):
    ensure_topics(settings, catalog)
    topic = SchemaTopic(settings)
    topic.register(catalog)
    started = time.monotonic()
    assert all(topic.lookup(os.urandom(8)) is None for _ in range(300))
    assert time.monotonic() - started < 5
    assert topic.lookup(catalog["trade"].fingerprint) == catalog["trade"].avro
    # a schema registered after the reader started is still found
    other = SchemaTopic(settings)
    v2 = json.loads(json.dumps(catalog["trade"].avro))
    v2["fields"].append({"name": "venue", "type": "string", "default": "lit"})
    from ingest.schemas import TableSchema

    new = TableSchema.from_dict(v2)
    other.register(SchemaCatalog({"trade": new}))
    assert topic.lookup(new.fingerprint) == v2
