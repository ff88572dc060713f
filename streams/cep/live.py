"""The engine's live feed: analytics and bars pushed to listeners as they are computed.

kdb+'s real-time engines publish each update to their subscribers the moment
it is computed (``.u.pub``); the durable record comes separately. Ours is the
same split. The derived topics (``rte.analytics``, ``rte.bars``) are the
exactly-once record, committed in Kafka transactions, so a read_committed
reader sees a record only after the commit round trip it waits in (tens of
ms on a busy machine). The live feed is what a screen wants: the gateway's
Query Manager holds one HTTP stream per worker (``GET /cep/v1/live``) and
gets each read's changes as soon as they are in the partition's store.

What a listener gets, and why it is never wrong:

- A line of newline-delimited JSON per batch: ``{"type": "ready", ...}``
  once registered, then ``{"type": "update", "output": "analytics" | "bars",
  "rows": [...]}``, a ``{"type": "heartbeat"}`` every few seconds when
  quiet, and a final ``{"type": "error", "reason": ...}`` if it is dropped.
  Rows are exactly the records of the derived topics (the same dicts the
  Avro encoder gets): for ``analytics`` the latest values of every sym a read
  changed (not conflated: one record per sym per read), for ``bars`` each bar
  closed by the read.
- Pushed after the store write, so every pushed value is durable state: after
  a kill -9 the next owner starts from it and, the engine being
  deterministic, computes the same values again. A listener may see a value
  twice around a restart, never one the committed topics will not carry.
- A listener registered between two reads gets every change of the reads
  after; a snapshot asked for after ``ready`` covers the reads before.
- Never waited for: the reader hands rows to the web loop and goes on; a
  listener more than ``max_queued`` rows behind is dropped with a reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Iterable
from typing import Any

import orjson

log = logging.getLogger("tickplant.cep")

OUTPUTS = ("analytics", "bars")
HEARTBEAT_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 10.0  # a listener whose socket takes no bytes for this long is dropped
DEFAULT_MAX_QUEUED = 200_000


class LiveFeedError(ValueError):
    """A live-feed request the engine cannot take; the message says which parameter and why."""


def _line(message: dict[str, Any]) -> bytes:
    """One NDJSON line (orjson: a tenth of json's time, on the loop of a busy worker; a NaN
    becomes null, as JSON has no NaN)."""
    return orjson.dumps(message) + b"\n"


class Listener:
    """One HTTP stream: what it wants and the rows waiting to be written to it (on the loop)."""

    def __init__(self, output: str, syms: frozenset[str] | None, loop: asyncio.AbstractEventLoop, limit: int):
        self.output = output
        self.syms = syms
        self.loop = loop
        self.limit = limit
        self.rows: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.dropped: str | None = None
        self.closed = False

    def take(self, rows: list[dict[str, Any]]) -> None:
        """On the loop: queue rows (or drop the listener if it is too far behind)."""
        if self.closed or self.dropped:
            return
        self.rows.extend(rows)
        if len(self.rows) > self.limit:
            self.dropped = (f"slow listener: {len(self.rows):,} rows queued, more than the limit of "
                            f"{self.limit:,}; dropped (reconnect and take a snapshot)")
            self.rows = []
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class LiveFeed:
    """The listeners of one worker; ``publish`` is called by the reader thread."""

    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED):
        self.max_queued = max_queued
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        # rows handed over and not yet taken on their listener's loop; a loop is woken (a
        # system call, and the GIL to win back after it) only if no wake-up is pending for it
        self._handed: dict[asyncio.AbstractEventLoop, collections.deque[tuple[Listener, list[dict[str, Any]]]]] = {}
        self._woken: set[asyncio.AbstractEventLoop] = set()
        self.pushed_rows = 0
        self.dropped = 0

    def wants(self, output: str) -> bool:
        """Whether anyone listens to ``output`` (the reader skips the work otherwise)."""
        return any(listener.output == output for listener in self._listeners)

    def listening(self) -> bool:
        return bool(self._listeners)

    def listener_count(self) -> int:
        return len(self._listeners)

    def publish(self, output: str, rows: Iterable[dict[str, Any] | None]) -> None:
        """Hand ``rows`` to every listener of ``output`` that wants their syms. Never blocks."""
        with self._lock:
            listeners = [listener for listener in self._listeners if listener.output == output]
        if not listeners:
            return
        present = [r for r in rows if r is not None]
        for listener in listeners:
            mine = present if listener.syms is None else [r for r in present if r["sym"] in listener.syms]
            if mine:
                loop = listener.loop
                handed = self._handed.get(loop)
                if handed is None:
                    handed = self._handed[loop] = collections.deque()
                handed.append((listener, mine))
                self.pushed_rows += len(mine)
                if loop not in self._woken:
                    self._woken.add(loop)
                    try:
                        loop.call_soon_threadsafe(self._take_handed, loop)
                    except RuntimeError:  # its loop is closed: the worker is stopping
                        self._woken.discard(loop)

    def _take_handed(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: give its listeners what was handed over since it was woken. (The flag
        goes first: rows handed meanwhile are taken now or wake it again, never left.)"""
        self._woken.discard(loop)
        handed = self._handed[loop]
        while handed:
            listener, rows = handed.popleft()
            listener.take(rows)

    def close(self) -> None:
        """End every stream (the worker is stopping)."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.close)
            except RuntimeError:
                pass

    @staticmethod
    def parse(query: Any) -> tuple[str, frozenset[str] | None]:
        """``output`` and ``syms`` of a request's query string."""
        output = query.get("output", "")
        if output not in OUTPUTS:
            raise LiveFeedError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
        syms = frozenset(s for s in query.get("syms", "").split(",") if s) or None
        return output, syms

    async def stream(self, request: Any, output: str, syms: frozenset[str] | None,
                     hello: dict[str, Any]) -> Any:
        """Serve one listener until it goes, is dropped, or the worker stops (aiohttp)."""
        from aiohttp import web

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        listener = Listener(output, syms, asyncio.get_running_loop(), self.max_queued)
        with self._lock:
            self._listeners.append(listener)

        async def write(message: dict[str, Any]) -> None:
            await asyncio.wait_for(response.write(_line(message)), WRITE_TIMEOUT_SECONDS)

        counted = False
        try:
            await write({"type": "ready", "output": output, **hello})
            while not listener.closed:
                try:
                    await asyncio.wait_for(listener.wake.wait(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await write({"type": "heartbeat"})
                    continue
                listener.wake.clear()
                if listener.dropped:
                    break
                rows, listener.rows = listener.rows, []
                if rows:
                    await write({"type": "update", "output": output, "rows": rows})
            if listener.dropped:
                counted = True
                self.dropped += 1
                log.warning("live feed: %s", listener.dropped)
                await write({"type": "error", "reason": listener.dropped})
        except TimeoutError:  # its socket took nothing for WRITE_TIMEOUT_SECONDS
            if not counted:
                self.dropped += 1
                log.warning("live feed: a listener took no bytes for %.0f s; dropped", WRITE_TIMEOUT_SECONDS)
        except ConnectionError:
            pass  # the listener went away
        finally:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return response
