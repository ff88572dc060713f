"""What the gateway admits: a bounded number of running queries per user (the next refused
at once, never queued), and request bodies within a size (refused before being read whole)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.responses import JSONResponse

from gateway.failures import QueryFailed


class RunningQueries:
    """Queries each user has running: past ``per_user`` at once, the next is refused (429)
    at once rather than queued, so one user's flood never delays another's query. Without
    a users file every caller is the one anonymous user of a local plant: not limited."""

    def __init__(self, per_user: int):
        self.per_user = per_user
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, user: str, limited: bool = True) -> Iterator[None]:
        with self._lock:
            running = self._running.get(user, 0)
            if limited and running >= self.per_user:
                raise QueryFailed(429, f"user {user!r} has {running} queries running, the most one user may "
                                       f"(gateway_user_queries); retry when one has finished")
            self._running[user] = running + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[user] -= 1
                if not self._running[user]:
                    del self._running[user]


def limit_body(app: Any, max_bytes: int) -> Any:
    """ASGI middleware: a request body past ``max_bytes`` is refused (413), by its
    Content-Length before it is read, or as it streams in (read no further); a body within
    it is handed on whole."""
    async def limited(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = JSONResponse({"error": f"the request body is larger than {max_bytes:,} bytes"}, status_code=413)
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return await too_big(scope, receive, send)
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
            if sum(map(len, body)) > max_bytes:
                return await too_big(scope, receive, send)
        whole: list[dict] = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replay() -> dict:
            return whole.pop() if whole else await receive()

        return await app(scope, replay, send)

    return limited
