"""The one HTTP client of the plant's processes and tools.

Every synchronous call goes through ``request``: a worker's views (with the plant's
internal secret when ``settings`` is given), a gateway (``gateway.client``), EC2's
instance metadata, a peer database. One pool of kept-alive connections per process
(urllib3's, thread-safe: the gateway asks the same few workers many times a second),
a timeout on every call, and a failure said in one line (``HttpError``: the status, or
None when nothing answered). Reads may be retried when they could not connect at all.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import urllib3

from tickplant import internal
from tickplant.config import Settings

_POOL = urllib3.PoolManager(num_pools=64, maxsize=32, retries=False)
REASON_CHARS = 300  # of an error body, in a one-line message


class HttpError(RuntimeError):
    """A call that failed: ``status`` is the answer's HTTP status, None if nothing answered."""

    def __init__(self, message: str, status: int | None = None, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Response:
    status: int
    data: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.data)

    def reason(self) -> str:
        """What an error answer says: its JSON ``error`` (the plant's own services), else its
        body; on one line, shortened."""
        try:
            said = json.loads(self.data)
            text = str(said.get("error", self.text)) if isinstance(said, dict) else self.text
        except ValueError:
            text = self.text
        return " ".join(text.split())[:REASON_CHARS]


def with_query(url: str, params: Mapping[str, Any] | None) -> str:
    """``url`` with ``params`` as its query (None and empty values left out)."""
    kept = {k: v for k, v in (params or {}).items() if v is not None and v != "" and v != []}
    return f"{url}?{urllib.parse.urlencode(kept)}" if kept else url


def request(method: str, url: str, *, params: Mapping[str, Any] | None = None, body: bytes | None = None,
            json_body: Any = None, headers: Mapping[str, str] | None = None, settings: Settings | None = None,
            timeout: float = 30.0, retries: int = 0, check: bool = True) -> Response:
    """One call. ``settings``: send the plant's internal secret (the workers' views need it).
    ``retries``: how many more times to try when nothing answered (for reads: asking again is
    safe). ``check``: an answer other than 2xx is an ``HttpError``; without it, the caller
    reads the status."""
    sent = dict(headers or {})
    if settings is not None:
        sent.update(internal.headers(settings))
    if json_body is not None:
        body = json.dumps(json_body).encode()
        sent.setdefault("Content-Type", "application/json")
    target = with_query(url, params)
    limits = urllib3.Timeout(connect=min(5.0, timeout), read=timeout)
    for attempt in range(retries + 1):
        try:
            resp = _POOL.request(method, target, body=body, headers=sent, timeout=limits)
            break
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if attempt == retries:
                raise HttpError(f"{method} {url}: no answer ({_one_line(exc)})") from None
            time.sleep(min(1.0, 0.1 * 2 ** attempt))
    answer = Response(resp.status, resp.data, dict(resp.headers))
    if check and not 200 <= answer.status < 300:
        reason = answer.reason()
        raise HttpError(f"{method} {url}: {answer.status} {reason}", answer.status, reason)
    return answer


def get_json(url: str, **kwargs: Any) -> Any:
    """GET ``url`` and its JSON answer (``request``'s options)."""
    return request("GET", url, **kwargs).json()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
