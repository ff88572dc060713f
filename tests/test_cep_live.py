"""The engine's live feed (streams/cep/live.py) on a real aiohttp server: filtering by sym, a
listener that stops reading is dropped while the others get every row, in order."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from typing import Any

import pytest
from aiohttp import web
from procs import wait_until

from streams.cep import live
from streams.cep.live import LiveFeed, LiveFeedError
from tickplant.kafka.broker import free_port


class FeedServer:
    """A LiveFeed served by aiohttp (as the worker's Faust web does) on its own loop and thread."""

    def __init__(self, feed: LiveFeed):
        self.feed = feed
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.listening = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: web.Request) -> Any:
        try:
            output, syms = self.feed.parse(request.query)
        except LiveFeedError as exc:
            return web.Response(status=400, text=str(exc))
        return await self.feed.stream(request, output, syms, {"node": "test"})

    def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/live", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.listening.set()
        self.loop.run_forever()

    def __enter__(self) -> FeedServer:
        self.thread.start()
        assert self.listening.wait(10), "the feed server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.feed.close()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def read_stream(port: int, query: str, out: list[dict[str, Any]], ended: threading.Event) -> None:
    """A listener that reads every line: messages appended to ``out``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/live?{query}")
    response = conn.getresponse()
    try:
        for line in response:
            out.append(json.loads(line))
    except OSError:
        pass
    finally:
        ended.set()
        conn.close()


def test_bad_requests_name_the_parameter() -> None:
    with pytest.raises(LiveFeedError, match="output='quotes'"):
        LiveFeed.parse({"output": "quotes"})
    assert LiveFeed.parse({"output": "bars", "syms": "A,,B"}) == ("bars", frozenset({"A", "B"}))
    assert LiveFeed.parse({"output": "analytics"}) == ("analytics", None)


def test_a_listener_that_stops_reading_is_dropped_and_the_others_get_every_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "WRITE_TIMEOUT_SECONDS", 2.0)
    feed = LiveFeed(max_queued=5_000)
    with FeedServer(feed) as server:
        everything: list[dict[str, Any]] = []
        some: list[dict[str, Any]] = []
        ends = [threading.Event(), threading.Event()]
        readers = [threading.Thread(target=read_stream, args=(server.port, q, out, end), daemon=True)
                   for q, out, end in (("output=analytics", everything, ends[0]),
                                       ("output=analytics&syms=S1,S2", some, ends[1]))]
        for reader in readers:
            reader.start()
        stuck = socket.socket()  # sends its request, then never reads a byte
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", server.port))
        stuck.sendall(b"GET /live?output=analytics HTTP/1.1\r\nHost: feed\r\n\r\n")
        bars = threading.Event()
        bars_seen: list[dict[str, Any]] = []
        threading.Thread(target=read_stream, args=(server.port, "output=bars", bars_seen, bars), daemon=True).start()
        wait_until(lambda: feed.listener_count() == 4, 10, "four listeners")
        pad = "x" * 500
        sent = [{"time": i, "sym": f"S{i % 10}", "pad": pad} for i in range(40_000)]
        for start in range(0, len(sent), 200):
            feed.publish("analytics", sent[start:start + 200])
            time.sleep(0.005)
        wait_until(lambda: feed.dropped == 1 and feed.listener_count() == 3, 30,
                   "the stuck listener to be dropped", lambda: f"dropped {feed.dropped}, {feed.listener_count()}")
        wait_until(lambda: sum(len(m.get("rows", [])) for m in everything) == len(sent), 30, "every row")
        stuck.close()
    for end in ends:
        assert end.wait(10)  # the streams end when the feed closes
    assert everything[0]["type"] == "ready" and some[0]["type"] == "ready"
    got = [r["time"] for m in everything if m["type"] == "update" for r in m["rows"]]
    assert got == list(range(len(sent)))
    mine = [r["time"] for m in some if m["type"] == "update" for r in m["rows"]]
    assert mine == [r["time"] for r in sent if r["sym"] in ("S1", "S2")]
    assert [m["type"] for m in bars_seen] == ["ready"]  # nothing was published to bars
