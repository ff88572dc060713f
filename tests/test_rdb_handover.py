"""A shard handed over while another process still holds its RocksDB lock (issue 20: workers
crashed on rebalance with "LOCK: Resource temporarily unavailable" after a peer restarted, as
a restarted worker opens its last shards from disk before the group hears of it). The new
owner neither waits in the rebalance nor exits: it serves its other shards, opens this one
once the lock is released, and then serves every row of it."""

from __future__ import annotations

import time

import pytest
from procs import BackgroundFeed, Worker, wait_until

from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from streams.replicas import shard_path
from streams.shard import Resources, Shard


@pytest.mark.timeout(240)
def test_a_locked_shard_is_opened_once_released_without_a_crash(settings, catalog, tmp_path):
    open_first_day(settings, catalog)  # today: rows stamped with the system clock
    a = Worker(settings, "rdb-1", tmp_path).start()
    b = Worker(settings, "rdb-2", tmp_path).start()
    holder: Shard | None = None
    try:
        a.wait_serving()
        b.wait_serving()

        def partitions(worker: Worker) -> list[int]:
            return worker.client.status()["tables"].get("trade", {}).get("partitions", [])

        def served() -> int:
            return sum(b.client.count("trade").values())

        with Tickerplant(settings, catalog, mode="zero") as tp:
            with BackgroundFeed(tp, SyntheticMarket(syms=16, seed=9), events=40, pause=0.02) as feed:
                wait_until(lambda: partitions(a) and partitions(b), 60, "both workers to hold partitions",
                           b.log_tail)
                p = partitions(a)[0]
                a.kill9()
                # another process holds the shard (as a worker restarted at once does) when the
                # group hands it to b
                holder = Shard(shard_path(settings, "trade", p), Resources(1 << 20, 1 << 20), open_timeout=10)
                wait_until(lambda: p in partitions(b), 60, "the group to give b the dead worker's partitions",
                           b.log_tail)
                time.sleep(3)
                status = b.client.status()
                assert status["serving"] is False  # not all of its shards are open: not routed to
                assert "still held by another process" in b.log_tail(200)
                holder.close()
                holder = None
                wait_until(lambda: b.client.status()["serving"], 30, "b to open the shard once released",
                           b.log_tail)
            tp.flush()
        n = len(feed.published["trade"])
        wait_until(lambda: served() == n, 90, "b to serve every row", lambda: f"{served()} != {n}\n{b.log_tail()}")
        assert b.proc.poll() is None, f"b exited:\n{b.log_tail()}"
        rows = b.client.rows("trade", columns=["sym", "time"]).to_pylist()
        assert len({(r["sym"], r["time"]) for r in rows}) == len(rows) == n
    finally:
        if holder is not None:
            holder.close()
        a.stop()
        b.stop()
