"""Today's aggregates over two RDB nodes: each answers its partial, the gateway merges.

With one node holding every partition, that node answers the statement itself
(tests/test_gateway.py); with the day's partitions on two nodes neither may, and the
answer must still be every row's.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict

from fastapi.testclient import TestClient
from procs import Worker, wait_until

from gateway.app import create_app
from gateway.routing import NoReplica
from gateway.sql import parse_select
from ingest.eod import open_first_day
from ingest.publisher import Tickerplant
from tickplant.clock import ManualClock

T0 = 1_795_339_800_000_000_000  # 2026-11-22 09:30 UTC
SYMS = ["AAPL", "MSFT", "IBM", "GOOG", "AMZN", "TSLA", "NVDA", "JPM"]


def test_two_nodes_each_answer_a_partial_and_the_gateway_merges(broker, catalog, tmp_path):
    settings = broker.settings.replace(topic_prefix=f"pn{uuid.uuid4().hex[:8]}.", data_dir=tmp_path / "plant",
                                       batch_interval_ms=20, gateway_pushdown_rows=100)
    open_first_day(settings, catalog, ManualClock(T0))
    nodes = [Worker(settings, f"rdb-n{i}", tmp_path).start() for i in (1, 2)]
    try:
        for node in nodes:
            node.wait_serving()
        wait_until(lambda: all(n.client.status()["tables"].get("trade", {}).get("partitions") for n in nodes),
                   60, "both nodes holding trade partitions", nodes[1].log_tail)
        rows = [{"time": T0 + i * 1_000_000, "sym": SYMS[i % len(SYMS)], "price": 100.0 + i % 7,
                 "size": 100 + i % 13, "exchange": "N", "cond": ""} for i in range(2000)]
        with Tickerplant(settings, catalog, mode="batch") as tp:
            tp.publish_rows("trade", rows)
            tp.flush()
        wait_until(lambda: sum(nodes[0].client.count("trade").values()) == len(rows), 60, "every row held")
        with TestClient(create_app(settings)) as client:
            engine = client.app.state.gateway.engine
            routing = engine.routing
            def both_routed() -> bool:
                try:  # a gateway just started may have read one node's record only: no route yet
                    nodes_routed = len(routing.route("trade", range(settings.partitions)).nodes)
                except NoReplica:
                    return False
                return nodes_routed == 2 and routing.realtime_rows("trade") >= settings.gateway_pushdown_rows

            wait_until(both_routed, 30, "the gateway to route to both nodes")
            answer = engine.run(parse_select(
                "SELECT sym, count() AS n, sum(size) AS volume FROM trade WHERE date = today() GROUP BY sym ORDER BY sym"))
            infos = answer.touched["trade"]
            assert answer.split and infos and not any(info["final"] for info in infos)
            assert answer.timing["clickhouse"] > 0  # the gateway merged the nodes' partials
            volume: dict[str, int] = defaultdict(int)
            for r in rows:
                volume[r["sym"]] += r["size"]
            counts = Counter(r["sym"] for r in rows)
            assert answer.table.to_pylist() == [{"sym": s, "n": counts[s], "volume": volume[s]} for s in sorted(SYMS)]
    finally:
        for node in nodes:
            node.stop()
