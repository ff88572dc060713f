"""One SQL over today and history: the RDB's rows and the HDB's partitions in one ClickHouse query.

For each reference to a plant table the engine works out the days, syms and
columns it needs (gateway/plan.py), fetches the real-time days' rows for
those syms and columns from the RDB replica that is least busy, in parallel
across its shards (gateway/routing.py), and replaces the reference with

    (SELECT cols, date FROM <HDB days' Parquet> UNION ALL SELECT cols, date FROM <RDB rows>) AS t

before ClickHouse runs the statement: joins across today and history, an aj
of today's trades on quotes, a 30-day bar series ending now, are then plain
ClickHouse over one table.

Which copy of a day answers: a day the HDB has published (its manifest
exists) comes from the HDB, whatever the RDB still holds; every other day in
range that the control topic says is open or closed-not-yet-published comes
from the RDB. The HDB is listed *after* the RDB answered: the RDB drops a
day only after the PDB published it, so a day missing from the RDB's answer
for that reason is always in the listing.

The RDB rows reach embedded chDB as the Arrow tables they arrived as, read in
place; a ClickHouse server gets them as external data (gateway/sources.py). Each
real-time day is its own table, its ``date`` a constant of the SQL, its strings
low-cardinality (the dictionaries they arrive as). The HDB's files are read with
plain strings, the cheaper read (sinks.hdb.FILE_STRINGS), so an Arrow answer's
strings are dictionaries from today alone and plain otherwise; the values are the
same. Fetching the rows: gateway/rdbfetch.py; what a failure tells the caller:
gateway/failures.py.

Fixed costs per query are kept off the path: a statement is planned once per
user and open day (``plan``: parsed, authorised, its needs read, its SQL
written; gateway/app.py keeps the plans), the references of a statement (an
aj's trades and quotes) are fetched at the same time, a route to one node is
fetched without a hop through the pool.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.exceptions import OperationalError
from sqlglot import exp

from gateway import pushdown
from gateway.endpoints import Endpoints, NoEndpoint
from gateway.failures import EndpointDown, PartialRefused, QueryFailed, clickhouse_failure
from gateway.latest import as_fetched, latest_answer, latest_only
from gateway.plan import (
    TableNeed,
    column_names,
    columns_needed,
    need_of,
    plant_tables,
    replace_today,
)
from gateway.planned import Answer, Plan, PlannedRef
from gateway.pushdown import Split
from gateway.querylog import TABLE as QUERY_LOG_TABLE
from gateway.querylog import QueryLog
from gateway.rdbfetch import FinalAsk, PartialAsk, RdbFetch
from gateway.routing import Routing
from gateway.sources import merged_sources, table_source
from gateway.sql import cte_names, render
from ingest.schemas import SchemaCatalog
from ingest.seq import SEQ
from sinks.hdb import ClientPool, HdbQuery, PoolBusy
from streams.partial import typed_source
from tickplant.config import Settings

log = logging.getLogger(__name__)

HDB_LIST_SECONDS = 5.0
_NONCE = secrets.token_hex(8)  # in the placeholder names of a plan's sources


class Engine:
    def __init__(self, settings: Settings, routing: Routing, hdb: HdbQuery | None = None,
                 catalog: SchemaCatalog | None = None, query_log: QueryLog | None = None):
        self.settings = settings
        self.routing = routing
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.hdb = hdb or HdbQuery(settings, catalog=self.catalog)
        self.query_log = query_log
        self.endpoints = Endpoints(self.hdb.pools)
        # embedded chDB reads the RDB rows in place, a server gets them as external data;
        # None: as the endpoint chosen is (tests force the server's way on chDB)
        self.in_memory: bool | None = None
        self.pushdown = settings.gateway_pushdown
        # a split's final SQL, its merges typed, and its keys' types (probed once)
        self._merges: dict[Split, tuple[str, list[str]]] = {}
        self.rdb = RdbFetch(settings, routing, self.catalog)
        # one task per extra table reference of a statement; separate from ``pool``, whose
        # node fetches those tasks wait on (one pool would deadlock when full of waiters)
        self.ref_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gateway-ref")
        self._hdb_days: dict[str, tuple[int, float, list[dt.date]]] = {}

    @property
    def tables(self) -> dict[str, list[str]]:
        """Each plant table's columns, ``date`` included (what entitlements check against)."""
        return {t.name: [*t.stored_columns, "date"] for t in self.catalog}  # seq: ingest.seq

    def hdb_dates(self, table: str, fresh: bool = False) -> list[dt.date]:
        """The HDB's days of ``table``: listed at most every ``HDB_LIST_SECONDS`` and at once
        when the control topic announces a new one; ``fresh`` lists now (a closed day was
        just read from the RDB: it may have been published, and dropped, meanwhile)."""
        version = self.routing.published_version()
        cached = self._hdb_days.get(table)
        now = time.monotonic()
        if fresh or cached is None or cached[0] != version or now - cached[1] > HDB_LIST_SECONDS:
            cached = (version, now, self.hdb.dates(table))
            self._hdb_days[table] = cached
        return cached[2]

    def open_date(self) -> dt.date:
        return self.routing.open_date() or dt.datetime.now(dt.UTC).date()

    # -- running a statement --------------------------------------------------------------------

    def plan(self, ast: exp.Expression, open_date: dt.date | None = None) -> Plan:
        """What a parsed, authorised SELECT needs, and its SQL with a placeholder per table
        reference (the tree is consumed: rewritten in place). A plan holds nothing of the
        data, so it is reused for the same statement, user and open day (gateway/app.py)."""
        ast = replace_today(ast, open_date or self.open_date())
        # Each reference becomes a placeholder name, swapped for its source in the SQL
        # text when run: the generated SQL never goes through the parser.
        refs = plant_tables(ast, set(self.catalog.tables))
        named = column_names(ast) if refs else None
        # ``*`` reads the Avro columns; ``seq`` (ingest.seq) too when the statement names it
        star_seq = bool(refs) and named is None and any(c.name == SEQ for c in ast.find_all(exp.Column))
        keyed = []
        for i, ref in enumerate(refs):
            need = need_of(ref)
            stored = self.catalog[ref.name].stored_columns
            columns = columns_needed(ast, stored, named) or (stored if star_seq else None)
            key = (ref.name, frozenset(need.syms) if need.syms is not None else None,
                   tuple(columns or ()), need.dates.lo, need.dates.hi,
                   frozenset(need.dates.days) if need.dates.days is not None else None)
            keyed.append(PlannedRef(_swap(ref, i), need, columns, key))
        logs: list[Any] = []
        for ref in _query_log_refs(ast):
            if self.query_log is None:
                raise QueryFailed(400, "this gateway keeps no query log")
            logs.append(_swap(ref, len(keyed) + len(logs)))
        sql = render(ast)
        for placeholder in [r.placeholder for r in keyed] + logs:
            if sql.count(placeholder) != 1:  # each source goes in exactly where its reference was
                raise QueryFailed(400, "the statement could not be planned")
        split: Split | None = None
        latest = False
        fetched_only = None
        if keyed and not logs:
            latest = len(keyed) == 1 and latest_only(ast, keyed[0].placeholder)
            if latest:
                fetched_only = as_fetched(ast, keyed[0].placeholder, self.catalog[keyed[0].need.table].columns)
            known: set[str] = {"date"}.union(*(self.catalog[r.need.table].stored_columns for r in keyed))
            split = None if latest else pushdown.split(ast, [r.placeholder for r in keyed],
                                                       f"__tickplant_partials_{_NONCE}__", known)
        return Plan(sql, tuple(keyed), tuple(logs), split, latest, fetched_only)

    def run(self, ast: exp.Expression, limit: int | None = None, timeout: float | None = None,
            settings: dict[str, Any] | None = None, rdb_view: str = "rows", keep_rows: bool = False) -> Answer:
        """Run a parsed, authorised SELECT (the tree is rewritten in place): ``plan`` then ``execute``."""
        started = time.monotonic()
        plan = self.plan(ast)
        return self.execute(plan, limit, timeout, settings, rdb_view, keep_rows,
                            planned=time.monotonic() - started)

    def execute(self, plan: Plan, limit: int | None = None, timeout: float | None = None,
                settings: dict[str, Any] | None = None, rdb_view: str = "rows", keep_rows: bool = False,
                planned: float = 0.0) -> Answer:
        """Run a plan: ``rdb_view="last"`` fetches only each sym's latest real-time row (enough
        for statements that keep the last row per sym). ``keep_rows`` hands back the RDB rows
        (``Answer.tables`` / ``Answer.external``) for the caller to run ``Answer.sql`` again
        (benchmarks); ``planned`` is the seconds spent planning, for the timing. A split that
        fails otherwise than as the statement's own fault (a node's partial in a form the merge
        did not expect, mid-rebalance) runs again unsplit: the split is only ever a shortcut."""
        args = (plan, limit, timeout, settings, rdb_view, keep_rows, planned)
        if plan.split is None:
            return self._run_plan(*args, split_ok=False)
        try:
            return self._run_plan(*args, split_ok=True)
        except (QueryFailed, EndpointDown):
            raise
        except Exception:  # noqa: BLE001 - logged whole; the unsplit run answers
            log.exception("a split statement failed; running it unsplit")
            return self._run_plan(*args, split_ok=False)

    def _run_plan(self, plan: Plan, limit: int | None, timeout: float | None, settings: dict[str, Any] | None,
                 rdb_view: str, keep_rows: bool, planned: float, split_ok: bool) -> Answer:
        started = time.monotonic()
        limit = min(limit or self.settings.gateway_row_limit, self.settings.gateway_row_limit)
        timeout = min(timeout or self.settings.gateway_timeout_s, self.settings.gateway_timeout_s)
        deadline = started - planned + timeout
        touched: dict[str, Any] = {}
        timing = {"rdb": 0.0, "sources": 0.0, "clickhouse": 0.0}
        t0 = time.monotonic()
        if plan.latest and rdb_view == "rows":
            rdb_view = "last"
        split = self._usable_split(plan, rdb_view) if split_ok else None
        fetched = None
        if split is not None:
            whole = None if keep_rows or settings else self._whole_ask(plan, limit)
            try:
                fetched = self._partials(plan, split, deadline, whole)
                parts, hdb_days, info = fetched[plan.refs[0].key]
                if info["final"] and not hdb_days and len(parts) == 1:  # one node answered it all
                    timing["rdb"] = time.monotonic() - t0
                    for ref in plan.refs:
                        touched.setdefault(ref.need.table, []).append(info)
                    table = self._within_limits(parts[0][1], limit)
                    timing["plan"] = planned + time.monotonic() - started - sum(timing.values())
                    return Answer(table, time.monotonic() - started + planned, touched, sql=plan.sql,
                                  timing=timing, split=True)
                if info["final"]:  # a day published meanwhile: partials, merged with the HDB's
                    fetched = self._partials(plan, split, deadline, None)
            except PartialRefused as exc:  # the split did not run where the rows are: unsplit
                log.info("a node refused a statement's partial, running it unsplit: %s", exc)
                split = None
                fetched = None
        if fetched is None:
            fetched = self._realtime_all({r.key: (r.need, r.columns) for r in plan.refs}, rdb_view, deadline)
        timing["rdb"] = time.monotonic() - t0
        if split is not None and not any(fetched[r.key][0] for r in plan.refs):
            split = None  # no rows today: the statement as written, over the HDB alone
        for ref in plan.refs:
            touched.setdefault(ref.need.table, []).append(fetched[ref.key][2])
        answered = self._as_fetched(plan, fetched) if plan.as_fetched is not None and rdb_view == "last" \
            and not keep_rows else None
        if answered is not None:  # the latest rows are the answer: no statement to run
            timing["plan"] = planned + time.monotonic() - started - sum(timing.values())
            return Answer(self._within_limits(answered, limit), time.monotonic() - started + planned, touched,
                          timing=timing)
        tried: list[ClientPool] = []
        while True:  # the least busy ClickHouse endpoint, the next one if it does not answer
            try:
                endpoint = self.endpoints.choose(tried)
            except NoEndpoint as exc:
                raise QueryFailed(503, f"{exc}; retry shortly") from None
            tried.append(endpoint)
            try:
                t0 = time.monotonic()
                in_memory = endpoint.in_process if self.in_memory is None else self.in_memory
                if split is not None:
                    sql, tables, external = merged_sources(plan.refs[0], split, fetched, in_memory, self._merges[split],
                                                                    self.catalog, self.hdb)
                else:
                    sql, tables, external = self._sources(plan, fetched, in_memory, latest=rdb_view == "last")
                timing["sources"] += time.monotonic() - t0
                if deadline <= time.monotonic():
                    raise QueryFailed(408, f"query exceeded its timeout of {timeout:g} s fetching real-time rows")
                t0 = time.monotonic()
                table = self._execute(endpoint, sql, limit, deadline, timeout, settings, tables, external)
                timing["clickhouse"] += time.monotonic() - t0
                break
            except EndpointDown as exc:
                log.warning("ClickHouse endpoint %s did not answer (%s); benched", endpoint.url, exc)
                self.endpoints.bench(endpoint)
            finally:
                self.endpoints.done(endpoint)
        timing["plan"] = planned + time.monotonic() - started - sum(timing.values())
        return Answer(table, time.monotonic() - started + planned, touched, sql=sql,
                      tables=tables if keep_rows else {}, external=external if keep_rows else {},
                      timing=timing, split=split is not None)

    def _usable_split(self, plan: Plan, rdb_view: str) -> Split | None:
        """The plan's split, if it pays: the RDB holds enough of the table's rows
        (``gateway_pushdown_rows``)."""
        split = plan.split
        if split is None or rdb_view != "rows" or not self.pushdown:
            return None
        tables = {r.need.table for r in plan.refs}
        if sum(self.routing.realtime_rows(t) for t in tables) < self.settings.gateway_pushdown_rows:
            return None
        if len(plan.refs) > 1 and not self._colocated(plan):
            return None
        if split not in self._merges:
            try:
                self._merges[split] = self._probe(plan, split)
            except Exception as exc:  # noqa: BLE001 - the statement then runs unsplit, as written
                log.info("a statement's split could not be typed, running it unsplit: %s", exc)
                return None
        return split

    def _whole_ask(self, plan: Plan, limit: int) -> FinalAsk | None:
        """The statement itself, for a node to answer when it alone holds every row read (the
        route says so, gateway/rdbfetch.py): every reference on the same one real-time day,
        no HDB day in range (listed again after the answer, as for rows)."""
        days = set()
        for ref in plan.refs:
            if any(ref.need.dates.accepts(d) for d in self.hdb_dates(ref.need.table)):
                return None
            days |= {d for d in self.routing.realtime_dates(ref.need.table) if ref.need.dates.accepts(d)}
        if len(days) != 1:
            return None
        return FinalAsk(plan.sql, limit + 1, (self.settings.gateway_max_result_mb << 20) + 1)

    def _colocated(self, plan: Plan) -> bool:
        """Whether a join's tables can be joined node by node: partitioned alike, and each
        read on one real-time day alone (the same one), no HDB day in range (a join across
        the RDB and the HDB, or across days, pairs rows that no one node holds)."""
        tables = {r.need.table for r in plan.refs}
        if len({self.routing.partition_count(t) for t in tables}) != 1:
            return False
        days = set()
        for ref in plan.refs:
            if any(ref.need.dates.accepts(d) for d in self.hdb_dates(ref.need.table)):
                return False
            days |= {d for d in self.routing.realtime_dates(ref.need.table) if ref.need.dates.accepts(d)}
        return len(days) == 1

    def _partials(self, plan: Plan, split: Split, deadline: float, whole: FinalAsk | None) -> dict[tuple, Any]:
        """Each node's partial of the split over its rows (every reference's, from the same
        partitions), fetched as ``_realtime`` fetches rows; under every reference's key.
        ``whole``: one node holding all the partitions answers the statement instead."""
        count = self.routing.partition_count(plan.refs[0].need.table)
        sources = tuple((r.placeholder, r.need.table, tuple(r.columns) if r.columns else None,
                         frozenset(r.need.syms) if r.need.syms is not None else None) for r in plan.refs)
        ask = PartialAsk(split, sources, count, whole)
        syms: set[str] | None = set()
        for ref in plan.refs:
            if ref.need.syms is None or syms is None:
                syms = None
            else:
                syms |= set(ref.need.syms)
        need = TableNeed(plan.refs[0].need.table, plan.refs[0].need.dates, syms)
        got = self._realtime(need, None, ask, deadline)
        return {r.key: got for r in plan.refs}

    def _probe(self, plan: Plan, split: Split) -> tuple[str, list[str]]:
        """The split's final SQL with its merges typed: the state types and the output names
        of the unsplit SELECT, read off the engine over no rows."""
        probe_pool = self.endpoints.pools[0]
        answers = []
        for sql in (split.probe, split.names):
            tables: dict[str, pa.Table] = {}
            for ref in plan.refs:
                schema = self.catalog[ref.need.table].stored_schema
                cols = list(ref.columns) if ref.columns else self.catalog[ref.need.table].columns  # seq if named
                source = typed_source(schema, cols, self.open_date(), schema.empty_table().select(cols), tables)
                sql = sql.replace(ref.placeholder, f"({source})")
            answers.append(probe_pool.run(sql, tables=tables))
        types = [answers[0].column(j)[0].as_py() for j in range(split.aggregates + split.keys)]
        final = pushdown.merge_sql(split.final, types[:split.aggregates], answers[1].schema.names, split.unnamed)
        return final, types[split.aggregates:]

    def _sources(self, plan: Plan, fetched: dict[tuple, Any], in_memory: bool, latest: bool = False
                 ) -> tuple[str, dict[str, pa.Table], dict[str, tuple[bytes, str, str]]]:
        """The plan's SQL with each placeholder replaced by its source, for an endpoint that
        reads the RDB rows in place (``in_memory``) or gets them as external data. ``latest``:
        the statement needs only each sym's latest row of a day (gateway/latest.py), so the
        HDB days that keep theirs apart (sinks.latest) are read from that file alone."""
        tables: dict[str, pa.Table] = {}  # RDB rows read in place by embedded chDB
        external: dict[str, tuple[bytes, str, str]] = {}  # ... or sent to a server as external data
        sources: dict[str, str] = {}
        for ref in plan.refs:
            rows, hdb_days, info = fetched[ref.key]
            latest_days = self.hdb.latest_dates(ref.need.table, hdb_days) if latest and hdb_days else set()
            info["hdb_latest_days"] = sorted(d.isoformat() for d in latest_days)
            sources[ref.placeholder] = table_source(self.catalog, self.hdb, ref.need.table, ref.columns, hdb_days,
                                                    rows, tables, external, in_memory, latest_days)
        for placeholder in plan.query_log:
            if self.query_log is None:
                raise QueryFailed(400, "this gateway keeps no query log")
            sources[placeholder] = self.query_log.source(None if in_memory else external)
        sql = plan.sql
        for placeholder, source in sources.items():
            sql = sql.replace(placeholder, source)
        return sql, tables, external

    def _execute(self, endpoint: ClientPool, sql: str, limit: int, deadline: float, timeout: float,
                 settings: dict[str, Any] | None, tables: dict[str, pa.Table],
                 external: dict[str, tuple[bytes, str, str]]) -> pa.Table:
        """Run on one ClickHouse endpoint within the deadline (the wait for a free client
        counts), the memory and result-size limits of one query. ``EndpointDown`` if it
        cannot be reached."""
        max_bytes = self.settings.gateway_max_result_mb << 20
        run_settings = {
            "max_result_rows": limit + 1,
            "max_result_bytes": max_bytes + 1,
            "result_overflow_mode": "break",
            "max_memory_usage": self.settings.gateway_max_memory_mb << 20,
            **(settings or {}),
        }
        try:
            table = endpoint.run(sql, run_settings, tables=tables, external=external, deadline=deadline)
        except OperationalError as exc:  # no answer at all: the network or the server is down
            raise EndpointDown(str(exc).split("\n")[0][:300]) from None
        except PoolBusy:
            raise QueryFailed(408, f"query exceeded its timeout of {timeout:g} s waiting for the "
                                   "query engine (the gateway is busy)") from None
        except Exception as exc:  # the driver's DatabaseError: one line, mapped to a status
            message = str(exc).strip().split("\n")[0]
            if "TIMEOUT_EXCEEDED" in message or "Timeout exceeded" in message:
                raise QueryFailed(408, f"query exceeded its timeout of {timeout:g} s") from None
            if "MEMORY_LIMIT_EXCEEDED" in message and ("(for query)" in message or "Query memory limit" in message):
                raise QueryFailed(413, f"the query needs more than {self.settings.gateway_max_memory_mb} MiB "
                                       "of memory (gateway_max_memory_mb); narrow it") from None
            raise clickhouse_failure(message) from None
        return self._within_limits(table, limit)

    def _as_fetched(self, plan: Plan, fetched: dict[tuple, Any]) -> pa.Table | None:
        """An ``as_fetched`` plan's answer from the latest rows of the one day it reads: the
        RDB's, as fetched, or an HDB day's file of them. None otherwise (several days, or a
        day with no such file): the statement runs then."""
        ref = plan.refs[0]
        parts, hdb_days, info = fetched[ref.key]
        schema = self.catalog[ref.need.table].stored_schema
        if len(parts) == 1 and not hdb_days:
            day, rows = parts[0]
            return latest_answer(rows, day, schema, plan.as_fetched or ())
        if len(hdb_days) != 1 or parts:
            return None
        rows = self.hdb.latest_rows(ref.need.table, hdb_days[0])
        if rows is None:
            return None
        answer = latest_answer(rows, hdb_days[0], schema, plan.as_fetched or (), ref.need.syms, dictionaries=False)
        if answer is not None:
            info["hdb_latest_days"] = [hdb_days[0].isoformat()]
        return answer

    def _within_limits(self, table: pa.Table, limit: int) -> pa.Table:
        """``table``, unless it is bigger than an answer may be (413)."""
        if table.nbytes > self.settings.gateway_max_result_mb << 20:
            raise QueryFailed(413, f"the result is larger than {self.settings.gateway_max_result_mb} MiB "
                                   "(gateway_max_result_mb); narrow the query or add a LIMIT")
        if table.num_rows > limit:
            raise QueryFailed(413, f"the result has more than {limit} rows (the row limit); "
                                   "narrow the query or add a LIMIT")
        return table

    # -- sources ----------------------------------------------------------------------------------

    def _realtime_all(self, needs: dict[tuple, tuple[TableNeed, list[str] | None]], view: str | PartialAsk,
                      deadline: float) -> dict[tuple, tuple[list[tuple[dt.date, pa.Table]], list[dt.date], dict[str, Any]]]:
        """``_realtime`` for each distinct reference, at the same time (an aj's trades and
        quotes): the first in this thread, the others on the reference pool. Each one lists
        the HDB after its own RDB answer, so the day-boundary argument holds per reference."""
        keys = list(needs)
        if not keys:
            return {}
        futures = {k: self.ref_pool.submit(self._realtime, *needs[k], view, deadline) for k in keys[1:]}
        out = {keys[0]: self._realtime(*needs[keys[0]], view, deadline)}
        for k, future in futures.items():
            out[k] = future.result()
        return out

    def _realtime(self, need: TableNeed, columns: list[str] | None, view: str | PartialAsk,
                  deadline: float) -> tuple[list[tuple[dt.date, pa.Table]], list[dt.date], dict[str, Any]]:
        """Rows of each real-time day in range (day, rows), and the HDB days in range,
        listed after the RDB answered (see the module docstring)."""
        days = sorted(d for d in self.routing.realtime_dates(need.table) if need.dates.accepts(d))
        if isinstance(view, PartialAsk) and len(days) != 1:
            view = dataclasses.replace(view, final=None)  # a statement's result is of every day
        parts: list[tuple[dt.date, pa.Table]] = []
        replicas: set[str] = set()
        final = False
        for day in days:
            table, replica, final = self.rdb.fetch(need, columns, day, view, deadline)
            replicas.add(replica)
            if table.num_rows or final:  # a result of no rows is an answer too
                parts.append((day, table))
        closed = [d for d in days if d != self.routing.open_date()]
        hdb_days = [d for d in self.hdb_dates(need.table, fresh=bool(closed)) if need.dates.accepts(d)]
        published = set(hdb_days)
        parts = [(day, rows) for day, rows in parts if day not in published]
        info = {"hdb_days": [d.isoformat() for d in hdb_days],
                "rdb_days": [d.isoformat() for d in days if d not in published],
                "hdb_latest_days": [],  # those read from their file of each sym's latest row (``_sources``)
                "rdb_rows": sum(rows.num_rows for _, rows in parts),
                "replicas": sorted(r for r in replicas if r), "final": final}
        return parts, hdb_days, info

    def close(self) -> None:
        """Stop the fetch pools."""
        self.rdb.close()
        self.ref_pool.shutdown(wait=False)


def _swap(ref: exp.Table, index: int) -> str:
    """Replace a table reference by a placeholder name (keeping its alias); returns it. The
    name holds the reserved prefix no user name or string may (gateway.sql) and this
    process's random nonce: user text cannot produce it."""
    placeholder = f"__tickplant_source_{_NONCE}_{index}__"
    ref.replace(exp.Table(this=exp.to_identifier(placeholder),
                          alias=exp.TableAlias(this=exp.to_identifier(ref.alias_or_name))))
    return placeholder


def _query_log_refs(ast: exp.Expression) -> list[exp.Table]:
    ctes = cte_names(ast)
    return [t for t in ast.find_all(exp.Table)
            if not t.args.get("db") and t.name == QUERY_LOG_TABLE and t.name not in ctes]
