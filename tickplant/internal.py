"""The plant's own calls between its processes: RDB and CEP views answer only these.

The RDB and CEP workers' HTTP views serve every row of what they hold, hidden
columns and other users' rows included: entitlements are the gateway's job.
So on a network they must answer the gateway, their peers and the plant's own
tools only. Each of those sends the plant's shared secret in one header
(``X-Tickplant-Internal``), and the workers refuse any request without it
(401), whoever can reach their port. ``GET /metrics`` is the exception: it
holds counts and timings, no rows, and Prometheus scrapes it without the secret.

The secret is the ``internal_secret`` setting (``TICKPLANT_INTERNAL_SECRET``):
set the same value on every host of a plant. Unset, it is made once per data
directory (``<data_dir>/internal.secret``, readable by its owner only) and
read by every process started with that data directory: one host's plant
(``tickplant up``, the tests) needs no setting.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from tickplant.config import Settings

HEADER = "X-Tickplant-Internal"
FILE = "internal.secret"
# the one view open to every caller: Prometheus's scrape (figures, never rows)
METRICS_PATH = "/metrics"


def secret(settings: Settings) -> str:
    """The plant's shared secret: the setting, else this data directory's (made if missing)."""
    if settings.internal_secret:
        return settings.internal_secret
    path = Path(settings.data_dir) / FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    made = path.with_name(f".{FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32))
    try:
        os.link(made, path)  # fails if another process made it first: then theirs is the secret
    except FileExistsError:
        pass
    finally:
        made.unlink()
    return path.read_text().strip()


def headers(settings: Settings) -> dict[str, str]:
    """The header a plant process sends with each call to another's views."""
    return {HEADER: secret(settings)}


def is_internal(sent: str | None, expected: str) -> bool:
    """Whether a request's header carries the secret (compared in constant time)."""
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


def aiohttp_middleware(settings: Settings) -> Any:
    """An aiohttp middleware refusing (401) every request without the plant's secret."""
    from aiohttp import web

    expected = secret(settings)

    @web.middleware
    async def internal_only(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != METRICS_PATH and not is_internal(request.headers.get(HEADER), expected):
            return web.json_response(
                {"error": f"this is a plant-internal view: send the plant's secret in {HEADER} "
                          "(users query the gateway)"}, status=401)
        return await handler(request)

    return internal_only
