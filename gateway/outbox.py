"""A client connection's outgoing messages (one WebSocket or SSE connection of the Query
Manager): bounded in rows, never blocking the putter, updates of one source merged when
the client falls behind (gateway/subscriptions.py fills it, gateway/streaming.py sends it).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.upstream import Upstream

MERGE_ROWS = 5_000  # at most this many rows in one update message made of several waiting ones
_ROWS = '"rows":['  # update texts are {"type":"update","source":...,"rows":[...]}: rows last
_POSITION = ',"position":'  # an update's position precedes its rows; a merged message keeps the last
Key = tuple[str, tuple[str, ...]]  # (source, sorted syms; () = every sym)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), default=_json_default)


class Outbox:
    """One client connection's outgoing messages: bounded in rows, never blocking the putter."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: deque[tuple[str, int]] = deque()  # (JSON text, rows it carries)
        self.queued_rows = 0
        self.held_rows = 0  # rows held for subscriptions still waiting for their snapshot
        self.closed = False
        self.reason: str | None = None
        self.subs: dict[Key, Subscriber] = {}
        self.sent = 0
        self._wake = asyncio.Event()

    def put(self, text: str, rows: int = 0) -> None:
        """Queue a message; ``rows`` > 0 marks an update (``{"type":"update","source":..,"rows":[..]}``)."""
        if self.closed:
            return
        self.items.append((text, rows))
        self.queued_rows += rows
        self._wake.set()

    async def get(self) -> str | None:
        """The next message to send; None once the outbox is closed and drained.

        Updates of one subscription waiting back to back go out as one message (up to
        ``MERGE_ROWS`` rows): a client that falls behind gets fewer, larger
        messages instead of paying the per-message cost for each; one that keeps
        up gets each update alone, at once."""
        while not self.items:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        text, rows = self.items.popleft()
        self.queued_rows -= rows
        if rows and self.items and self.items[0][1]:
            head = text[:text.index(_ROWS) + len(_ROWS)]
            stem = head.split(_POSITION, 1)[0]  # the subscription's: its position changes each time
            parts = [text[len(head):-2]]
            while self.items and self.items[0][1] and rows + self.items[0][1] <= MERGE_ROWS \
                    and self.items[0][0].startswith(stem):
                more, n = self.items.popleft()
                self.queued_rows -= n
                rows += n
                head = more[:more.index(_ROWS) + len(_ROWS)]
                parts.append(more[len(head):-2])
            if len(parts) > 1:
                text = head + ",".join(parts) + "]}"
        self.sent += 1
        return text

    def close(self, final: str | None = None, reason: str | None = None) -> None:
        """No more messages but ``final``; what was queued is discarded if ``final`` is given."""
        if self.closed:
            return
        if final is not None:
            self.items.clear()
            self.queued_rows = 0
            self.items.append((final, 0))
        self.reason = reason
        self.closed = True
        self._wake.set()


class Subscriber:
    """One subscription of one outbox; ``held`` collects updates until its snapshot is out."""

    __slots__ = ("key", "outbox", "held", "upstream")

    def __init__(self, key: Key, outbox: Outbox, upstream: Upstream):
        self.key = key
        self.outbox = outbox
        self.held: list[tuple[str, int]] | None = []
        self.upstream = upstream
