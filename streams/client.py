"""A small synchronous client for an RDB worker's HTTP views (the gateway, the CLI, tests)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pyarrow as pa


class RdbClientError(RuntimeError):
    """The worker refused the request or could not be reached; the message says which."""


class RdbClient:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> bytes:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v not in (None, "", [])})
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                reason = json.loads(body).get("error", body.decode(errors="replace"))
            except ValueError:
                reason = body.decode(errors="replace")
            raise RdbClientError(f"{url}: {exc.code} {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RdbClientError(f"RDB worker at {self.url} unreachable: {exc}") from None

    @staticmethod
    def _params(syms: list[str] | None, date: str | None, **extra: Any) -> dict[str, Any]:
        return {"syms": ",".join(syms) if syms else None, "date": date, **extra}

    def rows(self, table: str, syms: list[str] | None = None, start: int | None = None,
             end: int | None = None, columns: list[str] | None = None, date: str | None = None) -> pa.Table:
        params = self._params(syms, date, start=start, end=end,
                              columns=",".join(columns) if columns else None)
        return pa.ipc.open_stream(self._get(f"/rdb/v1/{table}/rows", params)).read_all()

    def last(self, table: str, syms: list[str] | None = None, columns: list[str] | None = None,
             date: str | None = None) -> pa.Table:
        params = self._params(syms, date, columns=",".join(columns) if columns else None)
        return pa.ipc.open_stream(self._get(f"/rdb/v1/{table}/last", params)).read_all()

    def count(self, table: str, syms: list[str] | None = None, date: str | None = None) -> dict[str, int]:
        return json.loads(self._get(f"/rdb/v1/{table}/count", self._params(syms, date)))["counts"]

    def status(self) -> dict[str, Any]:
        return json.loads(self._get("/rdb/v1/status", {}))
