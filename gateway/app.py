"""The gateway: one HTTP entry over today and history, with entitlements (FastAPI).

kdb+ users send a query to one gateway, which knows which RDBs and HDBs hold
what, asks them, and joins the answers. Ours does the same over HTTP:

    GET  /v1/health                  the plant as the gateway sees it
    GET  /v1/tables                  tables, columns, days in the RDB and the HDB
    POST /v1/sql  {"query": "..."}   a ClickHouse SELECT; ``trade`` = today + history, with ``date``
    GET  /v1/rows/{table} (/v1/trades, /v1/quotes), /v1/last, /v1/bars, /v1/vwap, /v1/aj, /v1/wj, /v1/black_scholes
                                     named queries
    WS   /v1/ws, GET /v1/subscribe/{source}                           live subscriptions
    GET  /console, /docs, /openapi.json   the web console, the OpenAPI page (gateway/console.py)

Answers are JSON (default), CSV or an Arrow IPC stream by the Accept header (or
``format=``), streamed batch by batch. Every request is authenticated
(``Authorization: Bearer <token>`` or ``X-API-Key``), checked against the
user's grants on the parsed statement, run with a row limit and a timeout, and
logged to the query log (itself the ``query_log`` table).

Errors are JSON ``{"error": "..."}`` with the status saying whose fault: 400 bad
SQL or parameter, 401 unknown key, 403 not entitled, 408 timeout, 413 over the
row limit, 503 data temporarily unavailable (retry).
"""

from __future__ import annotations

import datetime as dt
import inspect
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from gateway import named, output, querylog, windowjoin
from gateway.admission import RunningQueries, limit_body
from gateway.auth import Unauthorized, User, Users, UsersFile
from gateway.console import mount_console
from gateway.engine import Answer, Engine, Plan, QueryFailed
from gateway.metered import add_metrics_route, gateway_samples, metered, note_user
from gateway.policy import authorize, check_subscription
from gateway.querylog import QueryLog
from gateway.refusals import REFUSALS, outcome, status_of
from gateway.routing import Routing
from gateway.sql import Forbidden, parse_select
from ingest.eod import TradingCalendar
from ingest.schemas import SchemaCatalog
from sinks.hdb import HdbQuery
from tickplant import internal, metrics
from tickplant.config import Settings

PLAN_CACHE = 1024  # plans kept (statements x users)


class SqlRequest(BaseModel):
    query: str = Field(..., description="One ClickHouse SELECT over the plant's tables", min_length=1)
    limit: int | None = Field(None, gt=0, description="Row limit (at most the gateway's)")
    timeout: float | None = Field(None, gt=0, description="Seconds (at most the gateway's)")


class Gateway:
    """What the routes share: the engine, the users, the query log."""

    def __init__(self, settings: Settings, routing: Routing | None = None, users: Users | None = None,
                 engine_class: type[Engine] = Engine):
        self.settings = settings
        self.catalog = SchemaCatalog.load(settings.schemas_dir)
        self.routing = routing or Routing(settings)
        self.query_log = QueryLog(Path(settings.data_dir) / "gateway" / "query_log.jsonl")
        self.engine = engine_class(settings, self.routing, HdbQuery(settings, catalog=self.catalog),
                             self.catalog, self.query_log)
        # what entitlements check against: the plant's tables and the query log, each with `date`
        self.table_columns = {**self.engine.tables, querylog.TABLE: [*querylog.COLUMNS, "date"]}
        if users is None and not settings.gateway_users_file:
            users = Users.open()  # no users file: one anonymous admin (local use only)
        self._fixed_users = users
        self.users_file = (UsersFile(Path(settings.gateway_users_file), self.table_columns)
                           if self._fixed_users is None else None)
        if self._fixed_users is not None:
            self._fixed_users.validate(self.table_columns)
        self.started = time.time()
        # statement, user, open day -> its plan: parsing and authorising a named query's
        # SQL costs 1-4 ms, the same again for every request
        self._plans: OrderedDict[tuple[str, str, dt.date, int], Plan] = OrderedDict()
        self._plans_lock = threading.Lock()
        self.running = RunningQueries(settings.gateway_user_queries)
        self.hub: Any = None  # the live subscriptions' hub, once the routes have one
        metrics.add_source(self.metric_samples)

    def metric_samples(self) -> Any:
        """The figures read at scrape time (gateway/metered.py)."""
        return gateway_samples(self)

    @property
    def users(self) -> Users:
        """The users in force: the users file as last read (it is watched), or those given."""
        if self.users_file is not None:
            return self.users_file.current()
        if self._fixed_users is None:  # __init__ gives one or the other
            raise RuntimeError("the gateway has neither a users file nor users")
        return self._fixed_users

    @property
    def users_version(self) -> int:
        return 0 if self.users_file is None else self.users_file.version

    def plan(self, statement: str, user: User) -> Plan:
        """The statement parsed, authorised for ``user`` and planned, once per open day and
        version of the users file (a plan holds no data, but it holds the user's grants)."""
        open_date = self.engine.open_date()
        key = (statement, user.name, open_date, self.users_version)
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = self.engine.plan(authorize(parse_select(statement), user, self.table_columns), open_date)
        with self._plans_lock:
            self._plans[key] = plan
            while len(self._plans) > PLAN_CACHE:
                self._plans.popitem(last=False)
        return plan

    def run(self, user: User, endpoint: str, statement: str, *, limit: int | None = None,
            timeout: float | None = None, settings: dict[str, Any] | None = None, rdb_view: str = "rows",
            check: Callable[[], Any] | None = None) -> tuple[Answer, float, float]:
        """Parse, authorise, run and log one statement: its answer, milliseconds taken and
        seconds to plan; errors are logged and raised. ``check``: the caller's own checks of
        the request (its format), run first and refused and logged like the rest."""
        started = time.monotonic()
        try:
            if check is not None:
                check()
            size = len(statement.encode())
            if size > self.settings.gateway_max_statement_bytes:
                raise QueryFailed(413, f"the statement has {size:,} bytes; at most "
                                       f"{self.settings.gateway_max_statement_bytes:,} (gateway_max_statement_bytes)")
            with self.running.admit(user.name, limited=not self.users.is_open):
                plan = self.plan(statement, user)
                checked = time.monotonic()
                result: Answer = self.engine.execute(plan, limit=limit, timeout=timeout, settings=settings,
                                                     rdb_view=rdb_view, planned=checked - started)
        except Exception as exc:
            status = status_of(exc)
            self.query_log.record(user.name, endpoint, statement, (time.monotonic() - started) * 1e3, 0,
                                  outcome(status), status, str(exc))
            raise
        elapsed_ms = (time.monotonic() - started) * 1e3
        self.query_log.record(user.name, endpoint, statement, elapsed_ms, result.table.num_rows, "ok", 200)
        return result, elapsed_ms, checked - started

    def answer(self, user: User, endpoint: str, statement: str, request: Request, *,
               limit: int | None = None, timeout: float | None = None, settings: dict[str, Any] | None = None,
               rdb_view: str = "rows", fmt: str | None = None) -> Response:
        """``run``, the answer streamed in the format the request asks for."""
        kinds: list[str] = []
        result, elapsed_ms, planned = self.run(
            user, endpoint, statement, limit=limit, timeout=timeout, settings=settings, rdb_view=rdb_view,
            check=lambda: kinds.append(output.media_type(request.headers.get("accept"), fmt)))
        kind = kinds[0]
        extra: dict[str, Any] = {"elapsed_ms": round(elapsed_ms, 3)}
        notes = sorted({n for infos in result.touched.values() for info in infos for n in info.get("notes", ())})
        if notes:  # what the answer leaves out, said in it (gateway/serverless.py: the open day)
            extra["notes"] = notes
        stages = {"parse": planned, **result.timing}  # parse: and plan, unless cached
        headers = {"X-Rows": str(result.table.num_rows), "X-Elapsed-Ms": f"{elapsed_ms:.3f}",
                   "Server-Timing": ", ".join(f"{k};dur={v * 1e3:.2f}" for k, v in stages.items())}
        if notes:
            headers["X-Tickplant-Notes"] = "; ".join(notes)
        body = output.chunks(result.table, kind, extra)
        if result.table.num_rows <= output.BATCH_ROWS:
            # One batch: sent in one piece. A stream would cost a hop to the thread pool per
            # chunk (three for Arrow), which under many clients waits behind everyone's queries.
            return Response(b"".join(body), media_type=kind, headers=headers)
        return StreamingResponse(body, media_type=kind, headers=headers)


    def run_named(self, user: User, endpoint: str, request: Request, build: Callable[[], named.NamedQuery], *,
                  limit: int | None = None, timeout: float | None = None, fmt: str | None = None,
                  rdb_view: str | None = None) -> Response:
        """A named query: its SQL written from the parameters by ``build`` (a bad parameter is
        refused and logged like any other refusal), then ``answer`` as for ``/v1/sql``."""
        try:
            q = build()
        except named.BadParameter as exc:
            self.query_log.record(user.name, endpoint, f"{request.url.path}?{request.url.query}", 0.0, 0,
                                  outcome(400), 400, str(exc))
            raise
        return self.answer(user, endpoint, q.sql, request, limit=limit, timeout=timeout, settings=q.settings or None,
                           rdb_view=rdb_view or q.rdb_view, fmt=fmt)


def user_of(request: Any) -> User:
    """The caller, from ``Authorization: Bearer <token>`` or ``X-API-Key``."""
    header = request.headers.get("authorization") or request.headers.get("x-api-key")
    user = request.app.state.gateway.users.authenticate(header)
    note_user(request, user.name)
    return user


async def current_user(request: Request) -> User:
    """``user_of`` as a dependency: async, so FastAPI calls it on the event loop (a key
    lookup) instead of a hop to the thread pool and back for every request."""
    try:
        return user_of(request)
    except Unauthorized as exc:  # logged as every refusal is (who tried, what, why)
        request.app.state.gateway.query_log.record("-", request.url.path, "", 0.0, 0, outcome(401), 401, str(exc))
        raise


UserDep = Annotated[User, Depends(current_user)]


def _without_password(url: str) -> str:
    """``http://user:secret@host:8123`` as ``http://user:***@host:8123``: health needs no login."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def create_app(settings: Settings, routing: Routing | None = None, users: Users | None = None,
               engine_class: type[Engine] = Engine) -> FastAPI:
    """The gateway's app; ``engine_class``: an Engine answering otherwise (gateway/serverless.py)."""
    gw = Gateway(settings, routing, users, engine_class)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not gw.routing._thread.is_alive():
            gw.routing.start()
        hub = getattr(app.state, "hub", None)
        try:
            yield
        finally:
            if hub is not None:
                closing = hub.close()
                if inspect.isawaitable(closing):
                    await closing
            gw.routing.close()

    app = FastAPI(title="tickplant gateway", version="1", lifespan=lifespan,
                  description=__doc__.split("\n\n")[0], docs_url=None, redoc_url=None)  # /docs: mount_console
    app.state.gateway = gw
    mount_console(app)

    async def failed(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status_of(exc))

    for known in REFUSALS:
        app.add_exception_handler(known, failed)
    app.add_middleware(limit_body, max_bytes=settings.gateway_max_statement_bytes + 4096)
    app.add_middleware(metered)  # outermost: a refused body (413) is counted too
    add_metrics_route(app)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"malformed request: {problems}"}, status_code=400)

    internal_secret = internal.secret(settings)

    @app.get("/v1/health")
    def health(request: Request) -> dict[str, Any]:
        """For anyone (a load balancer's probe) ``ok`` or ``degraded`` (some of today or
        history cannot be answered: 503s); for a caller with a key, and for the plant's
        own processes, why, the roles seen, the nodes and where history lives. Always 200
        while this gateway runs: every gateway sees the same plant, and a probe that
        failed them all would turn a partial outage into a whole one."""
        problems, warnings = gw.routing.coverage(s.name for s in gw.catalog)
        endpoints = gw.engine.endpoints.status()
        if all(e["benched"] for e in endpoints):
            problems.append("every ClickHouse endpoint failed lately: history is unavailable")
        status = "degraded" if problems else "ok"
        if not internal.is_internal(request.headers.get(internal.HEADER), internal_secret):
            try:
                user_of(request)
            except Unauthorized:
                return {"status": status}
        nodes = gw.routing.nodes("rdb")
        open_date = gw.routing.open_date()
        return {
            "status": status, "problems": problems, "warnings": warnings,
            "roles": {kind: len(gw.routing.announced(kind)) for kind in ("rdb", "cep", "pdb", "gateway")},
            "open_date": open_date.isoformat() if open_date else None,
            "rdb_nodes": [{"node": n.node, "url": n.url, "replica": n.replica, "serving": n.serving}
                          for n in nodes],
            "cep_nodes": [{"node": n.node, "url": n.url} for n in gw.routing.nodes("cep")],
            "hdb_root": gw.engine.hdb.store.base, "clickhouse": [{**e, "url": _without_password(str(e["url"]))} for e in endpoints],
            "uptime_s": round(time.time() - gw.started, 1),
        }

    @app.get("/v1/tables")
    def tables(user: UserDep) -> dict[str, Any]:
        out = []
        for schema in gw.catalog:
            grant = user.grant_for(schema.name)
            if grant is None:
                continue
            out.append({
                "table": schema.name,
                "columns": [{"name": f.name, "type": str(f.type)} for f in schema.arrow_schema
                            if grant.column_allowed(f.name)] + [{"name": "date", "type": "date32[day]"}],
                "rdb_dates": sorted(d.isoformat() for d in gw.routing.realtime_dates(schema.name)),
                "hdb_dates": [d.isoformat() for d in gw.engine.hdb.dates(schema.name)],
            })
        log_grant = user.grant_for(querylog.TABLE)
        if log_grant is not None:  # the gateway's own query log, for those who may read it
            out.append({"table": querylog.TABLE, "columns": [
                {"name": c, "type": t} for c, t in querylog.ARROW_TYPES.items() if log_grant.column_allowed(c)]})
        return {"tables": out}

    @app.post("/v1/sql")
    def sql(body: SqlRequest, request: Request, user: UserDep, format: str | None = None) -> Response:
        return gw.answer(user, "sql", body.query, request, limit=body.limit, timeout=body.timeout, fmt=format)

    _named_routes(app, gw)
    _streaming_routes(app, gw)
    return app


def _named_routes(app: FastAPI, gw: Gateway) -> None:
    today = gw.engine.open_date
    syms_q = Query(None, description="comma-separated syms; all if omitted")
    start_q = Query(None, description="first day, YYYY-MM-DD or 'today' (default: the open day)")
    end_q = Query(None, description="last day (default: start)")
    fmt_q = Query(None, description="json, csv or arrow (else the Accept header)")
    limit_q = Query(None, gt=0, description="row limit (at most the gateway's gateway_row_limit)")
    timeout_q = Query(None, gt=0, description="seconds (at most the gateway's gateway_timeout_s)")

    def columns(table: str) -> list[str]:
        return gw.catalog[table].columns

    def rows_route(table: str, endpoint: str) -> Callable[..., Response]:
        def rows(request: Request, user: UserDep, syms: str | None = syms_q, start: str | None = start_q,
                 end: str | None = end_q, columns_: str | None = Query(None, alias="columns"),
                 limit: int | None = limit_q, timeout: float | None = timeout_q,
                 format: str | None = fmt_q) -> Response:
            return gw.run_named(user, endpoint, request, lambda: named.rows_query(
                table, columns(table), syms, start, end, columns_, today()), limit=limit, timeout=timeout, fmt=format)
        return rows

    # a route per table of schemas/, so a table added to the plant gets its REST route with its
    # SQL; trade and quote keep the names the plant's contract gives them
    for schema in gw.catalog:
        paths = [f"/v1/rows/{schema.name}", *{"trade": ["/v1/trades"], "quote": ["/v1/quotes"]}.get(schema.name, [])]
        for path in paths:
            app.add_api_route(path, rows_route(schema.name, path.removeprefix("/v1/")), methods=["GET"],
                              name=path.removeprefix("/v1/"),
                              summary=f"Rows of {schema.name} for some syms over some days, by date, sym, time")

    @app.get("/v1/last", summary="The latest row of each sym today")
    def last(request: Request, user: UserDep, table: str = "trade", syms: str | None = syms_q,
             limit: int | None = limit_q, timeout: float | None = timeout_q, format: str | None = fmt_q) -> Response:
        def build() -> named.NamedQuery:
            if table not in gw.catalog.tables:
                raise named.BadParameter(f"table={table!r}: tables are {', '.join(gw.catalog.names)}")
            return named.last_query(table, syms, today())

        grant = user.grant_for(table)
        # A row filter may hide a sym's latest row but not an earlier one: then every row is needed.
        view = "rows" if grant is not None and grant.rows else None
        return gw.run_named(user, "last", request, build, limit=limit, timeout=timeout, fmt=format, rdb_view=view)

    @app.get("/v1/bars", summary="OHLC, volume, VWAP bars per sym (minutes wide)")
    def bars(request: Request, user: UserDep, syms: str | None = syms_q, start: str | None = start_q,
             end: str | None = end_q, minutes: int = 1, limit: int | None = limit_q,
             timeout: float | None = timeout_q, format: str | None = fmt_q) -> Response:
        return gw.run_named(user, "bars", request, lambda: named.bars_query(syms, start, end, minutes, today()),
                            limit=limit, timeout=timeout, fmt=format)

    @app.get("/v1/vwap", summary="VWAP, volume and trade count per sym per day")
    def vwap(request: Request, user: UserDep, syms: str | None = syms_q, start: str | None = start_q,
             end: str | None = end_q, limit: int | None = limit_q, timeout: float | None = timeout_q,
             format: str | None = fmt_q) -> Response:
        return gw.run_named(user, "vwap", request, lambda: named.vwap_query(syms, start, end, today()),
                            limit=limit, timeout=timeout, fmt=format)

    @app.get("/v1/aj", summary="Each trade with its sym's prevailing quote (kdb+'s aj)")
    def aj(request: Request, user: UserDep, syms: str | None = syms_q, start: str | None = start_q,
           end: str | None = end_q,
           columns_: str | None = Query(None, alias="columns", description="trade columns"),
           quote_columns: str | None = Query(None, description="quote columns (default bid,ask)"),
           limit: int | None = limit_q, timeout: float | None = timeout_q, format: str | None = fmt_q) -> Response:
        return gw.run_named(user, "aj", request, lambda: named.aj_query(
            syms, start, end, columns("trade"), columns("quote"), columns_, quote_columns, today()),
            limit=limit, timeout=timeout, fmt=format)

    @app.get("/v1/wj", summary="kdb+'s window join: aggregates of each trade's sym's quotes in a window around it")
    def wj(request: Request, user: UserDep, syms: str | None = syms_q, start: str | None = start_q,
           end: str | None = end_q,
           lo: str | None = Query(None, description="window start, from each trade's time: -2s, -500ms, 0, "
                                                    "-0D00:00:02 (a bare number: ms)"),
           hi: str | None = Query(None, description="window end, from each trade's time (included)"),
           aggs: str | None = Query(None, description="[name:]function:quote column, comma-separated: "
                                                      "count, first, last, min, max, avg, sum (e.g. max:ask,min:bid)"),
           mode: str | None = Query(None, description="wj (default: the quote prevailing at the start counts) "
                                                      "or wj1 (only quotes in the window)"),
           columns_: str | None = Query(None, alias="columns", description="trade columns"),
           limit: int | None = limit_q, timeout: float | None = timeout_q, format: str | None = fmt_q) -> Response:
        return gw.run_named(user, "wj", request, lambda: windowjoin.wj_query(
            gw.catalog["trade"], gw.catalog["quote"], syms, start, end, lo, hi, aggs, mode, columns_, today()),
            limit=limit, timeout=timeout, fmt=format)

    calendar = TradingCalendar.from_settings(gw.settings)

    @app.get("/v1/black_scholes", summary="Black-Scholes price and greeks of each option contract at a time")
    def black_scholes(request: Request, user: UserDep, syms: str | None = Query(None, description="underlyings"),
                      date: str | None = Query(None, description="the day, YYYY-MM-DD or 'today' (default)"),
                      at: str | None = Query(None, description="valuation time: ISO, or HH:MM[:SS] UTC on the day "
                                                               "(default: the day's close, or now)"),
                      rate: str | None = Query(None, description="risk-free rate per year, continuously compounded"),
                      div: str | None = Query(None, description="dividend yield per year (default 0)"),
                      contracts: str | None = Query(None, description="comma-separated contracts; all if omitted"),
                      limit: int | None = limit_q, timeout: float | None = timeout_q,
                      format: str | None = fmt_q) -> Response:
        return gw.run_named(user, "black_scholes", request, lambda: named.black_scholes_query(
            syms, date, at, rate, div, contracts, today(), calendar.close_ns, time.time_ns()),
            limit=limit, timeout=timeout, fmt=format)


def _streaming_routes(app: FastAPI, gw: Gateway) -> None:
    """Live subscriptions (the Query Manager), authorised like queries."""
    from gateway.streaming import make_router
    from gateway.subscriptions import Hub

    hub = Hub(gw.settings)
    app.state.hub = gw.hub = hub

    def allowed(request: Any, source: str) -> None:
        """Only whole-table grants subscribe to a table, or to an engine's output computed
        from the tables: a live feed is not filtered by column or row (a restricted user
        queries instead)."""
        check_subscription(user_of(request), source, gw.table_columns, derived_from=gw.catalog.names)

    def admin_only(request: Any) -> None:
        """Who subscribes to what is the operators' to see, not other users'."""
        user = user_of(request)
        if not user.admin:
            raise Forbidden(f"user {user.name!r} is not an admin: the hub's subscriptions are for operators")

    app.include_router(make_router(hub, authorize=allowed, inspect=admin_only))
