"""The plant's roles on hosts of their own: each a loopback address (127.0.0.2, ...) and a
data directory, nothing shared but the broker. Workers listen where ``--host`` says and
announce where ``--advertise`` says; the gateway reaches them only through what they announce."""

from __future__ import annotations

import datetime as dt
import time
import urllib.error
import urllib.request
from collections import Counter

from fastapi.testclient import TestClient
from procs import Cep, Worker, wait_until

from gateway.app import create_app
from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.metadata import read_metadata
from ingest.publisher import Tickerplant
from tickplant import internal
from tickplant.clock import ManualClock

T0 = int(dt.datetime(2026, 11, 24, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)


def _listening(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/rdb/v1/status", timeout=5)
    except urllib.error.HTTPError:
        return True  # it answered (401: no secret), so something listens there
    except OSError:
        return False
    return True


def test_workers_on_their_own_addresses_are_reached_through_what_they_announce(settings, catalog, tmp_path):
    secret = "the-plant-secret-for-every-host"
    shared = settings.replace(internal_secret=secret)
    clock = ManualClock(T0)
    open_first_day(shared, catalog, clock)
    trades, _ = SyntheticMarket(syms=12, seed=3, clock=clock).events(2000)
    with Tickerplant(shared, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
    rdb = Worker(shared.replace(data_dir=tmp_path / "host2"), "rdb-h2", tmp_path, host="127.0.0.2")
    cep = Cep(shared.replace(data_dir=tmp_path / "host3"), "cep-h3", tmp_path, host="127.0.0.3")
    for child in (rdb, cep):
        child.start()
    try:
        rdb.wait_serving()
        wait_until(lambda: cep.status() is not None, 90, "the CEP on 127.0.0.3", cep.log_tail)
        assert not _listening(f"http://127.0.0.1:{rdb.port}")  # only on its own address
        wait_until(lambda: {"rdb-h2", "cep-h3"} <= set(read_metadata(shared)), 30, "both nodes announced",
                   lambda: str(read_metadata(shared, include_stale=True)))
        urls = {node: record.url for node, record in read_metadata(shared).items()}
        assert urls["rdb-h2"] == rdb.url == f"http://127.0.0.2:{rdb.port}"
        assert urls["cep-h3"] == f"http://127.0.0.3:{cep.port}"
        wait_until(lambda: sum(rdb.client.count("trade").values()) == len(trades), 60, "today in the RDB")
        gateway = shared.replace(data_dir=tmp_path / "host4")
        with TestClient(create_app(gateway)) as client:
            wait_until(lambda: client.get("/v1/health").json().get("rdb_nodes"), 30, "the gateway to see the RDB")
            got = client.post("/v1/sql", json={"query": "SELECT count() AS n FROM trade WHERE date = today()"})
            assert got.status_code == 200 and got.json()["rows"] == [{"n": len(trades)}], got.text
            # the data directories differ: only the shared setting lets the hosts talk
            assert internal.secret(gateway) == secret
    finally:
        cep.stop()
        rdb.stop()


def test_a_wildcard_listener_announces_its_advertised_address(settings, catalog, tmp_path):
    open_first_day(settings, catalog)
    rdb = Worker(settings, "rdb-adv", tmp_path, host="0.0.0.0")
    rdb.url = f"http://127.0.0.5:{rdb.port}"  # reachable on any local address; announced as .5
    rdb.argv = lambda: ["rdb", "worker", "--id", "rdb-adv", "--port", str(rdb.port), "--host", "0.0.0.0",
                        "--advertise", "127.0.0.5"]
    rdb.start()
    try:
        rdb.wait_serving()
        wait_until(lambda: getattr(read_metadata(settings).get("rdb-adv"), "url", None) == rdb.url, 30,
                   "the advertised address on the metadata topic", lambda: str(read_metadata(settings)))
    finally:
        rdb.stop()


def test_a_worker_with_no_local_copy_rebuilds_from_the_real_time_days_fences(settings, catalog, tmp_path):
    """Yesterday is in the HDB (published): a worker on a new host reads the log from the open
    day's fences, not from the retained log's first offset."""
    from ingest.eod import roll_day
    from sinks.backfill import backfill

    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=8, seed=4, clock=clock)
    yesterday, _ = market.events(3000)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", yesterday)
    clock.advance(12 * 3600)
    roll_day(settings, catalog, clock)
    day1 = dt.datetime.fromtimestamp(T0 / 1e9, dt.UTC).date()
    backfill(settings, "trade", day1, catalog=catalog)  # yesterday published: history now
    today, _ = market.events(1500)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", today)
    fresh = Worker(settings.replace(data_dir=tmp_path / "new-host"), "rdb-new", tmp_path, host="127.0.0.6").start()
    try:
        fresh.wait_serving()
        wait_until(lambda: sum(fresh.client.count("trade").values()) == len(today), 60, "today on the new host")
        status = fresh.client.status()
        assert status["rows_applied"] == len(today), status["rows_applied"]  # not one of yesterday's rows read
        assert [d for d in status["tables"]["trade"]["dates"]] == [(day1 + dt.timedelta(days=1)).isoformat()]
    finally:
        fresh.stop()


def test_a_killed_rdb_host_moves_its_partitions_and_no_answer_is_partial(settings, catalog, tmp_path):
    """Two RDB hosts (own addresses, own disks); kill -9 one mid-feed. The other takes its
    partitions and rebuilds them from the log; meanwhile every answer through the gateway
    is whole (no sym's count ever goes back or vanishes) or a 503; afterwards, exact."""
    from procs import BackgroundFeed, SymCounts

    shared = settings.replace(internal_secret="one-plant-secret-for-both-hosts", gateway_timeout_s=10)
    clock = ManualClock(T0)
    open_first_day(shared, catalog, clock)
    a = Worker(shared.replace(data_dir=tmp_path / "host-a"), "rdb-a", tmp_path, host="127.0.0.2").start()
    b = Worker(shared.replace(data_dir=tmp_path / "host-b"), "rdb-b", tmp_path, host="127.0.0.3").start()
    asking = None
    try:
        a.wait_serving()
        b.wait_serving()
        wait_until(lambda: all(w.client.status()["serving"] and w.client.status()["tables"].get("trade")
                               for w in (a, b)), 60, "both hosts holding partitions")
        with TestClient(create_app(shared.replace(data_dir=tmp_path / "host-gw"))) as http:
            asking = SymCounts(http)
            market = SyntheticMarket(syms=16, seed=8, clock=clock)
            with Tickerplant(shared, catalog, mode="batch") as tp, BackgroundFeed(tp, market, events=100) as feed:
                wait_until(lambda: sum(a.client.count("trade").values()) > 1000, 60, "rows on host a")
                asking.start()
                time.sleep(1)
                a.kill9()  # every process of host a, mid-feed
                time.sleep(8)
            tp_rows = feed.published["trade"]
            want = dict(Counter(r["sym"] for r in tp_rows))
            wait_until(lambda: asking.last_is(want), 120, "the survivor exact",
                       lambda: f"{asking.answers[-1:]} != {want}; refused {asking.refused[-2:]}")
            asking.stop()
            assert not asking.wrong, asking.wrong[:3]
            assert not asking.partial(), asking.partial()[:3]
            status = b.client.status()
            assert sorted(status["tables"]["trade"]["partitions"]) == list(range(shared.partitions))
    finally:
        if asking is not None:
            asking.stop()
        a.stop()
        b.stop()


def test_with_no_copy_serving_a_query_is_a_quick_503_not_a_hang(settings, catalog, tmp_path):
    """The only RDB worker killed: a query for today is refused with 503 in a few seconds,
    well within its own timeout, rather than waiting it out."""
    open_first_day(settings, catalog)
    only = Worker(settings, "rdb-only", tmp_path, host="127.0.0.2").start()
    try:
        only.wait_serving()
        with TestClient(create_app(settings.replace(gateway_timeout_s=30))) as http:
            query = {"query": "SELECT count() AS n FROM trade WHERE date = today()", "timeout": 30}
            wait_until(lambda: http.post("/v1/sql", json=query).status_code == 200, 30, "an answer")
            only.kill9()
            wait_until(lambda: http.get("/v1/health").json()["status"] == "degraded", 30, "the node gone stale")
            problems = http.get("/v1/health", headers={internal.HEADER: internal.secret(settings)}).json()["problems"]
            assert any(p.startswith(f"trade partitions {list(range(settings.partitions))}") for p in problems), problems
            started = time.monotonic()
            resp = http.post("/v1/sql", json=query)
            assert resp.status_code == 503 and "retry" in resp.json()["error"], resp.text
            assert time.monotonic() - started < 15, "the query waited out its timeout instead of a quick 503"
    finally:
        only.stop()
