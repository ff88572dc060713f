"""The HDB query pool: several ClickHouse endpoints, each query on the least busy healthy one.

kdb+ plants put their HDB processes behind a balancer; ours are ClickHouse
endpoints (servers reading the HDB's Parquet on S3, or chDB inside the gateway,
which counts as one): ``clickhouse_urls``. Each query goes to the endpoint with
the fewest queries of this gateway in flight; one that cannot be reached is
benched for a while and the query runs on the next, as RDB replicas fail over.
An endpoint is only ever benched for not answering: a statement it refuses is
the caller's error, the same on every endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from sinks.hdb import ClientPool

BENCH_SECONDS = 5.0


class NoEndpoint(RuntimeError):
    """Every ClickHouse endpoint is benched or was tried for this query."""


class Endpoints:
    def __init__(self, pools: Sequence[ClientPool], bench_seconds: float = BENCH_SECONDS):
        if not pools:
            raise ValueError("no ClickHouse endpoint configured")
        self.pools = list(pools)
        self.bench_seconds = bench_seconds
        self._inflight = {id(p): 0 for p in self.pools}
        self._benched_until = {id(p): 0.0 for p in self.pools}
        self._lock = threading.Lock()

    def choose(self, tried: Sequence[ClientPool] = ()) -> ClientPool:
        """The least busy endpoint not benched and not ``tried``; a benched one only when no
        other is left (it may be back), never one this query already tried."""
        now = time.monotonic()
        with self._lock:
            left = [p for p in self.pools if all(p is not t for t in tried)]
            if not left:
                raise NoEndpoint(f"no ClickHouse endpoint answered (tried {', '.join(p.url for p in tried)})")
            healthy = [p for p in left if self._benched_until[id(p)] <= now] or left
            chosen = min(healthy, key=lambda p: self._inflight[id(p)])
            self._inflight[id(chosen)] += 1
            return chosen

    def done(self, pool: ClientPool) -> None:
        with self._lock:
            self._inflight[id(pool)] -= 1

    def bench(self, pool: ClientPool) -> None:
        with self._lock:
            self._benched_until[id(pool)] = time.monotonic() + self.bench_seconds

    def status(self) -> list[dict[str, object]]:
        """Each endpoint, its queries in flight and whether it is benched (health)."""
        now = time.monotonic()
        with self._lock:
            return [{"url": p.url, "inflight": self._inflight[id(p)],
                     "benched": self._benched_until[id(p)] > now} for p in self.pools]
