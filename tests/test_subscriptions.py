"""Streaming subscriptions (the Query Manager): a real broker, a real uvicorn server, real clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from procs import Cep, Worker, plant_env, wait_until
from websockets.sync.client import ClientConnection, connect

from gateway import enginefeed
from gateway.streaming import standalone_app
from gateway.subscriptions import Hub
from ingest.eod import open_first_day
from ingest.framing import encode_row
from ingest.metadata import read_metadata
from ingest.publisher import Tickerplant
from ingest.schema_topic import SchemaTopic
from ingest.schemas import SchemaCatalog, TableSchema
from ingest.topics import TopicNames, ensure_topics, partition_counts, partition_for
from tickplant.clock import ManualClock
from tickplant.config import Settings
from tickplant.kafka.admin import admin_client
from tickplant.kafka.broker import free_port

T0 = 1_795_300_000_000_000_000


class Server:
    """The streaming routes on a real uvicorn server in a thread, on a free port."""

    def __init__(self, hub: Hub, authorize: Any = None):
        self.hub = hub
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/ws"
        config = uvicorn.Config(standalone_app(hub, authorize), host="127.0.0.1", port=self.port, log_level="warning",
                                ws_ping_interval=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def gateway(settings: Settings, catalog: SchemaCatalog) -> Iterator[Server]:
    ensure_topics(settings, catalog)
    with Server(Hub(settings, catalog=catalog, max_queued=2_000)) as server:
        yield server


def trade(i: int, sym: str) -> dict[str, Any]:
    return {"time": T0 + i, "sym": sym, "price": 100.0 + i / 100, "size": i, "exchange": "N", "cond": ""}


def subscribe(ws: ClientConnection, source: str, syms: list[str] | None = None) -> dict[str, Any]:
    """Subscribe and return the snapshot (the first message for it)."""
    ws.send(json.dumps({"op": "subscribe", "source": source, **({"syms": syms} if syms is not None else {})}))
    message = json.loads(ws.recv(timeout=30))
    assert message["type"] == "snapshot", message
    return message


def collect(ws: ClientConnection, expected: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Update rows until ``expected`` arrived (then half a second more: nothing else may come)."""
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(rows) < expected and time.monotonic() < deadline:
        try:
            message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            break
        assert message["type"] == "update", message
        rows.extend(message["rows"])
    try:
        extra = json.loads(ws.recv(timeout=0.5))
        rows.extend(extra.get("rows", [extra]))
    except TimeoutError:
        pass
    return rows


def by_sym(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["sym"], []).append(r)
    return out


def test_snapshot_from_the_rdb_then_updates_in_order_for_the_requested_syms_only(
        settings: Settings, catalog: SchemaCatalog, tmp_path: Any) -> None:
    syms = ["AAPL", "MSFT", "IBM", "GOOG"]
    early = [trade(i, syms[i % 4]) for i in range(400)]
    open_first_day(settings, catalog, ManualClock(T0))
    worker = Worker(settings, "rdb-1", tmp_path).start()
    try:
        with Tickerplant(settings, catalog, mode="zero") as tp:
            tp.publish_rows("trade", early)
            tp.flush()
            worker.wait_serving()
            wait_until(lambda: sum(worker.client.count("trade").values()) == len(early), 60, "the RDB to hold the day")
            wait_until(lambda: read_metadata(settings), 30, "the RDB's metadata record")
            hub = Hub(settings, catalog=catalog)  # the default snapshot: the RDB found through metadata
            with Server(hub) as server, connect(server.ws_url) as ws:
                snap = subscribe(ws, "trade", ["MSFT", "AAPL"])
                assert snap["syms"] == ["AAPL", "MSFT"], snap
                last = {s: rows[-1] for s, rows in by_sym(early).items()}
                assert snap["rows"] == [last["AAPL"], last["MSFT"]], snap  # time as int ns, as published
                late = [trade(1000 + i, syms[i % 4]) for i in range(600)]
                tp.publish_rows("trade", late)
                tp.flush()
                got = collect(ws, 300)
    finally:
        worker.stop()
    want = by_sym([r for r in late if r["sym"] in ("AAPL", "MSFT")])
    assert by_sym(got) == want  # every row, in publish order per sym, nothing of IBM or GOOG
    assert hub.upstream_count == 0  # the server's shutdown closed the hub


def test_two_clients_share_one_upstream_and_the_last_to_leave_stops_it(
        settings: Settings, catalog: SchemaCatalog, gateway: Server) -> None:
    hub = gateway.hub
    with connect(gateway.ws_url) as one, connect(gateway.ws_url) as two:
        assert subscribe(one, "trade", ["AAPL", "MSFT"])["rows"] == []  # no RDB: nothing yet
        subscribe(two, "trade", ["MSFT", "AAPL", "AAPL"])  # the same set, in another order
        assert hub.upstream_count == 1
        assert hub.stats()["upstreams"][0]["subscribers"] == 2
        upstream = next(iter(hub.upstreams.values()))
        rows = [trade(i, ["AAPL", "MSFT", "IBM"][i % 3]) for i in range(300)]
        with Tickerplant(settings, catalog, mode="batch") as tp:
            tp.publish_rows("trade", rows)
        want = by_sym([r for r in rows if r["sym"] != "IBM"])
        assert by_sym(collect(one, 200)) == want
        assert by_sym(collect(two, 200)) == want
        # a late joiner's snapshot is the upstream's own latest row per sym (no RDB here)
        with connect(gateway.ws_url) as three:
            snap = subscribe(three, "trade", ["AAPL", "MSFT"])
            assert snap["rows"] == [want["AAPL"][-1], want["MSFT"][-1]]
            subscribe(three, "trade", ["IBM"])  # another sym set: its own upstream
            assert hub.upstream_count == 2
        wait_until(lambda: hub.upstream_count == 1, 10, "the IBM upstream to go with its only client")
        one.send(json.dumps({"op": "unsubscribe", "source": "trade", "syms": ["AAPL", "MSFT"]}))
        assert json.loads(one.recv(timeout=10)) == {"type": "unsubscribed", "source": "trade",
                                                    "syms": ["AAPL", "MSFT"]}
        assert hub.upstream_count == 1 and not upstream.closed.is_set()  # two still holds it
        more = [trade(1000 + i, "AAPL") for i in range(50)]
        with Tickerplant(settings, catalog, mode="zero") as tp:
            tp.publish_rows("trade", more)
        assert collect(two, 50) == more
        with pytest.raises(TimeoutError):  # cancelled at once: nothing more for one
            one.recv(timeout=0.5)
    # the last client gone: no upstream, and its consumer closed
    wait_until(lambda: hub.upstream_count == 0, 10, "the upstream to stop", lambda: str(hub.stats()))
    wait_until(upstream.closed.is_set, 5, "the upstream's consumer to close")
    assert hub.stats()["clients"] == 0


class SilentClient:
    """A WebSocket client that subscribes and then reads nothing: a raw socket with a tiny
    receive buffer, so what the server sends backs up to the server at once."""

    def __init__(self, port: int, source: str, syms: list[str]):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        assert self.buffer.startswith(b"HTTP/1.1 101"), self.buffer
        self.buffer = self.buffer.split(b"\r\n\r\n", 1)[1]
        payload = json.dumps({"op": "subscribe", "source": source, "syms": syms}).encode()
        mask = b"\x01\x02\x03\x04"
        assert len(payload) < 126
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def messages(self, timeout: float = 30) -> Iterator[tuple[int, bytes]]:
        """Read at last: (opcode, payload) of each frame until the server closes."""
        self.sock.settimeout(timeout)
        data = self.buffer
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        pos = 0
        while pos + 2 <= len(data):
            opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
            pos += 2
            if size == 126:
                size, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
            elif size == 127:
                size, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
            yield opcode, data[pos:pos + size]
            pos += size

    def close(self) -> None:
        self.sock.close()


def test_a_slow_client_is_dropped_with_a_message_and_the_fast_one_gets_every_row(
        settings: Settings, catalog: SchemaCatalog) -> None:
    ensure_topics(settings, catalog)
    total, chunk = 60_000, 500
    with Server(Hub(settings, catalog=catalog, max_queued=10_000)) as gateway:
        hub = gateway.hub
        slow = SilentClient(gateway.port, "trade", ["AAPL"])
        with connect(gateway.ws_url) as fast:
            subscribe(fast, "trade", ["AAPL"])
            wait_until(lambda: hub.stats()["upstreams"][0]["subscribers"] == 2, 10, "both clients")
            assert hub.upstream_count == 1
            got: list[dict[str, Any]] = []
            reader = threading.Thread(target=lambda: got.extend(collect(fast, total, timeout=90)))
            reader.start()
            with Tickerplant(settings, catalog, mode="batch") as tp:
                for n in range(total // chunk):  # the slow client reads nothing meanwhile
                    tp.publish_rows("trade", [trade(n * chunk + i, "AAPL") for i in range(chunk)])
                    time.sleep(0.01)
            reader.join()
            assert len(got) == total and [r["time"] for r in got] == [T0 + i for i in range(total)]
            assert hub.dropped == 1 and hub.upstream_count == 1  # the fast client still holds it
            # the slow one, reading at last: what the socket held, its snapshot and the first
            # updates, then the reason, then the close (1013: try again later)
            frames = list(slow.messages())
            slow.close()
        texts = [json.loads(p) for op, p in frames if op == 1]
        assert texts[0]["type"] == "snapshot"
        assert texts[-1]["type"] == "error", texts[-1]
        assert texts[-1]["reason"].startswith("slow consumer: ")
        assert "more than the limit of 10,000; dropped" in texts[-1]["reason"]
        assert sum(len(m.get("rows", [])) for m in texts) < total
        assert frames[-1][0] == 8 and int.from_bytes(frames[-1][1][:2], "big") == 1013
        wait_until(lambda: hub.upstream_count == 0, 10, "the upstream to stop")


def test_server_sent_events_and_errors(settings: Settings, catalog: SchemaCatalog, gateway: Server) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        missing = client.get("/v1/subscribe/trades", params={"syms": "AAPL"})
        assert missing.status_code == 404
        sources = ", ".join(sorted(gateway.hub.sources()))
        assert "quote, trade" in sources
        assert missing.json()["error"] == f"unknown source 'trades'; sources: {sources}"
        with client.stream("GET", "/v1/subscribe/quote", params={"syms": "IBM"}) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            assert next(lines) == "event: snapshot"
            assert next(lines).startswith("id: ")  # its position: where Last-Event-ID resumes
            assert json.loads(next(lines).removeprefix("data: "))["rows"] == []
            quotes = [{"time": T0 + i, "sym": s, "bid": 1.0 + i, "ask": 1.1 + i, "bsize": 1, "asize": 2,
                       "exchange": "N"} for i, s in enumerate(["IBM", "ZZZ", "IBM"])]
            with Tickerplant(settings, catalog, mode="zero") as tp:
                tp.publish_rows("quote", quotes)
            got: list[dict[str, Any]] = []
            for line in lines:
                if line.startswith("data: "):
                    message = json.loads(line.removeprefix("data: "))
                    assert message["type"] == "update"
                    got.extend(message["rows"])
                    if len(got) >= 2:
                        break
            assert got == [quotes[0], quotes[2]]
            assert gateway.hub.upstream_count == 1
    # the client closed the stream: the subscription went with it
    wait_until(lambda: gateway.hub.upstream_count == 0, 10, "the SSE subscription to be released")
    with connect(gateway.ws_url) as ws:
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=10))["reason"].startswith("bad JSON")
        ws.send(json.dumps({"op": "subscribe", "source": "nosuch", "syms": ["AAPL"]}))
        error = json.loads(ws.recv(timeout=10))
        assert error == {"type": "error", "source": "nosuch", "status": 404,
                         "reason": f"unknown source 'nosuch'; sources: {sources}"}
        ws.send(json.dumps({"op": "subscribe", "source": "trade", "syms": "AAPL"}))  # a string is a list
        assert subscribe_reply(ws)["type"] == "snapshot"
        ws.send(json.dumps({"op": "subscribe", "source": "trade", "syms": [1]}))
        assert "syms must be a list of non-empty strings" in json.loads(ws.recv(timeout=10))["reason"]
        ws.send(json.dumps({"op": "sub", "source": "trade"}))
        assert json.loads(ws.recv(timeout=10))["reason"].startswith("unknown op 'sub'")


def subscribe_reply(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=30))


BARS = {
    "type": "record", "name": "testbars", "namespace": "tickplant.test",
    "fields": [{"name": "time", "type": "long"}, {"name": "sym", "type": "string"},
               {"name": "open", "type": "double"}, {"name": "close", "type": "double"},
               {"name": "volume", "type": "long"}],
}


def publish_derived(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """A derived topic as an engine writes one: keyed by sym, framed Avro, schema registered."""
    schema = TableSchema.from_dict(BARS)
    SchemaTopic(settings).register(SchemaCatalog({schema.name: schema}))
    topic = TopicNames(settings.topic_prefix).derived("testbars")
    producer = Producer(settings.kafka_config())
    for row in rows:
        producer.produce(topic, key=row["sym"].encode(), value=encode_row(schema, row),
                         partition=partition_for(row["sym"], settings.partitions))
    assert producer.flush(30) == 0


def test_a_derived_source_found_on_the_broker(settings: Settings, catalog: SchemaCatalog, gateway: Server) -> None:
    topic = TopicNames(settings.topic_prefix).derived("testbars")
    admin = admin_client(settings)
    admin.create_topics([NewTopic(topic, settings.partitions, 1)])[topic].result()
    wait_until(lambda: partition_counts(settings, [topic]).get(topic) == settings.partitions, 20,
               "the derived topic to be known")
    with connect(gateway.ws_url) as ws:
        snap = subscribe(ws, "testbars", ["AAPL"])
        assert snap["rows"] == []  # no CEP node: no snapshot, the updates still come
        bars = [{"time": T0 + i * 60_000_000_000, "sym": s, "open": 1.0 + i, "close": 2.0 + i, "volume": i}
                for i, s in enumerate(["AAPL", "MSFT", "AAPL"])]
        publish_derived(settings, bars)
        assert collect(ws, 2) == [bars[0], bars[2]]


def test_watch_prints_the_snapshot_and_live_lines(settings: Settings, catalog: SchemaCatalog, gateway: Server) -> None:
    env = plant_env(settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickplant", "watch", "trade", "AAPL", "MSFT", "--url", gateway.url, "--count", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the snapshot: reading from the log's end has begun
    assert first.startswith("trade AAPL MSFT: snapshot, 0 rows"), (first, proc.communicate())
    rows = [trade(i, s) for i, s in enumerate(["AAPL", "IBM", "MSFT", "AAPL", "MSFT"])]
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", rows)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    live = [line for line in lines if "AAPL" in line or "MSFT" in line]
    assert len(live) == 4 and "IBM" not in out
    # per sym in publish order (AAPL and MSFT may sit in different partitions)
    assert [line.split()[2] for line in live if " AAPL " in line] == ["100", "100.03"]
    assert [line.split()[2] for line in live if " MSFT " in line] == ["100.02", "100.04"]
    header = ""
    for line in lines:  # each row aligned under the header above it (a new one when a column widens)
        if line.split()[:2] == ["time", "sym"]:
            header = line
        elif line in live:
            sym, price = line.split()[1:3]
            assert line.index(f" {sym} ") + 1 == header.index("sym"), (header, line)
            price_end = header.index("price") + len("price")  # numbers right-aligned
            assert line.index(f" {price} ") + 1 + len(price) == price_end, (header, line)
    assert "4 updates" in err


def test_watch_says_so_when_the_gateway_is_not_running(settings: Settings) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "tickplant", "watch", "trade", "AAPL", "--url", f"http://127.0.0.1:{port}"],
        env=plant_env(settings), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert f"no gateway at http://127.0.0.1:{port}" in done.stderr


def test_authorize_refuses_a_source_over_websocket_and_sse(settings: Settings, catalog: SchemaCatalog) -> None:
    ensure_topics(settings, catalog)
    asked: list[tuple[str, str]] = []

    def authorize(who: Any, source: str) -> None:
        asked.append((type(who).__name__, source))
        if source == "quote" and who.headers.get("x-user") != "alice":
            raise PermissionError("quotes are for alice only")

    with Server(Hub(settings, catalog=catalog), authorize=authorize) as gateway:
        with connect(gateway.ws_url) as ws:
            ws.send(json.dumps({"op": "subscribe", "source": "quote", "syms": ["IBM"]}))
            assert json.loads(ws.recv(timeout=10)) == {
                "type": "error", "source": "quote", "status": 403, "reason": "not authorized for 'quote': quotes are for alice only"}
            assert subscribe(ws, "trade", ["IBM"])["rows"] == []
            assert gateway.hub.upstream_count == 1  # the refused one never got an upstream
        with connect(gateway.ws_url, additional_headers={"x-user": "alice"}) as ws:
            assert subscribe(ws, "quote", ["IBM"])["type"] == "snapshot"
        refused = httpx.get(f"{gateway.url}/v1/subscribe/quote", params={"syms": "IBM"}, timeout=10)
        assert refused.status_code == 403
        assert refused.json() == {"error": "not authorized for 'quote': quotes are for alice only"}
    assert ("WebSocket", "quote") in asked and ("Request", "quote") in asked


def test_watch_ends_cleanly_on_ctrl_c(settings: Settings, gateway: Server) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tickplant", "watch", "quote", "IBM", "--url", gateway.url],
        env=plant_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the snapshot is out: watch is waiting for updates
    assert gateway.hub.upstream_count == 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert first.startswith("quote IBM: snapshot, 0 rows") and "Traceback" not in err
    assert err.strip().endswith("0 updates")
    wait_until(lambda: gateway.hub.upstream_count == 0, 10, "the watch's subscription to be released")


def test_bars_and_analytics_of_a_real_cep_worker(settings: Settings, catalog: SchemaCatalog, tmp_path: Any) -> None:
    """The derived sources end to end: the CEP engine's closed bars as updates, its analytics view
    as the snapshot (found through the metadata topic)."""
    open_first_day(settings, catalog, ManualClock(T0))
    port = free_port()
    with open(tmp_path / "cep.log", "ab") as log:
        cep = subprocess.Popen(
            [sys.executable, "-m", "tickplant", "cep", "run", "--id", "cep-1", "--port", str(port),
             "--bar-seconds", "1", "--grace-seconds", "0.2"],
            env=plant_env(settings), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    names = TopicNames(settings.topic_prefix)
    try:
        wait_until(lambda: any(n.kind == "cep" for n in read_metadata(settings).values())
                   and len(partition_counts(settings, [names.derived("bars"), names.derived("analytics")])) == 2,
                   60, "the CEP worker", lambda: (tmp_path / "cep.log").read_text()[-2000:])
        second = 1_000_000_000
        trades = [{**trade(0, sym), "time": T0 + k * second // 4, "price": 100.0 + k, "size": 10 + k}
                  for k in range(12) for sym in ("AAPL", "MSFT")]
        with Server(Hub(settings, catalog=catalog)) as gw, connect(gw.ws_url) as ws:
            assert subscribe(ws, "bars", ["AAPL"])["rows"] == []
            with Tickerplant(settings, catalog, mode="zero") as tp:
                tp.publish_rows("trade", trades)
            bars = collect(ws, 2, timeout=60)[:2]
            aapl = [t for t in trades if t["sym"] == "AAPL"]
            for i, bar in enumerate(bars):  # the first two one-second bars, closed, of AAPL only
                ticks = [t for t in aapl if T0 + i * second <= t["time"] < T0 + (i + 1) * second]
                assert (bar["sym"], bar["time"], bar["open"], bar["high"], bar["low"], bar["close"],
                        bar["volume"]) == ("AAPL", T0 + i * second, ticks[0]["price"],
                                           max(t["price"] for t in ticks), min(t["price"] for t in ticks),
                                           ticks[-1]["price"], sum(t["size"] for t in ticks))
            snap = subscribe(ws, "analytics", ["AAPL"])  # from the CEP's view
            assert [r["sym"] for r in snap["rows"]] == ["AAPL"], snap
            assert snap["rows"][0]["time"] == aapl[-1]["time"]
    finally:
        cep.terminate()
        cep.wait(30)


def test_the_engine_live_feed_misses_no_bar_across_a_cep_kill9(
        settings: Settings, catalog: SchemaCatalog, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Analytics and bars come from the CEP workers' live feeds (not the committed topics, a commit
    round trip later). Killed -9 and restarted, with ticks published while it is down and applied
    by the restarted worker before the hub's stream is back (the hub is kept from seeing the worker
    in the metadata meanwhile, as a slow metadata topic would): every bar still reaches the subscriber, right (the catch-up after the
    reconnect), and the last analytics update equals a recomputation of every trade."""
    hidden = threading.Event()
    listed = enginefeed.engine_workers
    monkeypatch.setattr(enginefeed, "engine_workers", lambda *a: {} if hidden.is_set() else listed(*a))
    open_first_day(settings, catalog, ManualClock(T0))
    cep = Cep(settings, "cep-1", tmp_path, "--bar-seconds", "1", "--grace-seconds", "0.2").start()
    second = 1_000_000_000

    def trades(first: int, last: int) -> list[dict[str, Any]]:  # four a second, seconds [first, last)
        return [{**trade(0, sym), "time": T0 + k * second // 4, "price": 100.0 + k % 7, "size": 10 + k}
                for k in range(4 * first, 4 * last) for sym in ("AAPL", "MSFT")]

    def publish(rows: list[dict[str, Any]]) -> None:
        with Tickerplant(settings, catalog, mode="zero") as tp:
            tp.publish_rows("trade", rows)

    bars: dict[int, dict[str, Any]] = {}
    analytics: list[dict[str, Any]] = []

    def read_until(ws: ClientConnection, done: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; bars {sorted(bars)}\n{cep.log_tail()}"
            try:
                message = json.loads(ws.recv(timeout=1))
            except TimeoutError:
                continue
            assert message["type"] == "update", message
            for row in message["rows"]:
                if message["source"] == "bars":
                    assert row["sym"] == "AAPL"
                    key = (row["time"] - T0) // second
                    assert bars.setdefault(key, row) == row, f"bar {key} delivered twice, differently"
                else:
                    analytics.append(row)

    sent = trades(0, 4)
    try:
        wait_until(lambda: cep.status() is not None and any(
            n.kind == "cep" for n in read_metadata(settings).values()), 60, "the CEP worker", cep.log_tail)
        with Server(Hub(settings, catalog=catalog)) as gw, connect(gw.ws_url) as ws:
            assert subscribe(ws, "bars", ["AAPL"])["rows"] == []
            subscribe(ws, "analytics", ["AAPL"])
            assert cep.status()["live"]["listeners"] == 2  # the hub reads the live feed, one stream each
            publish(sent)
            read_until(ws, lambda: {0, 1, 2} <= set(bars), "bars 0-2")
            hidden.set()
            cep.kill9()
            more = trades(4, 8)
            publish(more)  # computed only after the restart, before the hub's stream is back
            sent += more
            cep.start()
            aapl_sent = sum(t["sym"] == "AAPL" for t in sent)
            wait_until(lambda: cep.status() is not None and cep.get("/cep/v1/analytics?syms=AAPL")["analytics"]
                       .get("AAPL", {}).get("trades") == aapl_sent, 60, "the restarted CEP worker to apply "
                       "what was published while it was down", cep.log_tail)
            assert cep.status()["live"]["listeners"] == 0  # so bars 3-6 closed with nobody listening
            hidden.clear()
            wait_until(lambda: cep.status()["live"]["listeners"] == 2, 30, "the hub's streams to reconnect")
            more = trades(8, 11)
            publish(more)
            sent += more
            read_until(ws, lambda: set(range(10)) <= set(bars), "bars 0-9 after the restart")
            aapl = [t for t in sent if t["sym"] == "AAPL"]
            read_until(ws, lambda: bool(analytics) and analytics[-1]["trades"] == len(aapl), "the last analytics")
            for source in ("bars", "analytics"):
                ws.send(json.dumps({"op": "unsubscribe", "source": source}))
            wait_until(lambda: cep.status()["live"]["listeners"] == 0, 10, "the hub to close its live streams")
    finally:
        cep.stop()
    for key in range(10):
        ticks = [t for t in aapl if T0 + key * second <= t["time"] < T0 + (key + 1) * second]
        bar = bars[key]
        assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"], bar["trades"]) == (
            ticks[0]["price"], max(t["price"] for t in ticks), min(t["price"] for t in ticks), ticks[-1]["price"],
            sum(t["size"] for t in ticks), len(ticks)), key
    last = analytics[-1]
    assert (last["time"], last["volume"], last["last_price"]) == (
        aapl[-1]["time"], sum(t["size"] for t in aapl), aapl[-1]["price"])
    assert last["notional"] == pytest.approx(sum(t["size"] * t["price"] for t in aapl))


def test_a_subscription_made_before_the_engine_starts_gets_its_live_feed(
        settings: Settings, catalog: SchemaCatalog, tmp_path: Any) -> None:
    """The analytics source is known as an engine output by its name: subscribed before any CEP
    worker is up, the hub connects to the worker's live feed once it is listed, and the
    updates made before that come as its catch-up."""
    ensure_topics(settings, catalog)
    open_first_day(settings, catalog, ManualClock(T0))
    with Server(Hub(settings, catalog=catalog)) as gw, connect(gw.ws_url) as ws:
        assert subscribe(ws, "analytics", ["AAPL"])["rows"] == []
        cep = Cep(settings, "cep-1", tmp_path).start()
        try:
            with Tickerplant(settings, catalog, mode="zero") as tp:
                tp.publish_rows("trade", [{**trade(k, "AAPL"), "size": 10} for k in range(1, 21)])
            wait_until(lambda: (cep.status() or {}).get("live", {}).get("listeners") == 1, 60,
                       "the hub to connect to the worker's live feed", cep.log_tail)
            rows = collect(ws, 1, timeout=30)
            while rows[-1]["trades"] < 20:
                rows += collect(ws, 1, timeout=30)
        finally:
            cep.stop()
    assert rows[-1]["sym"] == "AAPL" and rows[-1]["volume"] == 200 and rows[-1]["time"] == T0 + 20
