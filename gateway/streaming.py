"""The Query Manager's routes: streaming subscriptions over WebSocket and Server-Sent Events.

``make_router(hub, authorize=None)`` gives the gateway app an APIRouter with

- ``WS /v1/ws``: the client sends ``{"op": "subscribe", "source": "trade",
  "syms": ["AAPL"]}`` or ``{"op": "unsubscribe", "source": ..., "syms": ...}``
  (``syms`` absent: every sym for subscribe; every subscription of that source
  for unsubscribe; ``"resume": {"0": 17}``, a position it was sent, for every row
  after it instead of a snapshot), as many as it likes on one connection; the server sends
  the hub's messages (snapshot, update, resumed, unsubscribed, error, warning;
  see ``gateway.subscriptions``); a refused subscription's error carries the
  HTTP status the SSE route would answer (``"status": 403``). A bad request gets an error message and the
  connection stays; a slow client gets its final error and the connection is
  closed (code 1013, "try again later").
- ``GET /v1/subscribe/{source}?syms=A,B[&resume=0:17,3:5]``: ``text/event-stream``, one event per
  message, the event name being the message's type; before the stream starts,
  an unknown source (or its missing topic) is a 404, bad syms a 400, a broker
  failure a 503 (``{"error": ...}``). A dropped slow client gets its error
  event, then the stream ends. An event with a position has it as its ``id``
  (``0:17,3:5``), so a browser's EventSource, reconnecting with
  ``Last-Event-ID``, resumes where it was (``resume`` given wins).

``authorize(request_or_websocket, source)`` (optional, may be a coroutine) is
called before every subscription; raising refuses it (the exception's text,
or an HTTPException's detail, is the reason; HTTP status 403 unless it is an
HTTPException with its own).

Rows are JSON with ``time`` (and every Avro long) as int ns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.auth import Unauthorized
from gateway.outbox import Outbox, dumps
from gateway.sql import Forbidden
from gateway.subscriptions import Hub
from gateway.upstream import SourceError, UpstreamError

log = logging.getLogger(__name__)

Authorize = Callable[[Any, str], Awaitable[None] | None]

SSE_KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing the stream
CLOSE_SLOW = 1013  # WebSocket "try again later"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc) or type(exc).__name__


async def _authorized(authorize: Authorize | None, who: Any, source: str) -> None:
    if authorize is not None:
        result = authorize(who, source)
        if inspect.isawaitable(result):
            await result


def _error(reason: str, **extra: Any) -> str:
    return dumps({"type": "error", "reason": reason, **extra})


def _refusal_status(exc: BaseException) -> int:
    """The HTTP status of a refused subscription, the same on both routes."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, UpstreamError):
        return 503
    if isinstance(exc, SourceError):
        text = str(exc)
        return 404 if text.startswith("unknown source") or text.endswith("does not exist") else 400
    return 403


_POSITION = '"position":{'


def _message_type(text: str) -> str:
    """The ``type`` of a hub message, which ``dumps`` always writes first: no re-parse."""
    if text.startswith('{"type":"'):
        end = text.find('"', 9)
        if end > 0:
            return text[9:end]
    return "message"


class _Connection:
    """One WebSocket: requests in, the outbox out, each in its own task."""

    def __init__(self, hub: Hub, ws: WebSocket, authorize: Authorize | None):
        self.hub = hub
        self.ws = ws
        self.authorize = authorize
        self.outbox: Outbox = hub.connect()
        self.pending: set[asyncio.Task] = set()

    async def run(self) -> None:
        sender = asyncio.create_task(self._send())
        receiver = asyncio.create_task(self._receive())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.disconnect(self.outbox)  # released at once, whichever side ended
            for task in (receiver, *self.pending):
                task.cancel()
            if not sender.done():
                # a disconnect: nothing more can be sent
                sender.cancel()
            for task in (sender, receiver, *self.pending):
                with contextlib.suppress(BaseException):
                    await task

    async def _send(self) -> None:
        while True:
            text = await self.outbox.get()
            if text is None:
                break
            await self.ws.send_text(text)
        if self.outbox.reason and self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code=CLOSE_SLOW, reason=self.outbox.reason[:120])

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None and message.get("bytes") is not None:
                text = message["bytes"].decode("utf-8", errors="replace")
            self._handle(text or "")

    def _handle(self, text: str) -> None:
        try:
            request = json.loads(text)
        except ValueError as exc:
            self.outbox.put(_error(f"bad JSON ({exc}): {text[:200]!r}; send "
                                   '{"op": "subscribe", "source": "trade", "syms": ["AAPL"]}'))
            return
        if not isinstance(request, dict) or request.get("op") not in ("subscribe", "unsubscribe"):
            op = request.get("op") if isinstance(request, dict) else None
            self.outbox.put(_error(f"unknown op {op!r}: expected 'subscribe' or 'unsubscribe' in "
                                   f"{text[:200]!r}"))
            return
        source = request.get("source")
        if not isinstance(source, str) or not source:
            self.outbox.put(_error(f"{request['op']}: 'source' (a source name) is missing in {text[:200]!r}"))
            return
        if request["op"] == "unsubscribe":
            try:
                self.hub.unsubscribe(self.outbox, source, request.get("syms"))
            except SourceError as exc:
                self.outbox.put(_error(str(exc), source=source))
            return
        task = asyncio.create_task(self._subscribe(source, request.get("syms"), request.get("resume")))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _subscribe(self, source: str, syms: Any, resume: Any) -> None:
        try:
            await _authorized(self.authorize, self.ws, source)
        except Exception as exc:
            self.outbox.put(_error(f"not authorized for {source!r}: {_reason(exc)}", source=source,
                                   status=_refusal_status(exc)))
            return
        try:
            await self.hub.subscribe(self.outbox, source, syms, resume)
        except (SourceError, UpstreamError) as exc:
            self.outbox.put(_error(str(exc), source=source, status=_refusal_status(exc)))
        except Exception as exc:  # anything else: said, not swallowed
            log.exception("subscribe %s %s", source, syms)
            self.outbox.put(_error(f"subscribe failed: {type(exc).__name__}: {exc}", source=source))


async def _events(outbox: Outbox) -> AsyncIterator[str]:
    while True:
        try:
            text = await asyncio.wait_for(outbox.get(), SSE_KEEPALIVE)
        except TimeoutError:
            yield ": keepalive\n\n"
            continue
        if text is None:
            return
        event_id = _event_id(text)
        yield f"event: {_message_type(text)}\n{event_id}data: {text}\n\n"


def _event_id(text: str) -> str:
    """``id: 0:17,3:5\n`` from a message's position, found without a parse: it precedes the
    rows, and the only text before it is the source's and syms' (quoted) names."""
    at = text.find(_POSITION)
    if at < 0:
        return ""
    end = text.find("}", at)
    return "id: " + text[at + len(_POSITION):end].replace('"', "") + "\n"


class _EventStream(StreamingResponse):
    """The SSE response: however it ends (the client went and the stream was cancelled, the
    client was dropped, even before the first event), the subscription is released."""

    def __init__(self, hub: Hub, outbox: Outbox):
        super().__init__(_events(outbox), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.hub = hub
        self.outbox = outbox

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.disconnect(self.outbox)


def make_router(hub: Hub, authorize: Authorize | None = None,
                inspect: Callable[[Request], None] | None = None) -> APIRouter:
    """The streaming routes over ``hub``; ``authorize(request_or_ws, source)`` raises to refuse
    a subscription, ``inspect(request)`` to refuse a look at every client's (401 or 403)."""
    router = APIRouter(tags=["streaming"])

    @router.websocket("/v1/ws")
    async def websocket_subscriptions(ws: WebSocket) -> None:
        await ws.accept()
        await _Connection(hub, ws, authorize).run()

    @router.get(
        "/v1/subscribe/{source}",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "a snapshot, then updates"}},
    )
    async def subscribe_events(source: str, request: Request, syms: str = "", resume: str = "") -> Any:
        """Server-Sent Events: the snapshot of ``syms`` (comma-separated; none: all), then updates;
        ``resume`` (``partition:offset,...``, a position sent earlier): every row after it instead."""
        try:
            await _authorized(authorize, request, source)
        except HTTPException:
            raise
        except Exception as exc:
            return JSONResponse({"error": f"not authorized for {source!r}: {_reason(exc)}"}, status_code=403)
        outbox = hub.connect()
        try:
            await hub.subscribe(outbox, source, syms, resume or request.headers.get("last-event-id") or None)
        except (SourceError, UpstreamError) as exc:
            hub.disconnect(outbox)
            return JSONResponse({"error": str(exc)}, status_code=_refusal_status(exc))
        except BaseException:
            hub.disconnect(outbox)
            raise
        return _EventStream(hub, outbox)

    @router.get("/v1/subscriptions")
    async def subscriptions(request: Request) -> Any:
        """What the hub holds: clients, upstreams and their subscribers, clients dropped."""
        if inspect is not None:
            try:
                inspect(request)
            except (Unauthorized, Forbidden) as exc:
                return JSONResponse({"error": str(exc)}, status_code=401 if isinstance(exc, Unauthorized) else 403)
        return hub.stats()

    return router


def standalone_app(hub: Hub, authorize: Authorize | None = None) -> Any:
    """A FastAPI app with only the streaming routes (tests, the benchmark); the hub is closed
    at shutdown. The gateway's own app includes ``make_router`` instead."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.aclose()

    app = FastAPI(title="tickplant streaming", lifespan=lifespan)
    app.include_router(make_router(hub, authorize))
    return app
