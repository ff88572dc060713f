"""``Client.subscribe``: kdb+'s ``.u.sub`` from Python, over the gateway's WebSocket.

    with gw.subscribe("trade", ["AAPL", "MSFT"]) as sub:
        for batch in sub:                # the snapshot first, then each update as it comes
            upd(batch.source, batch.to_pandas())

A kdb+ subscriber's ``upd[t; x]`` is called with a small table per publish,
so each item is a ``Batch``: the source, ``kind`` ("snapshot": the latest row
per sym; "update": rows in log order), the rows as dicts (``time`` as int ns,
as on the wire) and ``to_pandas()`` / ``to_arrow()`` for a frame.

The connection is not the subscription. Every update carries the log position
it brings the subscriber to; when the connection drops (the gateway died or
restarted, a proxy cut it, the gateway dropped this client as too slow) the
subscription reconnects, to the same gateway or the next of the client's list,
and resumes from the last position it handed over: every row arrives once, none
is missed, and no second snapshot comes. The engine's live feeds (``bars``,
``analytics``) have no log position; they re-subscribe and yield a fresh
snapshot (upserts by sym, as their updates are). A refusal (no grant, unknown
source, bad syms, a position the log no longer holds) raises ``GatewayError``
with the gateway's status; so does reaching no gateway within
``reconnect_timeout``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from gateway.client import GatewayError

log = logging.getLogger(__name__)

RETRY_PAUSE = 0.25  # after a round of every gateway failed, before the next round
REPLY_TIMEOUT = 30.0  # a subscription's first answer (a snapshot asks the RDB)


@dataclass(frozen=True)
class Batch:
    """What one ``upd`` would get: some rows of one source."""

    kind: str  # "snapshot" or "update"
    source: str
    rows: list[dict[str, Any]]
    position: dict[int, int] | None = field(default=None, compare=False)  # the log position after it

    def __len__(self) -> int:
        return len(self.rows)

    def to_arrow(self) -> pa.Table:
        """The rows as an Arrow table, ``time`` as a UTC timestamp."""
        table = pa.Table.from_pylist(self.rows)
        if "time" in table.column_names and pa.types.is_integer(table.schema.field("time").type):
            index = table.column_names.index("time")
            table = table.set_column(index, "time", table.column("time").cast(pa.timestamp("ns", tz="UTC")))
        return table

    def to_pandas(self) -> Any:
        return self.to_arrow().to_pandas()


class LiveSubscription:
    """An iterator of ``Batch`` that survives its connections; see the module docstring."""

    def __init__(self, urls: Sequence[str], headers: dict[str, str], source: str,
                 syms: Sequence[str] | None = None, resume: dict[int, int] | None = None,
                 reconnect_timeout: float = 60.0, open_timeout: float = 10.0,
                 connect_timeout: float | None = None):
        """``connect_timeout``: how long the first connection is tried (default
        ``reconnect_timeout``, the patience of every later one)."""
        if isinstance(syms, str):
            syms = [syms]
        self.urls = list(urls)
        self.url = self.urls[0]
        self.headers = headers
        self.source = source
        self.syms = sorted(set(syms)) if syms else []
        self.reconnect_timeout = reconnect_timeout
        self.open_timeout = open_timeout
        self.position: dict[int, int] | None = dict(resume) if resume else None  # where the rows so far end
        self.reconnects = 0
        self.warnings: list[str] = []
        self._ws: ClientConnection | None = None
        self._ready: list[Batch] = []
        self._closed = False
        self._connect(first=True, timeout=reconnect_timeout if connect_timeout is None else connect_timeout)

    # -- connecting ------------------------------------------------------------------------------

    def _request(self) -> str:
        request: dict[str, Any] = {"op": "subscribe", "source": self.source, "syms": self.syms}
        if self.position is not None:
            request["resume"] = {str(p): o for p, o in self.position.items()}
        return json.dumps(request)

    def _connect(self, first: bool = False, timeout: float | None = None) -> None:
        """Subscribe (or resume) through the first gateway that takes it, in turn from the one
        that served last, until ``timeout`` (default ``reconnect_timeout``) passes."""
        timeout = self.reconnect_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        failure = ""
        while not self._closed:
            start = self.urls.index(self.url)
            for url in self.urls[start:] + self.urls[:start]:
                try:
                    self._subscribe_at(url)
                    if not first:
                        self.reconnects += 1
                        log.info("subscription to %s resumed at %s", self.source, url)
                    return
                except _Unavailable as exc:
                    failure = str(exc)
                if self._closed:
                    return
            if time.monotonic() > deadline:
                raise GatewayError(503, f"no gateway of {', '.join(self.urls)} took the subscription to "
                                             f"{self.source!r} within {timeout:g} s; last: {failure}")
            time.sleep(RETRY_PAUSE)

    def _subscribe_at(self, url: str) -> None:
        try:
            # entered by hand: this connection outlives any one block (websockets 17 warns
            # about a bare connect(); entering works the same on older versions)
            ws = connect(ws_url(url), additional_headers=self.headers, open_timeout=self.open_timeout,
                         max_size=None).__enter__()
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise GatewayError(status, f"gateway at {url} refused the connection") from None
            raise _Unavailable(f"gateway at {url} answered {status}") from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            # ConnectionClosed: a dying gateway's listener can still take the TCP connection
            # and then drop it while the handshake is being sent
            raise _Unavailable(f"gateway at {url} unreachable: {exc}") from None
        try:
            ws.send(self._request())
            reply = self._first_reply(ws, url)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            ws.close()
            raise _Unavailable(f"gateway at {url} went: {exc}") from None
        except BaseException:
            ws.close()
            raise
        if self._ws is not None:
            self._ws.close()
        self._ws, self.url = ws, url
        if self._closed:  # closed from another thread while this connection was being made
            ws.close()
        if reply is not None:
            self._ready.append(reply)

    def _first_reply(self, ws: ClientConnection, url: str) -> Batch | None:
        """The snapshot (or, resuming, None once the gateway said so); updates of this
        subscription cannot come before it."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            message = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            kind = message.get("type")
            if kind == "error":
                status = int(message.get("status", 400))
                if status in (502, 503, 504):
                    raise _Unavailable(f"gateway at {url}: {message.get('reason')}")
                raise GatewayError(status, str(message.get("reason")))
            if kind == "warning":
                self._warn(message)
            elif kind == "resumed":
                return None
            elif kind == "snapshot":
                if message.get("warning"):
                    self._warn({"reason": message["warning"]})
                position = _position(message)
                if position is not None:
                    self.position = position
                return Batch("snapshot", message.get("source", self.source), message.get("rows", []), position)

    def _warn(self, message: dict[str, Any]) -> None:
        reason = str(message.get("reason"))
        self.warnings.append(reason)
        log.warning("subscription to %s: %s", self.source, reason)

    # -- iterating --------------------------------------------------------------------------------

    def next(self, timeout: float | None = None) -> Batch | None:
        """The next batch; None if ``timeout`` seconds pass without one. Reconnects as needed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready:
                return self._ready.pop(0)
            if self._closed or self._ws is None:
                raise StopIteration
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                text = self._ws.recv(timeout=wait)
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                if self._closed:
                    raise StopIteration from None
                log.warning("subscription to %s: connection to %s closed (%s); reconnecting",
                            self.source, self.url, exc)
                self._reconnect()
                continue
            batch = self._batch(json.loads(text))
            if batch is not None:
                return batch

    def _batch(self, message: dict[str, Any]) -> Batch | None:
        kind = message.get("type")
        if kind == "update":
            position = _position(message)
            if position is not None:
                self.position = position
            return Batch("update", message.get("source", self.source), message.get("rows", []), position)
        if kind == "warning":
            self._warn(message)
        elif kind == "error":  # dropped as too slow, or the upstream failed: resume elsewhere or here
            log.warning("subscription to %s: %s; reconnecting", self.source, message.get("reason"))
            self._reconnect()
        return None

    def _reconnect(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        self._connect()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = self.next()
        assert batch is not None  # no timeout: a batch, or StopIteration
        return batch

    def close(self) -> None:
        """Ends the subscription: iteration stops, the gateway releases it at once."""
        self._closed = True
        if self._ws is not None:
            self._ws.close()

    def __enter__(self) -> LiveSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ws_url(url: str) -> str:
    """The WebSocket address of a gateway's base URL (http -> ws, https -> wss)."""
    base = url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + "/v1/ws"
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + "/v1/ws"
    if base.startswith(("ws://", "wss://")):
        return base if base.endswith("/v1/ws") else base + "/v1/ws"
    return f"ws://{base}/v1/ws"


class _Unavailable(Exception):
    """This gateway cannot serve the subscription now; another (or a later try) may."""


def _position(message: dict[str, Any]) -> dict[int, int] | None:
    position = message.get("position")
    return {int(p): int(o) for p, o in position.items()} if isinstance(position, dict) else None
