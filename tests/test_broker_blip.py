"""A broker outage under load (issue 20): the broker stopped for 15 s and started again while a
feed publishes. No RDB or CEP worker exits; every row published is served again soon after the
broker is back. The test runs its own broker (the session's is shared with other tests)."""

from __future__ import annotations

import time

import pytest
from procs import BackgroundFeed, Cep, Worker, wait_until

from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from tickplant.config import Settings
from tickplant.kafka.broker import EmbeddedKafka, free_port_pair

OUTAGE_SECONDS = 15


@pytest.mark.timeout(280)
def test_workers_ride_out_a_broker_outage(tmp_path, catalog):
    settings = Settings(data_dir=tmp_path / "plant", kafka_port=free_port_pair(), batch_interval_ms=50)
    kafka = EmbeddedKafka(settings)
    kafka.start()
    procs: list = []
    try:
        open_first_day(settings, catalog)  # today: the feed stamps rows with the system clock
        rdb = Worker(settings, "rdb-1", tmp_path).start()
        cep = Cep(settings, "cep-1", tmp_path).start()
        procs += [rdb, cep]
        rdb.wait_serving()
        wait_until(lambda: cep.status() is not None, 60, "the CEP to serve", cep.log_tail)

        def rdb_rows() -> int:
            return sum(rdb.client.count("trade").values())

        def engine_trades() -> int:
            return sum(a["trades"] or 0 for a in cep.get("/cep/v1/analytics")["analytics"].values())

        with Tickerplant(settings, catalog, mode="batch") as tp:
            with BackgroundFeed(tp, SyntheticMarket(syms=10, seed=5), events=60, pause=0.05) as feed:
                wait_until(lambda: rdb_rows() > 500, 60, "rows before the outage", rdb.log_tail)
                kafka.stop()
                down_at = time.monotonic()
                time.sleep(OUTAGE_SECONDS)
                for proc in procs:
                    assert proc.proc.poll() is None, f"{proc.node_id} exited during the outage:\n{proc.log_tail()}"
                kafka.start()
                back_at = time.monotonic()
                before = rdb_rows()
                wait_until(lambda: rdb_rows() > before, 60, "new rows after the broker came back", rdb.log_tail)
                resumed = time.monotonic() - back_at
                time.sleep(1)
            tp.flush()
        n = len(feed.published["trade"])
        wait_until(lambda: rdb_rows() == n, 90, "every published row in the RDB",
                   lambda: f"{rdb_rows()} != {n}\n{rdb.log_tail()}")
        wait_until(lambda: engine_trades() == n, 90, "every published trade in the engine",
                   lambda: f"{engine_trades()} != {n}\n{cep.log_tail()}")
        for proc in procs:
            assert proc.proc.poll() is None, f"{proc.node_id} exited:\n{proc.log_tail()}"
        print(f"outage {back_at - down_at:.1f} s; new rows served {resumed:.1f} s after the broker was back")
        assert resumed < 45
    finally:
        for proc in procs:
            proc.stop()
        kafka.stop()
