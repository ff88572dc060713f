"""Real-time rows from the RDB: one day of one table from the least busy replica group.

The rows of a day are fetched in parallel from the nodes of one replica group, each asked
for exactly the partitions routed to it (gateway/routing.py). A node that fails is benched
and the day asked again of another replica (or of the same group once it has rebalanced)
until the query's deadline; what cannot be had is a ``QueryFailed`` (gateway/failures.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gateway.failures import PartialRefused, QueryFailed
from gateway.plan import TableNeed
from gateway.pushdown import Split
from gateway.routing import NoReplica, Routing
from ingest.schemas import SchemaCatalog
from ingest.topics import partition_for
from streams.client import MISDIRECTED, RdbClient, RdbClientError
from tickplant.config import Settings

PARTIAL_REFUSED = 422  # an RDB node's answer when its engine refuses a partial
NO_REPLICA_WAIT_S = 3.0  # no node serves a partition (restarting, catching up): wait this long, then 503
SLOW_NODE_S = 2.0  # a node that does not answer in this long is benched; a shorter wait is the query's


@dataclass(frozen=True)
class FinalAsk:
    """The whole statement (``sql``: the plan's, a placeholder per reference), for a node
    that alone holds every row it reads to answer instead of its partial: then there is
    nothing to merge. Its result is kept to the gateway's limits (``max_rows``, ``max_bytes``)."""

    sql: str
    max_rows: int
    max_bytes: int


@dataclass(frozen=True)
class PartialAsk:
    """What each node is asked for a split: its partial, over each reference's rows
    (placeholder, table, columns or None for all, syms or None for all); ``final`` when
    one node may answer the statement whole."""

    split: Split
    sources: tuple[tuple[str, str, tuple[str, ...] | None, frozenset[str] | None], ...]
    partitions: int  # the tables' partition count
    final: FinalAsk | None = None

    def sources_for(self, partitions: list[int]) -> list[dict[str, Any]]:
        """The sources as a node reads them: each one's syms of those partitions only."""
        held = set(partitions)
        return [{"source": placeholder, "table": table, "columns": list(columns) if columns else None,
                 "syms": None if syms is None else sorted(s for s in syms if partition_for(s, self.partitions) in held)}
                for placeholder, table, columns, syms in self.sources]


class RdbFetch:
    """The gateway's reads of the RDB nodes, on a pool of its own."""

    def __init__(self, settings: Settings, routing: Routing, catalog: SchemaCatalog):
        self.settings = settings
        self.routing = routing
        self.catalog = catalog
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="gateway-rdb")

    def fetch(self, need: TableNeed, columns: list[str] | None, day: dt.date, view: str | PartialAsk,
               deadline: float) -> tuple[pa.Table, str, bool]:
        """One day's rows from one replica group, in parallel across its nodes; a node that
        fails is benched and the day is fetched again from another replica (or the same
        group once it has rebalanced) until the deadline. Also whether the answer is the
        statement's result (``PartialAsk.final``, asked when one node holds every partition
        needed) rather than rows or partials."""
        count = self.routing.partition_count(need.table)
        syms = sorted(need.syms) if need.syms is not None else None
        wanted = sorted({partition_for(s, count) for s in syms}) if syms is not None else list(range(count))
        if not wanted:
            return self.catalog[need.table].stored_schema.empty_table(), "", False
        failed: list[str] = []
        unserved = 0.0  # when no node first served what is needed (a restart, a move): 503 soon after
        while True:
            try:
                route = self.routing.route(need.table, wanted, exclude=failed)
            except NoReplica as exc:
                now = time.monotonic()
                unserved = unserved or now
                if now + 0.25 > min(deadline, unserved + NO_REPLICA_WAIT_S):
                    raise QueryFailed(503, f"{exc}; retry shortly") from None
                time.sleep(0.25)
                failed.clear()  # a benched node may be back, a group may have rebalanced
                continue
            asked = time.monotonic()
            final = isinstance(view, PartialAsk) and view.final is not None and len(route.nodes) == 1
            calls = {url: functools.partial(
                         self._node, url, need.table, view, day, columns,
                         [s for s in syms if partition_for(s, count) in parts] if syms else None,
                         sorted(parts), deadline, final)
                     for url, parts in route.nodes.items()}
            # one node (a small plant, or syms all in one shard): no hop through the pool
            futures = {url: self.pool.submit(call) for url, call in list(calls.items())[1:]}
            tables, bad = [], None
            for url, call in calls.items():
                try:
                    tables.append(futures[url].result() if url in futures else call())
                except RdbClientError as exc:
                    if exc.status == MISDIRECTED:  # alive, but its partitions moved: route again
                        failed.append(url)
                        bad = exc
                        continue
                    if exc.status == PARTIAL_REFUSED:
                        raise PartialRefused(str(exc)) from None
                    if exc.status is not None and exc.status < 500:
                        raise QueryFailed(400, str(exc)) from None
                    if exc.status is None and time.monotonic() >= deadline - 0.05 and deadline - asked < SLOW_NODE_S:
                        # the query's own short time ran out: the node is slow for it, not dead
                        # (a tiny timeout must not let any user bench every replica in turn)
                        raise QueryFailed(408, "query exceeded its timeout fetching real-time rows") from None
                    self.routing.bench(url)
                    failed.append(url)
                    bad = exc
            if bad is None:
                return pa.concat_tables(tables, promote_options="default"), route.replica, final
            if time.monotonic() > deadline:
                raise QueryFailed(503, f"real-time rows unavailable: {bad}; retry shortly")

    def _node(self, url: str, table: str, view: str | PartialAsk, day: dt.date, columns: list[str] | None,
                    syms: list[str] | None, partitions: list[int], deadline: float, final: bool = False) -> pa.Table:
        """The rows of exactly the partitions routed to ``url`` (it refuses if it no longer
        holds one: its answer would otherwise miss or double rows during a rebalance)."""
        self.routing.begin(url)
        try:
            client = RdbClient(url, timeout=max(0.5, deadline - time.monotonic()), settings=self.settings)
            cols = list(columns) if columns else None
            if isinstance(view, PartialAsk) and final and view.final is not None:
                whole = view.final
                answer = client.partial(whole.sql, view.sources_for(partitions), day.isoformat(), partitions,
                                        final={"max_rows": whole.max_rows, "max_bytes": whole.max_bytes})
                if any(name.startswith("__tickplant_") for name in answer.schema.names):
                    raise PartialRefused(f"{url} answered a partial where the statement's result was asked")
                return answer
            if isinstance(view, PartialAsk):
                return client.partial(view.split.partial, view.sources_for(partitions), day.isoformat(), partitions)
            reader = client.rows if view == "rows" else client.last
            return reader(table, syms=syms, columns=cols, date=day.isoformat(), local=True, partitions=partitions)
        finally:
            self.routing.end(url)

    def close(self) -> None:
        self.pool.shutdown(wait=False)
