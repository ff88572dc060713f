"""API Gateway HTTP API events (payload format 2.0) through an ASGI app, and back.

A Lambda function behind an HTTP API gets each request as one JSON event and
answers with one JSON object (statusCode, headers, cookies, body,
isBase64Encoded). Running the gateway's own FastAPI app on that event, rather
than a second set of routes, keeps every check, status and one-line error the
same as the gateway's over HTTP. The app runs once per event on a fresh event
loop; its answer is collected whole (Lambda returns one payload), so a body over
Lambda's response limit is refused with a 413 saying so, never cut.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Lambda's synchronous response payload limit (6 MB), for the whole JSON answer
RESPONSE_LIMIT = 6 * 1024 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


class EventError(ValueError):
    """The event is not an HTTP API payload 2.0 request; the message says what is wrong."""


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def scope_of(event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and request body of an HTTP API (payload 2.0) event."""
    if not isinstance(event, dict) or event.get("version") != "2.0":
        got = event.get("version") if isinstance(event, dict) else type(event).__name__
        raise EventError(f"not an HTTP API payload 2.0 event (version {got!r}); configure the integration "
                         "with PayloadFormatVersion 2.0")
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    method = http.get("method")
    if not method:
        raise EventError("the event has no requestContext.http.method")
    raw_path = event.get("rawPath") or http.get("path") or "/"
    stage = context.get("stage") or "$default"
    if stage != "$default" and (raw_path == f"/{stage}" or raw_path.startswith(f"/{stage}/")):
        raw_path = raw_path[len(stage) + 1:] or "/"  # a named stage is a prefix of the path
    headers = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1"))
               for k, v in (event.get("headers") or {}).items()]
    if event.get("cookies"):
        headers.append((b"cookie", "; ".join(event["cookies"]).encode("latin-1")))
    body = event.get("body") or ""
    try:
        data = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode()
    except ValueError as exc:
        raise EventError(f"the event's body is marked base64 but is not: {exc}") from None
    source = http.get("sourceIp") or "0.0.0.0"
    host = (event.get("headers") or {}).get("host") or context.get("domainName") or "lambda"
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": method.upper(), "scheme": "https", "path": urllib.parse.unquote(raw_path),
        "raw_path": raw_path.encode(), "query_string": (event.get("rawQueryString") or "").encode(),
        "root_path": "", "headers": headers, "client": (source, 0), "server": (host, 443),
    }
    return scope, data


def call(app: Any, scope: dict[str, Any], body: bytes) -> HttpAnswer:
    """Run ``app`` on one request; its whole answer."""
    answer = HttpAnswer(500)
    chunks: list[bytes] = []

    async def run() -> None:
        sent = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if not sent.is_set():
                sent.set()
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never goes away mid-answer
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                answer.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await app(scope, receive, send)
        except Exception:  # noqa: BLE001 - Starlette sends its 500 first, then raises for servers to log
            log.exception("the app failed on %s %s", scope["method"], scope["path"])
            if not chunks:
                answer.status, answer.headers = 500, [("content-type", "application/json")]
                chunks.append(json.dumps({"error": "internal error; the function's log has the details"}).encode())

    asyncio.run(run())
    answer.body = b"".join(chunks)
    return answer


def response_of(answer: HttpAnswer) -> dict[str, Any]:
    """The HTTP API's response object: text types as text, anything else (Arrow) in base64;
    over Lambda's response limit, a 413 saying so."""
    headers: dict[str, str] = {}
    cookies = []
    for name, value in answer.headers:
        if name.lower() == "set-cookie":
            cookies.append(value)
        elif name.lower() != "content-length":
            headers[name.lower()] = f"{headers[name.lower()]}, {value}" if name.lower() in headers else value
    kind = headers.get("content-type", "")
    text = kind.startswith(_TEXT_TYPES)
    body = answer.body.decode("utf-8") if text else base64.b64encode(answer.body).decode("ascii")
    out: dict[str, Any] = {"statusCode": answer.status, "headers": headers, "body": body,
                           "isBase64Encoded": not text}
    if cookies:
        out["cookies"] = cookies
    size = len(json.dumps(out))
    if size > RESPONSE_LIMIT:
        return error_response(413, f"the answer is {size:,} bytes, more than Lambda's response limit of "
                                   f"{RESPONSE_LIMIT:,}; narrow the query, add a LIMIT, or ask the plant's gateway")
    return out


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A refusal in the gateway's shape: one line of ``{"error": ...}``."""
    return {"statusCode": status, "headers": {"content-type": "application/json", **(headers or {})},
            "body": json.dumps({"error": message}), "isBase64Encoded": False}
