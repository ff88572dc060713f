"""A small synchronous client for an RDB worker's HTTP views (the gateway, the CLI, tests).

Connections are kept alive and shared by every client of the process (urllib3's
pool is thread-safe): the gateway asks the same few workers many times a second.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pyarrow as pa
import urllib3

from tickplant import internal
from tickplant.config import Settings

MISDIRECTED = 421  # a worker's answer for partitions it does not hold (any more)
_HTTP = urllib3.PoolManager(num_pools=64, maxsize=32, retries=False)


class RdbClientError(RuntimeError):
    """The worker refused the request or could not be reached; the message says which.

    ``status`` is the HTTP status, or None when the worker did not answer at all.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RdbClient:
    """One worker's views. ``settings`` gives the plant's secret, which the views require
    (tickplant/internal.py): the client of any plant process or tool passes its own."""

    def __init__(self, url: str, timeout: float = 30.0, settings: Settings | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = internal.headers(settings) if settings is not None else {}

    def _get(self, path: str, params: dict[str, Any], body: bytes | None = None) -> bytes:
        """GET ``path`` (POST when there is a ``body``)."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "", [])})
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        try:
            resp = _HTTP.request("GET" if body is None else "POST", url, body=body,
                                 headers=self.headers if body is None else
                                 {**self.headers, "Content-Type": "application/json"},
                                 timeout=urllib3.Timeout(connect=min(5.0, self.timeout), read=self.timeout))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RdbClientError(f"RDB worker at {self.url} unreachable: {exc}") from None
        body = resp.data
        if resp.status != 200:
            try:
                reason = json.loads(body).get("error", body.decode(errors="replace"))
            except ValueError:
                reason = body.decode(errors="replace")
            raise RdbClientError(f"{url}: {resp.status} {reason}", resp.status) from None
        return body

    @staticmethod
    def _params(syms: list[str] | None, date: str | None, **extra: Any) -> dict[str, Any]:
        return {"syms": ",".join(syms) if syms else None, "date": date, **extra}

    def rows(self, table: str, syms: list[str] | None = None, start: int | None = None,
             end: int | None = None, columns: list[str] | None = None, date: str | None = None,
             local: bool = False, partitions: list[int] | None = None) -> pa.Table:
        """``local``: only this worker's own partitions, never forwarded (the gateway routes);
        with ``partitions``, exactly those, refused (421) if it does not hold one of them."""
        params = self._params(syms, date, start=start, end=end,
                              columns=",".join(columns) if columns else None, **_local(local, partitions))
        return pa.ipc.open_stream(self._get(f"/rdb/v1/{table}/rows", params)).read_all()

    def last(self, table: str, syms: list[str] | None = None, columns: list[str] | None = None,
             date: str | None = None, local: bool = False, partitions: list[int] | None = None) -> pa.Table:
        params = self._params(syms, date, columns=",".join(columns) if columns else None,
                              **_local(local, partitions))
        return pa.ipc.open_stream(self._get(f"/rdb/v1/{table}/last", params)).read_all()

    def partial(self, sql: str, sources: list[dict[str, Any]], date: str,
                partitions: list[int]) -> pa.Table:
        """A split statement's partial (gateway/pushdown.py) over this worker's rows of
        exactly ``partitions`` of each source's table: ``sources`` are ``{"source": its
        placeholder in sql, "table", "columns", "syms"}``. 422: the engine refused it."""
        params = {"date": date, "timeout": f"{self.timeout:.3f}", **_local(True, partitions)}
        body = json.dumps({"sql": sql, "sources": sources}).encode()
        return pa.ipc.open_stream(self._get("/rdb/v1/partial", params, body)).read_all()

    def count(self, table: str, syms: list[str] | None = None, date: str | None = None) -> dict[str, int]:
        return json.loads(self._get(f"/rdb/v1/{table}/count", self._params(syms, date)))["counts"]

    def status(self) -> dict[str, Any]:
        return json.loads(self._get("/rdb/v1/status", {}))

    def leave(self) -> dict[str, Any]:
        """Ask the worker to leave its group for good and stop (the scaler's scale-in)."""
        return json.loads(self._get("/rdb/v1/leave", {}, b"{}"))


def _local(local: bool, partitions: list[int] | None) -> dict[str, str | None]:
    if partitions is not None and not local:
        raise ValueError("partitions are asked of one worker: pass local=True")
    return {"local": "1" if local else None,
            "partitions": ",".join(map(str, sorted(partitions))) if partitions is not None else None}
