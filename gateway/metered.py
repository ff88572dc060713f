"""The gateway's metrics: every HTTP request counted by route, status and user and timed to
the end of its answer, ``GET /metrics``, and the figures read at scrape time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from tickplant import metrics
from tickplant.metrics import PREFIX, Sample

ANONYMOUS = "-"  # not authenticated (refused, or a route without users: health, metrics)
OTHER_ROUTE = "other"  # no route matched: one label for every 404, not one per path tried


def metered(app: Any) -> Any:
    """ASGI middleware: ``tickplant_gateway_requests_total{route, status, user}`` and
    ``tickplant_gateway_request_seconds{route}``. The route is the matched path template
    (``/v1/subscribe/{source}``), the user whoever ``user_of`` authenticated."""
    async def counted(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        state = scope.setdefault("state", {})
        status = {"code": 500}  # what an exception escaping the app becomes
        started = time.perf_counter()

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or OTHER_ROUTE
            user = state.get("user", ANONYMOUS) if isinstance(state, dict) else ANONYMOUS
            metrics.GATEWAY_REQUESTS.labels(route, str(status["code"]), user).inc()
            metrics.GATEWAY_SECONDS.labels(route).observe(time.perf_counter() - started)

    return counted


def note_user(request: Any, name: str) -> None:
    """Remember who the request is from, for its ``user`` label."""
    try:
        request.state.user = name
    except AttributeError:  # not a Starlette request (a test's stand-in)
        pass


def add_metrics_route(app: FastAPI) -> None:
    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus's scrape: open to every caller (figures, never rows)."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def gateway_samples(gw: Any) -> list[Sample]:
    """Live subscribers (clients of the subscription hub), queries running, routing's view."""
    hub = getattr(gw, "hub", None)
    samples: list[Sample] = [
        (f"{PREFIX}live_subscribers", {"role": "gateway"}, len(hub.outboxes) if hub is not None else 0),
        (f"{PREFIX}queries_inflight", {"role": "gateway"}, sum(gw.running._running.values())),
    ]
    return samples
