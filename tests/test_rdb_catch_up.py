"""A restarted worker is routed to only once it has caught up (issue 20: right after a replica
restarted, the gateway read from it before it had, and counts went backwards). It opens its
shards from disk at once, but says it is serving (the metadata the gateway routes by) only
when its reader has reached the end of the log."""

from __future__ import annotations

import time

import pytest
from procs import BackgroundFeed, Worker, wait_until

from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from streams.client import RdbClientError


@pytest.mark.timeout(200)
def test_a_restarted_worker_says_serving_only_once_caught_up(settings, catalog, tmp_path):
    open_first_day(settings, catalog)  # today: rows stamped with the system clock
    market = SyntheticMarket(syms=20, seed=4)
    worker = Worker(settings, "rdb-1", tmp_path).start()
    try:
        worker.wait_serving()

        def count() -> int:
            return sum(worker.client.count("trade").values())

        published = 0
        with Tickerplant(settings, catalog, mode="batch") as tp:
            trades, _ = market.events(60_000)
            tp.publish_rows("trade", trades)
            tp.flush()
            published += len(trades)
            wait_until(lambda: count() == published, 60, "the first rows", worker.log_tail)
            worker.kill9()
            for _ in range(4):  # a backlog for the restarted worker to read
                trades, _ = market.events(60_000)
                tp.publish_rows("trade", trades)
                published += len(trades)
            tp.flush()
        worker.start()
        seen: list[tuple[bool, int]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                serving = worker.client.status()["serving"]
                seen.append((serving, count()))
            except RdbClientError:
                continue  # not answering yet
            if seen[-1] == (True, published):
                break
            time.sleep(0.05)
        assert seen and seen[-1] == (True, published), seen[-5:]
        behind = [n for serving, n in seen if serving and n != published]
        assert not behind, f"said serving while holding {behind[:5]} of {published} rows"
        assert any(not serving for serving, _ in seen)  # it was seen catching up, not serving

        # restarted under a steady feed (the log's end moving on all the time): it still gets there
        with Tickerplant(settings, catalog, mode="zero") as tp:
            with BackgroundFeed(tp, market, events=50, pause=0.01):
                time.sleep(1)
                worker.kill9()
                time.sleep(2)
                worker.start()
                wait_until(lambda: worker.client.status()["serving"], 60, "serving again under load",
                           worker.log_tail)
    finally:
        worker.stop()
