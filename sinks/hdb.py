"""HDB queries: ClickHouse SQL over the published Parquet partitions.

Through clickhouse-connect either way: ``clickhouse_url = "chdb://"`` (the
default) runs ClickHouse embedded in this process (clickhouse-connect's chDB
backend), ``http(s)://host:8123`` a ClickHouse server; the SQL is the same.
(A server reads an S3 root as it is; a local root only if the server sees the
same path.)

A table is read through a table function over exactly the days that have a
manifest, ``<root>/<table>/date={d1,d2,...}/*.parquet``, with the column types
given (no schema inference) and ``date`` from the path (hive partitioning).
A half-written partition is never in the list, and a ``date`` predicate prunes
whole directories before a file is opened; within a day, the row groups'
sym statistics skip every sym not asked for. A statement that needs only each
sym's latest row reads, of the days whose manifest names one, the small file
of those rows instead (``source_days(..., latest=)``, sinks/latest.py).

In ``HdbQuery.sql`` a table is written ``{trade}``: it expands to all of the
table's history, with its ``date`` column; ``source`` gives the same for a
date range. Helpers: ``table`` (rows of some syms over a date range), ``aj``
(kdb+'s as-of join of trades to quotes: for each trade the latest quote of
its sym at or before its time, same date; never a later one), ``bars``
(OHLC, volume and VWAP per sym per interval) and ``vwap`` (per sym per day).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.schemas import SchemaCatalog
from ingest.seq import SEQ
from sinks.analytics_sql import (
    AJ_SETTINGS,
    HdbQueryError,
    aj_sql,
    bars_sql,
    quote,
    sym_filter,
    vwap_sql,
)
from sinks.manifest import LATEST_FILE, ManifestError
from sinks.store import HdbStore, StoreError
from tickplant.config import Settings

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CH_TYPES = {
    pa.int64(): "Int64", pa.int32(): "Int32", pa.float64(): "Float64", pa.float32(): "Float32",
    pa.string(): "String", pa.bool_(): "Bool", pa.binary(): "String",
}


class PoolBusy(TimeoutError):
    """No ClickHouse client was free before the caller's deadline."""


def _date(value: dt.date | str | None) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise HdbQueryError(f"date {value!r} is not YYYY-MM-DD") from None


# How a day's files declare their string columns when read. The files hold them
# dictionary-encoded, but ClickHouse's Parquet reader turns those pages into plain strings
# faster than into LowCardinality: declared LowCardinality, an aggregate or join over the
# day pays the conversion on every row read (bench/peer.py, the history lines).
FILE_STRINGS = "String"


def clickhouse_structure(schema: pa.Schema, strings: str = "LowCardinality(String)") -> str:
    """The ClickHouse column list for a table's Arrow schema (strings as ``strings``:
    LowCardinality for Arrow rows, whose dictionaries chDB reads as they are)."""
    cols = []
    for f in schema:
        if pa.types.is_timestamp(f.type):
            t = "DateTime64(9, 'UTC')"
        elif pa.types.is_string(f.type):
            t = strings  # sym, exchange, conditions: few distinct values
        else:
            try:
                t = _CH_TYPES[f.type]
            except KeyError:
                raise HdbQueryError(f"column {f.name!r} has type {f.type} with no ClickHouse mapping") from None
        cols.append(f"`{f.name}` {f'Nullable({t})' if f.nullable else t}")
    return ", ".join(cols)


# ``seq`` (ingest.seq) as read from a day's files. Files written before it existed lack the
# column (read as NULL: ``_readable``): their rows get ``file number << 40 | row number in the
# file``, which orders a sym's rows as the file does, and the write-down laid them in log order
# (a stable sort by sym, time). A day's files are all of one kind, and ``seq`` is compared
# only within a day and sym, so the two never meet.
SEQ_OF_FILE = (f"coalesce(`{SEQ}`, bitShiftLeft(toInt64OrZero(extract(_file, '[0-9]+')), 40) + "
               f"toInt64(_row_number)) AS `{SEQ}`")


def _readable(schema: pa.Schema) -> pa.Schema:
    """The schema files are read with: ``seq`` nullable, so that a file without it says so."""
    i = schema.get_field_index(SEQ)
    return schema if i < 0 else schema.set(i, schema.field(i).with_nullable(True))


# Results come back as Arrow: low-cardinality strings as dictionaries (as they are in the
# files; decoding them to 10M plain strings costs more than the join), uncompressed (in-process).
CLIENT_SETTINGS = {
    "output_format_arrow_low_cardinality_as_dictionary": 1,
    "output_format_arrow_compression_method": "none",
    "use_hive_partitioning": 1,  # `date` from the path (the default on recent servers; older ones need it)
}
# Clients (so queries at once) per URL: well more than the cores and than one user may hold
# (gateway_user_queries), so that a small query (``last``) shares the CPU with long ones (an
# aj over 30 days, one user's cross joins) instead of queueing behind them, and a client's
# own Python work around its query (under a busy GIL) overlaps other queries.
POOL_SIZE = max(8, 4 * (os.cpu_count() or 2))


class ClientPool:
    """clickhouse-connect clients for one URL, leased one per query.

    One chDB client runs one query at a time (it holds a lock for the whole
    call), so answering several users at once takes several clients; and
    per-call settings cost the chDB backend a SET and a restore around every
    query (about 10 ms), so pooled clients carry none: ``run`` sends the
    settings inline, as a SETTINGS clause.
    """

    def __init__(self, url: str, size: int = POOL_SIZE):
        if not url.startswith(("chdb:", "http://", "https://")):
            raise HdbQueryError(f"clickhouse_url {url!r} is neither chdb:// nor http(s)://")
        self.url = url
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.Semaphore(size)

    def _new(self) -> Any:
        import clickhouse_connect

        extra: dict[str, Any] = {} if self.url.startswith("chdb:") else {"autogenerate_session_id": False}  # concurrent queries
        return clickhouse_connect.get_client(dsn=self.url, **extra)

    @contextmanager
    def lease(self, wait: float | None = None) -> Iterator[Any]:
        """A client for one query; ``wait``: at most this long for one to be free (else
        ``PoolBusy``), so that a caller's deadline counts the wait for the engine."""
        if not self._slots.acquire(timeout=wait):
            raise PoolBusy(f"every ClickHouse client of {self.url} stayed busy for {wait:g} s")
        try:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                client = self._new()
            try:
                yield client
            except BaseException:
                # A chDB client that failed mid-query (a timeout) hands its next caller a
                # corrupt answer ("Invalid flatbuffers message"): never reuse one.
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - it is being thrown away
                    pass
                raise
            self._idle.put(client)
        finally:
            self._slots.release()

    @property
    def in_process(self) -> bool:
        """Embedded chDB: the statement may read Arrow tables of this process (``tables``)."""
        return self.url.startswith("chdb:")

    def run(self, sql: str, settings: dict[str, Any] | None = None, parameters: dict[str, Any] | None = None,
            tables: Mapping[str, pa.Table] | None = None,
            external: Mapping[str, tuple[bytes, str, str]] | None = None,
            deadline: float | None = None) -> pa.Table:
        """``sql`` (a statement without a SETTINGS clause: the gateway refuses one from a
        user) run with ``CLIENT_SETTINGS`` and ``settings`` inline, as Arrow. ``tables``: Arrow tables the statement
        reads as ``Python(<name>)`` (embedded chDB only), see ``_query``. ``external``: tables
        the statement reads by name, sent with it as ClickHouse external data (name ->
        (data, its ClickHouse format, structure)), how a server gets rows it cannot read itself;
        embedded chDB, which takes no external data, reads the same bytes from a file.
        ``deadline`` (``time.monotonic()``): the wait for a free client counts, and the query
        gets what is left as its ``max_execution_time``."""
        if tables and not self.in_process:
            raise HdbQueryError(f"in-memory tables need the embedded chDB, not {self.url}")
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        with self.lease(wait) as client:
            merged = {**CLIENT_SETTINGS, **(settings or {})}
            if deadline is not None:
                merged["max_execution_time"] = max(1, math.ceil(deadline - time.monotonic()))
            text = f"{sql.rstrip().rstrip(';')}\nSETTINGS {settings_clause(merged)}"
            if external and self.in_process:  # chDB takes no external data: the same bytes from files
                with tempfile.TemporaryDirectory(prefix="tickplant-external-") as spill:
                    return _query(client, _external_as_files(text, external, spill), parameters, tables or {})
            return _query(client, text, parameters, tables or {}, _external_data(external))


def _external_data(external: Mapping[str, tuple[bytes, str, str]] | None) -> Any:
    """clickhouse-connect's ExternalData for a server, or None."""
    if not external:
        return None
    from clickhouse_connect.driver.external import ExternalData

    data = ExternalData()
    for name, (body, fmt, structure) in external.items():
        data.add_file(file_name=f"{name}.data", data=body, fmt=fmt, structure=structure)
    return data


def _external_as_files(sql: str, external: Mapping[str, tuple[bytes, str, str]], directory: str) -> str:
    """External data for chDB: each table's bytes in a file, its name in ``sql`` replaced by
    ``file()`` with the same format and structure a server would be told."""
    for name, (body, fmt, structure) in external.items():
        if not re.fullmatch(r"__tickplant_\w+", name):
            raise HdbQueryError(f"external table name {name!r} is not one of the gateway's")
        path = os.path.join(directory, f"{name}.data")
        with open(path, "wb") as f:
            f.write(body)
        sql = re.sub(rf"\b{name}\b", f"file({quote(path)}, {quote(fmt)}, {quote(structure)})", sql)
    return sql


# chDB's ``Python(name)`` table function finds ``name`` by walking the calling thread's
# stack frames; a frame run by ``exec`` with a dict of locals has exactly those names, so
# each call sees its own tables under any names, with nothing published process-wide.
_QUERY = compile("answer = client.query_arrow(text, parameters=parameters)",
                 "<tickplant-python-tables>", "exec")


def _query(client: Any, text: str, parameters: dict[str, Any] | None,
           tables: Mapping[str, pa.Table], external: Any = None) -> pa.Table:
    if not tables:
        return client.query_arrow(text, parameters=parameters, external_data=external)
    bad = [n for n in tables if not n.isidentifier() or n in _QUERY.co_names]
    if bad:
        raise HdbQueryError(f"in-memory table name(s) {', '.join(map(repr, bad))} are not free identifiers")
    scope = {**tables, "client": client, "text": text, "parameters": parameters}
    exec(_QUERY, {"__builtins__": {}}, scope)  # noqa: S102 - fixed code; the tables are data
    return scope["answer"]


def settings_clause(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {quote(v) if isinstance(v, str) else int(v) if isinstance(v, bool) else v}"
                     for k, v in settings.items())


_pools: dict[str, ClientPool] = {}
_pools_lock = threading.Lock()


def pool(url: str) -> ClientPool:
    """The process's client pool for ``url`` (``chdb://`` embedded, else a server)."""
    url = url or "chdb://"
    with _pools_lock:
        if url not in _pools:
            _pools[url] = ClientPool(url)
        return _pools[url]


class HdbQuery:
    """Queries over the HDB root of ``settings`` (``settings.clickhouse_url`` runs them)."""

    def __init__(self, settings: Settings, store: HdbStore | None = None, catalog: SchemaCatalog | None = None):
        self.settings = settings
        self.store = store or HdbStore.from_settings(settings)
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self.pools = [pool(url) for url in settings.clickhouse_endpoints]  # the gateway's HDB query pool
        self._latest_lock = threading.Lock()
        self._stamps: dict[str, dict[dt.date, str]] = {}  # table -> day -> its manifest's stamp, as last listed
        self._latest: dict[tuple[str, dt.date], tuple[str, bool]] = {}  # (table, day) -> (stamp, has a latest file)
        self.pool = self.pools[0]  # where queries of the plant's own tools run

    # -- sources ------------------------------------------------------------------

    def dates(self, table: str, start: dt.date | str | None = None, end: dt.date | str | None = None) -> list[dt.date]:
        """Published days of ``table`` within [start, end] (inclusive; None: unbounded)."""
        lo, hi = _date(start), _date(end)
        published = self.store.published(table)
        with self._latest_lock:
            self._stamps[table] = published
        return [d for d in sorted(published) if (lo is None or d >= lo) and (hi is None or d <= hi)]

    def latest_dates(self, table: str, dates: Sequence[dt.date]) -> set[dt.date]:
        """Those of ``dates`` whose manifest names a file of each sym's latest row
        (``sinks.latest``). A day's manifest is read once per stamp ``dates`` last listed
        (once a day was written again, its new manifest is read); a day that cannot be
        read is left to be read whole."""
        out = set()
        for day in dates:
            with self._latest_lock:
                stamp = self._stamps.get(table, {}).get(day)
                known = self._latest.get((table, day))
            if known is not None and stamp is not None and known[0] == stamp:
                has = known[1]
            else:
                try:
                    manifest = self.store.manifest(table, day)
                except (StoreError, ManifestError):
                    manifest = None
                has = manifest is not None and manifest.latest is not None
                if stamp is not None:
                    with self._latest_lock:
                        self._latest[(table, day)] = (stamp, has)
            if has:
                out.add(day)
        return out

    def _location(self, table: str, dates: Sequence[dt.date], files: str = "*.parquet") -> str:
        """The table function reading these days' ``files`` (the day's data: ``*.parquet``)."""
        days = ",".join(d.isoformat() for d in dates)
        glob = f"{table}/date={{{days}}}/{files}"
        structure = quote(clickhouse_structure(_readable(self.catalog[table].stored_schema), FILE_STRINGS))
        if not self.store.is_s3:
            return f"file({quote(self.store.base + '/' + glob)}, 'Parquet', {structure})"
        key = f"{self.store.prefix}/{glob}" if self.store.prefix else glob
        if self.store.s3_endpoint:
            endpoint = self.store.s3_endpoint if "://" in self.store.s3_endpoint else f"http://{self.store.s3_endpoint}"
            url = f"{endpoint}/{self.store.bucket}/{key}"
        else:
            url = f"https://{self.store.bucket}.s3.{self.store.s3_region}.amazonaws.com/{key}"
        access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        token = os.environ.get("AWS_SESSION_TOKEN")  # a role's credentials (Lambda, ECS, SSO) carry one
        creds = f"{quote(access)}, {quote(secret)}, " if access and secret else ""
        if creds and token:
            creds += f"{quote(token)}, "
        return f"s3({quote(url)}, {creds}'Parquet', {structure})"

    def latest_rows(self, table: str, day: dt.date) -> pa.Table | None:
        """The day's file of each sym's latest row (``sinks.latest``), or None when the day
        keeps none (``latest_dates``) or it cannot be read here: a statement reads the day
        then, and says what is wrong with it."""
        if day not in self.latest_dates(table, [day]):
            return None
        try:
            data = self.store.read_bytes(f"{self.store.partition_dir(table, day)}/{LATEST_FILE}")
            return pq.read_table(pa.BufferReader(data))
        except (OSError, pa.ArrowException, StoreError):
            return None

    def source(self, table: str, start: dt.date | str | None = None, end: dt.date | str | None = None,
               columns: Sequence[str] | None = None) -> str:
        """A FROM-able subquery: ``table``'s published days in [start, end], with ``date``."""
        self._check(table, columns)
        return self.source_days(table, self.dates(table, start, end), columns)

    def source_days(self, table: str, dates: Sequence[dt.date], columns: Sequence[str] | None = None,
                    latest: Collection[dt.date] = ()) -> str:
        """The same over exactly these published days (the gateway picks them); of the days
        in ``latest`` (``latest_dates``), only each sym's latest row (``sinks.latest``)."""
        schema = self._check(table, columns)
        cols = list(columns) if columns else self.catalog[table].columns  # seq when named (ingest.seq)
        if not dates:
            select = ", ".join(f"`{c}`" for c in cols if c != "date")
            structure = quote(clickhouse_structure(schema, FILE_STRINGS))  # typed as files are read
            return f"(SELECT {select}, toDate(0) AS date FROM null({structure}))"
        select = ", ".join(SEQ_OF_FILE if c == SEQ else f"`{c}`" for c in cols if c != "date")
        whole = [d for d in dates if d not in latest]
        last = [d for d in dates if d in latest]
        parts = [f"SELECT {select}, date FROM {self._location(table, whole)}"] if whole else []
        if last:
            parts.append(f"SELECT {select}, date FROM {self._location(table, last, LATEST_FILE)}")
        return f"({' UNION ALL '.join(parts)})"

    def _check(self, table: str, columns: Sequence[str] | None) -> pa.Schema:
        """The table's stored schema (its fields and ``seq``), once ``columns`` are checked."""
        if table not in self.catalog.tables:
            raise HdbQueryError(f"unknown table {table!r}; tables: {', '.join(self.catalog.names)}")
        schema = self.catalog[table].stored_schema
        unknown = [c for c in columns or () if c not in schema.names and c != "date"]
        if unknown:
            raise HdbQueryError(f"{table} has no column(s) {', '.join(unknown)}; columns: {', '.join(schema.names)}")
        return schema

    def expand(self, query: str) -> str:
        """``{table}`` placeholders replaced by the table's whole history."""
        def sub(m: re.Match) -> str:
            name = m.group(1)
            return self.source(name) if name in self.catalog.tables else m.group(0)
        return _PLACEHOLDER.sub(sub, query)

    # -- running -------------------------------------------------------------------

    def sql(self, query: str, parameters: dict[str, Any] | None = None,
            settings: dict[str, Any] | None = None) -> pa.Table:
        """Run ClickHouse SQL (``{trade}`` = the trade table's history) and return Arrow."""
        try:
            return self.pool.run(self.expand(query), settings, parameters)
        except HdbQueryError:
            raise
        except Exception as exc:  # the driver's DatabaseError: say it in one line
            raise HdbQueryError(str(exc).split("\n")[0]) from exc

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _syms(syms: Sequence[str] | str | None) -> str:
        return sym_filter(syms)

    def _range(self, start: dt.date | str | None, end: dt.date | str | None) -> tuple[dt.date | None, dt.date | None]:
        lo, hi = _date(start), _date(end)
        return lo, (hi if hi is not None or lo is None else lo)

    def table(self, table: str, start: dt.date | str | None = None, end: dt.date | str | None = None,
              syms: Sequence[str] | str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows of ``table`` for ``syms`` on the days [start, end] (one day if only start), by date, sym,
        time and publish order."""
        lo, hi = self._range(start, end)
        cols = ["date", *(columns or self.catalog[table].columns)]
        select = ", ".join(f"`{c}`" for c in dict.fromkeys(cols))
        read = list(dict.fromkeys([*cols[1:], "sym", "time", SEQ]))
        return self.sql(
            f"SELECT {select} FROM {self.source(table, lo, hi, read)} WHERE {self._syms(syms)} "
            f"ORDER BY date, sym, time, `{SEQ}`"
        )

    def aj(self, start: dt.date | str, end: dt.date | str | None = None, syms: Sequence[str] | str | None = None,
           trade: str = "trade", quote_table: str = "quote", trade_columns: Sequence[str] | None = None,
           quote_columns: Sequence[str] = ("bid", "ask"), ordered: bool = False) -> pa.Table:
        """kdb+'s ``aj[`sym`time; trade; quote]`` per date: see ``aj_sql``.

        Rows come in no set order unless ``ordered`` (by date, sym, time: about a second
        more for 10M rows on 2 cores).
        """
        lo, hi = self._range(start, end)
        tcols = list(trade_columns or self.catalog[trade].columns)
        sql = aj_sql(self.source(trade, lo, hi, self.catalog[trade].stored_columns),
                     self.source(quote_table, lo, hi, self.catalog[quote_table].stored_columns), tcols, quote_columns,
                     self._syms(syms), one_day=lo is not None and lo == hi, ordered=ordered)
        return self.sql(sql, settings=AJ_SETTINGS)

    def bars(self, syms: Sequence[str] | str | None, start: dt.date | str, end: dt.date | str | None = None,
             minutes: int = 1, table: str = "trade") -> pa.Table:
        """OHLC bars of ``minutes`` per sym: see ``bars_sql``."""
        lo, hi = self._range(start, end)
        return self.sql(bars_sql(self.source(table, lo, hi, ["sym", "time", "price", "size", SEQ]),
                                 self._syms(syms), minutes))

    def vwap(self, syms: Sequence[str] | str | None, start: dt.date | str, end: dt.date | str | None = None,
             table: str = "trade") -> pa.Table:
        """Volume-weighted average price per sym per day."""
        lo, hi = self._range(start, end)
        return self.sql(vwap_sql(self.source(table, lo, hi, ["sym", "price", "size"]), self._syms(syms)))
