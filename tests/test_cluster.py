"""A 3-broker KRaft cluster (what MSK gives): a broker killed mid-feed loses no acknowledged
row and doubles none, in the RDB, the CEP's analytics or the HDB written from the log."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter

import pytest
from procs import Cep, Worker, wait_until

from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from sinks.backfill import backfill
from sinks.hdb import HdbQuery
from tickplant.clock import ManualClock
from tickplant.config import Settings
from tickplant.kafka.broker import EmbeddedCluster, free_port, port_is_free

T0 = int(dt.datetime(2026, 11, 25, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)


def _six_free_ports() -> int:
    for _ in range(200):
        port = free_port()
        if all(port_is_free(port + i) for i in range(1, 6)):
            return port
    raise AssertionError("no six free ports in a row")


@pytest.fixture
def cluster(tmp_path, catalog):
    settings = Settings(
        data_dir=tmp_path / "plant", kafka_port=_six_free_ports(), kafka_brokers=3, replication_factor=3,
        kafka_heap="256m", topic_prefix=f"c{uuid.uuid4().hex[:8]}.", batch_interval_ms=50)
    brokers = EmbeddedCluster(settings)
    brokers.start()
    try:
        yield settings, brokers
    finally:
        brokers.stop()


def test_a_broker_killed_mid_feed_loses_and_doubles_nothing(cluster, catalog, tmp_path):
    settings, brokers = cluster
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    day = dt.datetime.fromtimestamp(T0 / 1e9, dt.UTC).date()  # the open day (EOD at 00:00 UTC)
    rdb = Worker(settings, "rdb-c1", tmp_path).start()
    cep = Cep(settings, "cep-c1", tmp_path).start()
    market = SyntheticMarket(syms=10, seed=9, clock=clock)
    acked: list[dict] = []
    killed = threading.Event()
    try:
        rdb.wait_serving()
        with Tickerplant(settings, catalog, mode="batch") as tp:
            for chunk in range(30):
                trades, _ = market.events(400)
                tp.publish_rows("trade", trades)
                tp.flush()  # acknowledged by two in-sync replicas at least
                acked.extend(trades)
                clock.advance(1)
                if chunk == 10:
                    brokers.nodes[1].kill()  # kill -9 of one of three brokers, mid-feed
                    killed.set()
        want = Counter(t["sym"] for t in acked)
        wait_until(lambda: rdb.client.count("trade") == dict(want), 120, "every acknowledged row in the RDB",
                   lambda: f"{rdb.client.count('trade')} != {dict(want)}\n{rdb.log_tail()}")
        wait_until(lambda: cep.status() is not None and {s: a["trades"] for s, a in
                   cep.get("/cep/v1/analytics")["analytics"].items()} == dict(want), 120,
                   "every acknowledged trade in the CEP's analytics", cep.log_tail)
        clock.advance(3600)
        roll_day(settings, catalog, clock)
        manifest, written = backfill(settings, "trade", day, catalog=catalog)
        assert written and manifest.rows == len(acked)
        got = HdbQuery(settings, catalog=catalog).sql(
            f"SELECT sym, count() AS n FROM {{trade}} WHERE date = '{day}' GROUP BY sym").to_pylist()
        assert {r["sym"]: r["n"] for r in got} == dict(want)
    finally:
        cep.stop()
        rdb.stop()
    assert killed.is_set()
