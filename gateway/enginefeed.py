"""The Query Manager's upstream for a real-time engine's outputs: the workers' live feeds.

A subscription to ``analytics`` or ``bars`` wants each update as the engine
computes it, not after the Kafka transaction that makes it durable (see
``streams.cep.live``). So for an engine's output topic (``rte.bars``,
``rte.analytics``, ``rte.<engine>.bars``... by name, so the choice does not
depend on whether a worker has announced itself yet) the hub's upstream
reads the live feeds of the CEP workers the metadata topic lists as writing
it, instead of the topic: one HTTP stream (``GET /cep/v1/live``) per
worker, each sending the changes of the partitions it owns. A partition that moves between workers
is covered by the new owner's stream, which starts from the store the old one
wrote.

No gap, at least once:

- ``started`` is called once a stream to every worker listed is registered
  (its ``ready`` line): the hub takes its snapshot after that, so every change
  is in the snapshot or an update.
- A stream opened later (a worker restarted after kill -9, a new worker
  scaling out, a listener the worker dropped for being slow) may have missed
  changes between its worker's first read and the connection: right after
  its ``ready`` line the worker's own views are read and their rows delivered
  as updates (the latest analytics of its syms; its closed bars since the
  newest one delivered, for ``bars``). Updates are upserts (latest values of a
  sym; a bar keyed by sym and time), so the overlap is harmless.

The workers are re-read from the metadata topic every ``REFRESH_SECONDS``;
a stream that ends is opened again on the next refresh while its worker is
listed.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

from ingest.metadata import read_metadata
from ingest.node_record import CepRecord, NodeRecord
from tickplant import internal
from tickplant.config import Settings

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
CONNECT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 20.0  # a worker sends a heartbeat every 5 s: silence this long means it is gone


_nodes_lock = threading.Lock()
_nodes: dict[tuple[str, str], tuple[float, dict[str, NodeRecord]]] = {}  # (cluster, prefix) -> (read at, nodes)


def _live_nodes(settings: Settings) -> dict[str, NodeRecord]:
    """The metadata topic's live nodes, read at most once every ``REFRESH_SECONDS`` for all the
    upstreams of a process (each read is a consumer of its own: ~10-30 ms of CPU)."""
    key = (settings.bootstrap, settings.topic_prefix)
    with _nodes_lock:
        read_at, nodes = _nodes.get(key, (0.0, {}))
        if time.monotonic() - read_at < REFRESH_SECONDS:
            return nodes
        nodes = read_metadata(settings)
        _nodes[key] = (time.monotonic(), nodes)
        return nodes


def engine_workers(settings: Settings, topic: str) -> dict[str, str]:
    """node id -> URL of the live CEP workers writing ``topic``."""
    return {node_id: node.url for node_id, node in _live_nodes(settings).items()
            if isinstance(node, CepRecord) and node.url and topic in node.outputs.values()}


class EngineFeed:
    """Every worker's live feed of one output for one sym set, merged (see the module docstring)."""

    def __init__(self, settings: Settings, topic: str, output: str, syms: tuple[str, ...],
                 deliver: Callable[[list[dict[str, Any]]], bool], warn: Callable[[list[str]], Any],
                 stop: threading.Event):
        self.settings = settings
        self.headers = internal.headers(settings)  # the CEP views answer only the plant
        self.topic = topic
        self.output = output
        self.syms = syms
        self.deliver = deliver
        self.warn = warn
        self.stop = stop
        self.streams: dict[str, NodeStream] = {}
        self.last_bar: dict[str, int] = {}  # sym -> time of the newest bar delivered (catch-up start)
        self._lock = threading.Lock()

    def run(self, started: Callable[[], Any]) -> None:
        """Hold the streams until ``stop`` is set; ``started`` once the first ones are registered."""
        try:
            self._refresh(catch_up=False)
            for stream in list(self.streams.values()):
                stream.ready.wait(CONNECT_SECONDS)
            started()
            while not self.stop.wait(REFRESH_SECONDS):
                self._refresh(catch_up=True)
        finally:
            for stream in list(self.streams.values()):
                stream.close()
            for stream in list(self.streams.values()):
                stream.join(2.0)

    def _refresh(self, catch_up: bool) -> None:
        try:
            workers = engine_workers(self.settings, self.topic)
        except Exception as exc:  # noqa: BLE001 - the streams held go on; look again next time
            log.warning("live feed of %s: could not read the metadata: %s", self.topic, exc)
            return
        for node_id, url in workers.items():
            stream = self.streams.get(node_id)
            if stream is not None and stream.is_alive() and stream.url == url:
                continue
            if stream is not None:
                stream.close()
            self.streams[node_id] = NodeStream(self, node_id, url, catch_up)
            self.streams[node_id].start()

    def delivered(self, rows: list[dict[str, Any]]) -> bool:
        """Hand rows to the hub (from a stream's thread); remember the newest bar per sym."""
        if self.output == "bars":
            with self._lock:
                for row in rows:
                    if row["time"] > self.last_bar.get(row["sym"], -1):
                        self.last_bar[row["sym"]] = row["time"]
        return self.deliver(rows)

    def catch_up(self, url: str) -> list[dict[str, Any]]:
        """What a worker computed before its stream was registered: its views' rows."""
        query: dict[str, str] = {"syms": ",".join(self.syms)} if self.syms else {}
        if self.output == "bars":
            with self._lock:
                since = dict(self.last_bar)
            if since:
                query["start"] = str(min(since.values()))
        with _get(url, f"/cep/v1/{self.output}", query, CONNECT_SECONDS, self.headers) as resp:
            payload = json.loads(resp.read())
        if self.output == "bars":
            return [{k: v for k, v in bar.items() if k != "is_open"} for bar in payload.get("bars", [])
                    if not bar.get("is_open") and bar["time"] > since.get(bar["sym"], -1)]
        return list(payload.get("analytics", {}).values())


class NodeStream(threading.Thread):
    """One worker's ``/cep/v1/live`` stream, read line by line until it ends or is closed."""

    def __init__(self, feed: EngineFeed, node_id: str, url: str, catch_up: bool):
        super().__init__(name=f"qm-live-{node_id}", daemon=True)
        self.feed = feed
        self.node_id = node_id
        self.url = url
        self.catch_up = catch_up
        self.ready = threading.Event()
        self.closed = False
        self._response: http.client.HTTPResponse | None = None

    def run(self) -> None:
        feed = self.feed
        query = {"output": feed.output, **({"syms": ",".join(feed.syms)} if feed.syms else {})}
        try:
            with _get(self.url, "/cep/v1/live", query, READ_TIMEOUT_SECONDS, feed.headers) as response:
                self._response = response
                for raw in response:
                    if self.closed or feed.stop.is_set():
                        return
                    message = orjson.loads(raw)
                    kind = message.get("type")
                    if kind == "update":
                        if not feed.delivered(message["rows"]):
                            return
                    elif kind == "ready":
                        if self.catch_up and not feed.delivered(feed.catch_up(self.url)):
                            return
                        self.ready.set()
                    elif kind == "error":
                        feed.warn([f"live feed of {self.node_id}: {message.get('reason')}"])
                        return
            if not self.closed:
                log.info("live feed of %s (%s) ended; it is opened again while the worker is listed",
                         self.node_id, self.url)
        except Exception as exc:  # noqa: BLE001 - opened again on the next refresh if still listed
            if not self.closed and not feed.stop.is_set():
                log.warning("live feed of %s (%s): %s: %s", self.node_id, self.url, type(exc).__name__, exc)
        finally:
            self.ready.set()

    def close(self) -> None:
        """Unblock the reading thread now (its socket shut down under it)."""
        self.closed = True
        response = self._response
        sock = getattr(getattr(response, "fp", None), "raw", None)
        sock = getattr(sock, "_sock", None)
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _get:
    """GET ``url + path?query`` as a context manager giving the response (an error if not 200)."""

    def __init__(self, url: str, path: str, query: dict[str, str], timeout: float, headers: dict[str, str]):
        parts = urllib.parse.urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"engine url {url!r} has no host")
        self.headers = headers
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.target = f"{parts.path.rstrip('/')}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def __enter__(self) -> http.client.HTTPResponse:
        self.conn.request("GET", self.target, headers=self.headers)
        response = self.conn.getresponse()
        if response.status != 200:
            body = response.read()[:300].decode(errors="replace")
            self.conn.close()
            raise RuntimeError(f"GET {self.target}: {response.status} {body}")
        return response

    def __exit__(self, *_: Any) -> None:
        self.conn.close()
