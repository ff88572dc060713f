"""A Python client for the gateway: answers as Arrow, pandas or polars.

    from gateway.client import Client
    gw = Client("http://127.0.0.1:8700", api_key="...")
    gw.sql("SELECT sym, count() FROM trade WHERE date = today() GROUP BY sym").to_pandas()
    gw.bars(["AAPL"], start="2026-11-01", end="today", minutes=5)

Answers travel as Arrow IPC streams (no JSON round trip). A refused request
raises ``GatewayError`` with the gateway's status and reason; ``retryable``
says whether asking again may help (timeouts, data momentarily unavailable).

Gateways hold no state the others need, so a plant runs several: give the
client all of them (``Client(["http://gw1:8700", "http://gw2:8700"])`` or one
comma-separated string). A request goes to the gateway that answered last; one
that cannot be reached or answers 502/503/504 is left for the next, in turn,
before the client gives up (every request is a read: asking again is safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gateway.output import ARROW
from tickplant import httpclient

if TYPE_CHECKING:
    from gateway.subscribe_client import LiveSubscription


class GatewayError(RuntimeError):
    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.status in (408, 429, 502, 503, 504)


FAIL_OVER = (502, 503, 504)  # this gateway cannot answer now; another may


def gateway_urls(url: str | Sequence[str]) -> list[str]:
    """One URL, several comma-separated, or a list: each without its trailing slash."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [u.strip().rstrip("/") for u in parts if u.strip()]
    if not urls:
        raise ValueError("no gateway URL given")
    return urls


class Client:
    def __init__(self, url: str | Sequence[str] = "http://127.0.0.1:8700", api_key: str | None = None,
                 timeout: float = 120.0):
        self.urls = gateway_urls(url)
        self.url = self.urls[0]
        self._api_key = api_key
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def close(self) -> None:
        """Nothing to let go: connections are the process's (tickplant/httpclient.py)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, params: dict[str, Any] | None = None, json: Any = None,
              headers: dict[str, str] | None = None) -> httpclient.Response:
        """The request to the last gateway that answered, then to each other in turn while
        one is unreachable or answers 502/503/504; the last failure if none answers."""
        start = self.urls.index(self.url)
        failure = GatewayError(503, "no gateway asked")
        for url in self.urls[start:] + self.urls[:start]:
            try:
                resp = httpclient.request(method, url + path, params=params, json_body=json,
                                          headers={**self.headers, **(headers or {})}, timeout=self.timeout,
                                          check=False)
            except httpclient.HttpError as exc:
                failure = GatewayError(503, f"gateway at {url} unreachable: {exc}")
                continue
            if resp.status == 200:
                self.url = url
                return resp
            failure = GatewayError(resp.status, resp.reason())
            if resp.status not in FAIL_OVER:
                raise failure
        raise failure

    def _arrow(self, method: str, path: str, **kwargs: Any) -> pa.Table:
        resp = self._send(method, path, headers={"Accept": ARROW}, **kwargs)
        return pa.ipc.open_stream(resp.data).read_all()

    @staticmethod
    def _params(**params: Any) -> dict[str, Any]:
        out = {}
        for k, v in params.items():
            if v is None:
                continue
            out[k] = ",".join(v) if isinstance(v, list | tuple) else v
        return out

    # -- queries ---------------------------------------------------------------------------

    def sql(self, query: str, limit: int | None = None, timeout: float | None = None) -> pa.Table:
        body = self._params(query=query, limit=limit, timeout=timeout)
        return self._arrow("POST", "/v1/sql", json=body)

    def df(self, query: str, **kwargs: Any) -> Any:
        """``sql`` as a pandas DataFrame."""
        return self.sql(query, **kwargs).to_pandas()

    def pl(self, query: str, **kwargs: Any) -> Any:
        """``sql`` as a polars DataFrame (needs polars installed)."""
        import polars

        return polars.from_arrow(self.sql(query, **kwargs))

    def _named(self, path: str, limit: int | None, timeout: float | None, **params: Any) -> pa.Table:
        """A named query: its parameters, plus the row limit and timeout every one takes."""
        return self._arrow("GET", path, params=self._params(limit=limit, timeout=timeout, **params))

    def trades(self, syms: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
               columns: Sequence[str] | None = None, *, limit: int | None = None,
               timeout: float | None = None) -> pa.Table:
        return self._named("/v1/trades", limit, timeout, syms=syms, start=start, end=end, columns=columns)

    def quotes(self, syms: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
               columns: Sequence[str] | None = None, *, limit: int | None = None,
               timeout: float | None = None) -> pa.Table:
        return self._named("/v1/quotes", limit, timeout, syms=syms, start=start, end=end, columns=columns)

    def last(self, syms: Sequence[str] | None = None, table: str = "trade", *, limit: int | None = None,
             timeout: float | None = None) -> pa.Table:
        return self._named("/v1/last", limit, timeout, table=table, syms=syms)

    def bars(self, syms: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
             minutes: int = 1, *, limit: int | None = None, timeout: float | None = None) -> pa.Table:
        return self._named("/v1/bars", limit, timeout, syms=syms, start=start, end=end, minutes=minutes)

    def vwap(self, syms: Sequence[str] | None = None, start: str | None = None, end: str | None = None, *,
             limit: int | None = None, timeout: float | None = None) -> pa.Table:
        return self._named("/v1/vwap", limit, timeout, syms=syms, start=start, end=end)

    def aj(self, syms: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
           quote_columns: Sequence[str] | None = None, columns: Sequence[str] | None = None, *,
           limit: int | None = None, timeout: float | None = None) -> pa.Table:
        return self._named("/v1/aj", limit, timeout, syms=syms, start=start, end=end, columns=columns,
                           quote_columns=quote_columns)

    def wj(self, syms: Sequence[str] | None = None, start: str | None = None, end: str | None = None, *,
           lo: str | int, hi: str | int, aggs: Sequence[str] | str, mode: str = "wj",
           columns: Sequence[str] | None = None, limit: int | None = None, timeout: float | None = None) -> pa.Table:
        """kdb+'s window join: each trade with ``aggs`` (``"max:ask"``, ``"lo_bid:min:bid"``,
        ``"count"``) over its sym's quotes in ``[time + lo, time + hi]`` (``"-2s"``, ``"500ms"``; a
        number: ms); ``mode="wj1"``: only the quotes in the window, not the one prevailing at its start."""
        return self._named("/v1/wj", limit, timeout, syms=syms, start=start, end=end, lo=str(lo), hi=str(hi),
                           aggs=aggs, mode=mode, columns=columns)

    def subscribe(self, source: str, syms: Sequence[str] | None = None, *, resume: dict[int, int] | None = None,
                  reconnect_timeout: float = 60.0, open_timeout: float = 10.0) -> LiveSubscription:
        """kdb+'s ``.u.sub[source; syms]``: an iterator of ``Batch`` (the snapshot, then each
        update), resuming where it was after a dropped connection or gateway, with no row missed
        or repeated; ``close()`` it, or use it in a ``with``. ``resume``: a ``position`` kept from
        an earlier subscription of the same syms, to go on from there (no snapshot). See
        ``gateway.subscribe_client``."""
        from gateway.subscribe_client import LiveSubscription

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return LiveSubscription(self.urls, headers, source, syms, resume=resume,
                                reconnect_timeout=reconnect_timeout, open_timeout=open_timeout)

    def tables(self) -> list[dict[str, Any]]:
        return self._send("GET", "/v1/tables").json()["tables"]

    def health(self) -> dict[str, Any]:
        return self._send("GET", "/v1/health").json()
