"""A small synchronous client for an RDB worker's HTTP views (the gateway, the CLI, tests),
over the plant's one HTTP client (tickplant/httpclient.py: kept-alive connections shared
by every client of the process)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from tickplant import httpclient
from tickplant.config import Settings

MISDIRECTED = 421  # a worker's answer for partitions it does not hold (any more)


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
        self.settings = settings

    def _get(self, path: str, params: dict[str, Any], body: bytes | None = None) -> bytes:
        """GET ``path`` (POST when there is a ``body``)."""
        url = f"{self.url}{path}"
        try:
            resp = httpclient.request("GET" if body is None else "POST", url, params=params, body=body,
                                      headers=None if body is None else {"Content-Type": "application/json"},
                                      settings=self.settings, timeout=self.timeout, check=False)
        except httpclient.HttpError as exc:
            raise RdbClientError(f"RDB worker at {self.url} unreachable: {exc}") from None
        if resp.status != 200:
            raise RdbClientError(f"{httpclient.with_query(url, params)}: {resp.status} {resp.reason()}",
                                 resp.status) from None
        return resp.data

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
                partitions: list[int], final: dict[str, int] | None = None) -> pa.Table:
        """A split statement's partial (gateway/pushdown.py) over this worker's rows of
        exactly ``partitions`` of each source's table: ``sources`` are ``{"source": its
        placeholder in sql, "table", "columns", "syms"}``. 422: the engine refused it.
        ``final`` (``{"max_rows", "max_bytes"}``): ``sql`` is the whole statement, answered."""
        params = {"date": date, "timeout": f"{self.timeout:.3f}", **_local(True, partitions)}
        asked: dict[str, Any] = {"sql": sql, "sources": sources}
        if final is not None:
            asked["final"] = final
        body = json.dumps(asked).encode()
        return pa.ipc.open_stream(self._get("/rdb/v1/partial", params, body)).read_all()

    def count(self, table: str, syms: list[str] | None = None, date: str | None = None) -> dict[str, int]:
        return json.loads(self._get(f"/rdb/v1/{table}/count", self._params(syms, date)))["counts"]

    def status(self, detail: bool = True) -> dict[str, Any]:
        """The worker's status; ``detail=False`` leaves out the latency stages (cheap to poll)."""
        return json.loads(self._get("/rdb/v1/status", {} if detail else {"detail": "0"}))

    def leave(self) -> dict[str, Any]:
        """Ask the worker to leave its group for good and stop (the scaler's scale-in)."""
        return json.loads(self._get("/rdb/v1/leave", {}, b"{}"))


def _local(local: bool, partitions: list[int] | None) -> dict[str, str | None]:
    if partitions is not None and not local:
        raise ValueError("partitions are asked of one worker: pass local=True")
    return {"local": "1" if local else None,
            "partitions": ",".join(map(str, sorted(partitions))) if partitions is not None else None}
