"""An RDB worker's HTTP views: rows, last rows, counts and a gateway's split aggregate.

Every worker answers for any sym, forwarding to the workers of its replica that
own the others (by the metadata topic), so a client needs one URL. A gateway
instead routes itself and asks each worker for exactly the partitions it routed
there (``local=1``, ``partitions=``): a worker that no longer holds one refuses
(421) rather than answer for more or fewer rows than were routed to it.

  GET  /rdb/v1/{table}/rows?syms=A,B&start=NS&end=NS&columns=c1,c2&date=YYYY-MM-DD
       -> Arrow IPC stream (``format=json`` for JSON rows)
  GET  /rdb/v1/{table}/last?syms=...   -> the latest row per sym (Arrow IPC or JSON)
  GET  /rdb/v1/{table}/count?syms=...  -> {"counts": {sym: rows}}
  POST /rdb/v1/partial?partitions=...&date=...  -> a split statement's partial (streams/partial.py)
  GET  /rdb/v1/status                  -> what this worker holds
  POST /rdb/v1/leave                   -> leave the group for good (the scaler's scale-in)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import faust
import pyarrow as pa
from faust.web import View

from ingest.node_record import RdbRecord, TableHeld
from ingest.topics import partition_for
from streams.client import MISDIRECTED
from streams.observed import Timed
from streams.partial import FinalLimits, run_partial
from streams.query import QueryError, RowsQuery, counts, read_last, read_rows, to_ipc
from streams.shard import Shard
from tickplant import internal, metrics

if TYPE_CHECKING:
    from streams.rdb import RdbWorker

log = logging.getLogger("tickplant.rdb")
OFF_LOOP_ROWS = 20_000  # answers bigger than this are serialised on the executor
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _sent(body: bytearray) -> bytes:
    """An answer as Faust's view takes it: aiohttp sends any bytes-like body, so the buffer
    ``to_ipc`` wrote goes out as it is rather than copied into ``bytes``."""
    return cast(bytes, body)


def _final_limits(asked: Any) -> FinalLimits | None:
    """A partial request's ``final`` (``{"max_rows", "max_bytes"}``: answer the statement
    whole, within those limits), or None for a partial."""
    if asked is None:
        return None
    if not isinstance(asked, dict) or not all(isinstance(asked.get(k), int) and asked[k] > 0
                                              for k in ("max_rows", "max_bytes")):
        raise QueryError("'final' must be an object with positive integers 'max_rows' and 'max_bytes'")
    return FinalLimits(asked["max_rows"], asked["max_bytes"])


class NotHeld(RuntimeError):
    """Asked for partitions this worker does not hold (any more): 421 Misdirected Request;
    the gateway routes again once the metadata says who holds them."""


class RdbViews:
    """The queries of one worker, over its shards and its replica's peers."""

    def __init__(self, worker: RdbWorker):
        self.worker = worker
        self.query_seconds = {v: metrics.QUERY_SECONDS.labels("rdb", v) for v in ("rows", "last", "partial", "count")}

    def owners(self, table: str, syms: list[str]) -> dict[str | None, list[str]]:
        """syms grouped by the node that holds them (None: this worker)."""
        w = self.worker
        topic_parts = {p for (t, p) in w.assigned if t == table}
        by_partition_owner: dict[int, str] = {}
        for node, record in w.peers.items():
            if node == w.node_id:
                continue
            if not isinstance(record, RdbRecord):
                continue
            for p in (record.tables.get(table) or TableHeld()).partitions:
                by_partition_owner[p] = record.url
        out: dict[str | None, list[str]] = {}
        for sym in syms:
            p = partition_for(sym, w.settings.partitions)
            owner = None if p in topic_parts else by_partition_owner.get(p)
            if p not in topic_parts and owner is None:
                raise QueryError(f"no RDB worker holds {table} partition {p} (sym {sym}) right now")
            out.setdefault(owner, []).append(sym)
        return out

    def peer_urls(self, table: str) -> list[str]:
        """The other workers of the replica holding some of ``table``."""
        w = self.worker
        return [r.url for r in w.peers.values()
                if isinstance(r, RdbRecord) and r.node != w.node_id and table in r.tables]

    def parse(self, table: str, request: Any) -> RowsQuery:
        w = self.worker
        if table not in w.catalog.tables:
            raise QueryError(f"unknown table {table!r}; tables: {', '.join(w.catalog.names)}")
        q = request.query
        syms = [s for s in q.get("syms", "").split(",") if s] or None
        # seq (ingest.seq) only when asked for, as the gateway's ``SELECT *`` leaves it out
        columns = [c for c in q.get("columns", "").split(",") if c] or w.catalog[table].columns
        date = q.get("date") or (w.days.open_date.isoformat() if w.days.open_date else "")
        try:
            start = int(q["start"]) if q.get("start") else None
            end = int(q["end"]) if q.get("end") else None
            if date:
                dt.date.fromisoformat(date)
        except ValueError as exc:
            raise QueryError(f"bad parameter: {exc}") from None
        return RowsQuery(table, date, syms, start, end, columns)

    async def gather(self, kind: str, table: str, request: Any) -> pa.Table:
        """``rows`` or ``last``: this worker's own, and the rest forwarded to their owners."""
        query = self.parse(table, request)
        schema = self.worker.catalog[table].stored_schema  # with seq
        local_only = request.query.get("local") == "1"
        groups: dict[str | None, list[str] | None]
        if query.syms is None:
            groups = {None: None}
            if not local_only:
                groups.update((url, None) for url in self.peer_urls(table))
        else:
            groups = {None: query.syms} if local_only else dict(self.owners(table, query.syms))
        loop = asyncio.get_running_loop()
        parts: list[pa.Table] = []
        remote = {url: syms for url, syms in groups.items() if url is not None}
        if None in groups:
            shards = [s for (t, _), s in self.worker.shards.items() if t == table]
            local = RowsQuery(table, query.date, groups[None], query.start, query.end, query.columns)
            reader = read_rows if kind == "rows" else read_last
            parts.append(await loop.run_in_executor(None, reader, shards, local, schema))
        if remote:
            parts.extend(await asyncio.gather(*(
                self.forward(url, kind, table, request, syms) for url, syms in remote.items()
            )))
        return pa.concat_tables(parts, promote_options="default") if parts else schema.empty_table()

    def held(self, table: str, asked: str | None) -> list[Shard]:
        """This worker's shards of ``table``: those of the partitions the gateway routed here
        (``asked``), refused (``NotHeld``) if one is not held now: answering for more (a
        partition moving in) would double rows, for fewer (one moved out) lose them, silently."""
        held = {p: s for (t, p), s in self.worker.shards.items() if t == table}
        if asked:
            try:
                wanted = {int(p) for p in asked.split(",")}
            except ValueError:
                raise QueryError(f"bad parameter: partitions={asked!r} is not a list of numbers") from None
            missing = sorted(wanted - held.keys())
            if missing:
                raise NotHeld(f"{self.worker.node_id} does not hold {table} partition(s) "
                              f"{', '.join(map(str, missing))} now (a rebalance moved them); ask its new owner")
            held = {p: s for p, s in held.items() if p in wanted}
        return list(held.values())

    async def local_ipc(self, kind: str, table: str, request: Any) -> bytearray:
        """This worker's own rows (``local=1``: the gateway routes) as an Arrow stream, read
        and serialised in one executor call: each thread hand-off waits for a CPU under load."""
        query = self.parse(table, request)
        schema = self.worker.catalog[table].stored_schema  # with seq
        shards = self.held(table, request.query.get("partitions"))
        reader = read_rows if kind == "rows" else read_last
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: to_ipc(reader(shards, query, schema)))

    async def partial(self, request: Any, body: Any) -> bytearray:
        """A gateway's split statement (streams/partial.py): its partial over this worker's
        rows of exactly the routed partitions of each table it reads (one, or two joined on
        sym: partition p of every table is this worker's together). With ``final`` in the
        body, ``sql`` is the whole statement and the answer is its result: the gateway asks
        so when this worker alone holds every row the statement reads."""
        w = self.worker
        sources = body.get("sources") if isinstance(body, dict) else None
        if not isinstance(body.get("sql") if isinstance(body, dict) else None, str) or not isinstance(sources, list) \
                or not sources or not all(isinstance(x, dict) for x in sources):
            raise QueryError("the body must be JSON with 'sql' and a list of 'sources'")
        try:
            timeout = float(request.query.get("timeout") or w.settings.gateway_timeout_s)
            day = dt.date.fromisoformat(request.query.get("date") or "")
        except ValueError as exc:
            raise QueryError(f"bad parameter: {exc}") from None
        deadline = time.monotonic() + timeout
        final = _final_limits(body.get("final"))
        asked = request.query.get("partitions")
        reads = []
        for source in sources:
            table = source.get("table")
            if table not in w.catalog.tables:
                raise QueryError(f"unknown table {table!r}")
            columns = source.get("columns") or w.catalog[table].columns
            query = RowsQuery(table, day.isoformat(), source.get("syms"), None, None, columns)
            reads.append((str(source.get("source")), self.held(table, asked), query, w.catalog[table].stored_schema))

        def run() -> bytearray:
            inputs = [(placeholder, read_rows(shards, query, schema, sym_dictionary=True), schema)
                      for placeholder, shards, query, schema in reads]
            return to_ipc(run_partial(body["sql"], inputs, day, deadline, w.settings.gateway_max_memory_mb, final))

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def forward(self, url: str, kind: str, table: str, request: Any, syms: list[str] | None) -> pa.Table:
        params = {k: v for k, v in request.query.items() if k not in ("syms", "format")}
        params["local"] = "1"
        if syms is not None:
            params["syms"] = ",".join(syms)
        async with aiohttp.ClientSession(headers=internal.headers(self.worker.settings)) as session:
            async with session.get(f"{url}/rdb/v1/{table}/{kind}", params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise QueryError(f"{url} answered {resp.status}: {body[:300]!r}")
        return pa.ipc.open_stream(body).read_all()

    async def count(self, table: str, request: Any) -> dict[str, Any]:
        """Rows per sym: this worker's, and unless ``local=1`` every peer's holding the table."""
        query = self.parse(table, request)
        shards = [s for (t, _), s in self.worker.shards.items() if t == table]
        local = counts(shards, query.date, query.syms)
        if request.query.get("local") != "1":
            params = {k: v for k, v in request.query.items()}
            params["local"] = "1"
            for url in self.peer_urls(table):
                async with aiohttp.ClientSession(headers=internal.headers(self.worker.settings)) as session:
                    async with session.get(f"{url}/rdb/v1/{table}/count", params=params) as resp:
                        local.update((await resp.json())["counts"])
        return {"date": query.date, "counts": local}

    async def respond(self, view: View, request: Any, table: pa.Table) -> Any:
        if request.query.get("format") == "json":
            rows = table.to_pylist()
            for row in rows:
                if "time" in row and row["time"] is not None:
                    row["time"] = int(row["time"].value) if hasattr(row["time"], "value") else row["time"]
            return view.json({"rows": rows, "count": len(rows)})
        # a big answer is serialised off the event loop (which meanwhile serves the other
        # requests, a gateway's quotes next to its trades); a small one costs less than the hop
        body = (await asyncio.get_running_loop().run_in_executor(None, to_ipc, table)
                if table.num_rows > OFF_LOOP_ROWS else to_ipc(table))
        return view.bytes(_sent(body), content_type=ARROW_STREAM)

    def routes(self, app: faust.App) -> None:
        views = self
        worker = self.worker

        def rows_view(kind: str) -> type[View]:
            """``rows`` and ``last``: the same gathering and answer, a different reader."""
            class Rows(View):
                async def get(self, request: Any, table: str) -> Any:
                    worker.inflight += 1
                    worker.queries += 1
                    started = time.perf_counter()
                    try:
                        if request.query.get("local") == "1" and request.query.get("format") != "json":
                            # a gateway's fetch: read and serialise in one hop off the loop
                            body = await views.local_ipc(kind, table, request)
                            return self.bytes(_sent(body), content_type=ARROW_STREAM)
                        return await views.respond(self, request, await views.gather(kind, table, request))
                    except NotHeld as exc:
                        return self.error(MISDIRECTED, str(exc))
                    except QueryError as exc:
                        return self.error(400, str(exc))
                    finally:
                        worker.inflight -= 1
                        views.query_seconds[kind].observe(time.perf_counter() - started)

            Rows.__name__ = f"Rdb{kind.title()}"
            return Rows

        for kind in ("rows", "last"):
            app.page(f"/rdb/v1/{{table}}/{kind}")(rows_view(kind))

        @app.page("/rdb/v1/partial")
        class Partial(View):
            async def post(self, request: Any) -> Any:
                """A gateway's split statement: its partial over exactly the routed partitions."""
                worker.inflight += 1
                worker.queries += 1
                started = time.perf_counter()
                try:
                    data = await views.partial(request, await request.json())
                    return self.bytes(_sent(data), content_type=ARROW_STREAM)
                except NotHeld as exc:
                    return self.error(MISDIRECTED, str(exc))
                except (QueryError, ValueError) as exc:
                    return self.error(400, str(exc).split("\n")[0][:500])
                except Exception as exc:  # noqa: BLE001 - the engine's refusal, told to the gateway
                    return self.error(422, str(exc).split("\n")[0][:2000])
                finally:
                    worker.inflight -= 1
                    views.query_seconds["partial"].observe(time.perf_counter() - started)

        @app.page("/rdb/v1/{table}/count")
        class Count(View):
            async def get(self, request: Any, table: str) -> Any:
                with Timed(views.query_seconds["count"]):
                    try:
                        return self.json(await views.count(table, request))
                    except QueryError as exc:
                        return self.error(400, str(exc))

        @app.page("/rdb/v1/status")
        class Status(View):
            async def get(self, request: Any) -> Any:
                # ?detail=0: without the latency stages, whose percentiles over every row are not
                # free (a poller of the catch-up would take the reader's CPU)
                detail = request.query.get("detail", "1") not in ("0", "false")
                return self.json({"node": worker.node_id, **worker.holdings(detail=detail)})

        @app.page("/rdb/v1/leave")
        class Leave(View):
            async def post(self, request: Any) -> Any:
                """Leave the group for good (the scaler's scale-in): the worker stops as on SIGTERM,
                its partitions go to the others, which rebuild them; its host is then terminated."""
                log.warning("%s: leaving the group at the scaler's request", worker.node_id)
                worker.leaving = True
                asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
                return self.json({"node": worker.node_id, "leaving": True})

        @app.page("/rdb/v1/stages/reset")
        class ResetStages(View):
            async def post(self, request: Any) -> Any:
                """Forget the latency samples so far (a benchmark's warm-up)."""
                worker.stages.reset()
                return self.json({"reset": True})
