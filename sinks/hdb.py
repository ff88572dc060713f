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
sym statistics skip every sym not asked for.

In ``HdbQuery.sql`` a table is written ``{trade}``: it expands to all of the
table's history, with its ``date`` column; ``source`` gives the same for a
date range. Helpers: ``table`` (rows of some syms over a date range), ``aj``
(kdb+'s as-of join of trades to quotes: for each trade the latest quote of
its sym at or before its time, same date; never a later one), ``bars``
(OHLC, volume and VWAP per sym per interval) and ``vwap`` (per sym per day).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ingest.schemas import SchemaCatalog
from sinks.store import HdbStore
from tickplant.config import Settings

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CH_TYPES = {
    pa.int64(): "Int64", pa.int32(): "Int32", pa.float64(): "Float64", pa.float32(): "Float32",
    pa.string(): "String", pa.bool_(): "Bool", pa.binary(): "String",
}


class HdbQueryError(ValueError):
    """A query could not be built or run; the message says why."""


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _date(value: dt.date | str | None) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise HdbQueryError(f"date {value!r} is not YYYY-MM-DD") from None


def clickhouse_structure(schema: pa.Schema) -> str:
    """The ClickHouse column list for a table's Arrow schema (strings as LowCardinality)."""
    cols = []
    for f in schema:
        if pa.types.is_timestamp(f.type):
            t = "DateTime64(9, 'UTC')"
        elif pa.types.is_string(f.type):
            t = "LowCardinality(String)"  # sym, exchange, conditions: few distinct values, dictionary-encoded
        else:
            try:
                t = _CH_TYPES[f.type]
            except KeyError:
                raise HdbQueryError(f"column {f.name!r} has type {f.type} with no ClickHouse mapping") from None
        cols.append(f"`{f.name}` {f'Nullable({t})' if f.nullable else t}")
    return ", ".join(cols)


# Results come back as Arrow: low-cardinality strings as dictionaries (as they are in the
# files; decoding them to 10M plain strings costs more than the join), uncompressed (in-process).
CLIENT_SETTINGS = {
    "output_format_arrow_low_cardinality_as_dictionary": 1,
    "output_format_arrow_compression_method": "none",
    "use_hive_partitioning": 1,  # `date` from the path (the default on recent servers; older ones need it)
}
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def connect(url: str) -> Any:
    """A clickhouse-connect client: ``chdb://`` embedded (one per process), else a server."""
    import clickhouse_connect

    url = url or "chdb://"
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            if not url.startswith(("chdb:", "http://", "https://")):
                raise HdbQueryError(f"clickhouse_url {url!r} is neither chdb:// nor http(s)://")
            extra = {} if url.startswith("chdb:") else {"autogenerate_session_id": False}  # concurrent queries
            client = _clients[url] = clickhouse_connect.get_client(dsn=url, settings=CLIENT_SETTINGS, **extra)
        return client


class HdbQuery:
    """Queries over the HDB root of ``settings`` (``settings.clickhouse_url`` runs them)."""

    def __init__(self, settings: Settings, store: HdbStore | None = None, catalog: SchemaCatalog | None = None,
                 client: Any = None):
        self.settings = settings
        self.store = store or HdbStore.from_settings(settings)
        self.catalog = catalog or SchemaCatalog.load(settings.schemas_dir)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect(self.settings.clickhouse_url)
        return self._client

    # -- sources ------------------------------------------------------------------

    def dates(self, table: str, start: dt.date | str | None = None, end: dt.date | str | None = None) -> list[dt.date]:
        """Published days of ``table`` within [start, end] (inclusive; None: unbounded)."""
        lo, hi = _date(start), _date(end)
        return [d for d in self.store.dates(table) if (lo is None or d >= lo) and (hi is None or d <= hi)]

    def _location(self, table: str, dates: Sequence[dt.date]) -> str:
        """The table function reading these days' files."""
        days = ",".join(d.isoformat() for d in dates)
        glob = f"{table}/date={{{days}}}/*.parquet"
        structure = quote(clickhouse_structure(self.catalog[table].arrow_schema))
        if not self.store.is_s3:
            return f"file({quote(self.store.base + '/' + glob)}, 'Parquet', {structure})"
        key = f"{self.store.prefix}/{glob}" if self.store.prefix else glob
        if self.store.s3_endpoint:
            endpoint = self.store.s3_endpoint if "://" in self.store.s3_endpoint else f"http://{self.store.s3_endpoint}"
            url = f"{endpoint}/{self.store.bucket}/{key}"
        else:
            url = f"https://{self.store.bucket}.s3.{self.store.s3_region}.amazonaws.com/{key}"
        access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        creds = f"{quote(access)}, {quote(secret)}, " if access and secret else ""
        return f"s3({quote(url)}, {creds}'Parquet', {structure})"

    def source(self, table: str, start: dt.date | str | None = None, end: dt.date | str | None = None,
               columns: Sequence[str] | None = None) -> str:
        """A FROM-able subquery: ``table``'s published days in [start, end], with ``date``."""
        if table not in self.catalog.tables:
            raise HdbQueryError(f"unknown table {table!r}; tables: {', '.join(self.catalog.names)}")
        schema = self.catalog[table].arrow_schema
        cols = list(columns) if columns else schema.names
        unknown = [c for c in cols if c not in schema.names and c != "date"]
        if unknown:
            raise HdbQueryError(f"{table} has no column(s) {', '.join(unknown)}; columns: {', '.join(schema.names)}")
        select = ", ".join(f"`{c}`" for c in cols if c != "date")
        dates = self.dates(table, start, end)
        if not dates:
            structure = quote(clickhouse_structure(schema))
            return f"(SELECT {select}, toDate(0) AS date FROM null({structure}))"
        return f"(SELECT {select}, date FROM {self._location(table, dates)})"

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
            return self.client.query_arrow(self.expand(query), parameters=parameters, settings=settings)
        except HdbQueryError:
            raise
        except Exception as exc:  # the driver's DatabaseError: say it in one line
            raise HdbQueryError(str(exc).split("\n")[0]) from exc

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _syms(syms: Sequence[str] | str | None) -> str:
        if syms is None:
            return "1"
        if isinstance(syms, str):
            syms = [syms]
        if not syms:
            return "0"
        return f"sym IN ({', '.join(quote(s) for s in syms)})"

    def _range(self, start: dt.date | str | None, end: dt.date | str | None) -> tuple[dt.date | None, dt.date | None]:
        lo, hi = _date(start), _date(end)
        return lo, (hi if hi is not None or lo is None else lo)

    def table(self, table: str, start: dt.date | str | None = None, end: dt.date | str | None = None,
              syms: Sequence[str] | str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows of ``table`` for ``syms`` on the days [start, end] (one day if only start), by date, sym, time."""
        lo, hi = self._range(start, end)
        cols = ["date", *(columns or self.catalog[table].columns)]
        select = ", ".join(f"`{c}`" for c in dict.fromkeys(cols))
        return self.sql(
            f"SELECT {select} FROM {self.source(table, lo, hi)} WHERE {self._syms(syms)} "
            f"ORDER BY date, sym, time"
        )

    def aj(self, start: dt.date | str, end: dt.date | str | None = None, syms: Sequence[str] | str | None = None,
           trade: str = "trade", quote_table: str = "quote", trade_columns: Sequence[str] | None = None,
           quote_columns: Sequence[str] = ("bid", "ask"), ordered: bool = False) -> pa.Table:
        """kdb+'s ``aj[`sym`time; trade; quote]`` per date (a ClickHouse ASOF JOIN): each trade
        with its sym's latest quote at or before its time, same date, never a later one; no
        quote yet -> nulls. ``quote_time`` is the matched quote's time.

        Rows come in no set order unless ``ordered`` (by date, sym, time: about a second
        more for 10M rows on 2 cores).
        """
        lo, hi = self._range(start, end)
        tcols = list(trade_columns or self.catalog[trade].columns)
        tcols = ["sym", "time", *(c for c in tcols if c not in ("sym", "time", "date"))]
        qcols = [c for c in quote_columns if c not in ("sym", "time", "date")]
        where = self._syms(syms)
        t_select = ", ".join(f"t.`{c}` AS `{c}`" for c in tcols)
        q_select = "".join(f"q.`{c}` AS `{c}`, " for c in qcols)
        same_day = "t.date = q.date AND " if lo is None or lo != hi else ""  # one day: no need to match dates
        q_inner = ", ".join([*(["date"] if same_day else []), "sym", "time", *(f"`{c}`" for c in qcols)])
        order = "ORDER BY date, sym, time" if ordered else ""
        return self.sql(f"""
            SELECT t.date AS date, {t_select}, {q_select}q.time AS quote_time
            FROM (SELECT date, {", ".join(f"`{c}`" for c in tcols)} FROM {self.source(trade, lo, hi)}
                  WHERE {where}) AS t
            ASOF LEFT JOIN (SELECT {q_inner} FROM {self.source(quote_table, lo, hi)} WHERE {where}) AS q
            ON {same_day}t.sym = q.sym AND t.time >= q.time
            {order}
            SETTINGS join_use_nulls = 1
        """)

    def bars(self, syms: Sequence[str] | str | None, start: dt.date | str, end: dt.date | str | None = None,
             minutes: int = 1, table: str = "trade") -> pa.Table:
        """OHLC bars of ``minutes`` per sym: open/close are the first/last trade by time."""
        lo, hi = self._range(start, end)
        if int(minutes) <= 0:
            raise HdbQueryError("minutes must be positive")
        return self.sql(f"""
            SELECT date, sym, toDateTime64(toStartOfInterval(time, INTERVAL {int(minutes)} MINUTE), 9, 'UTC') AS bar,
                   argMin(price, time) AS open, max(price) AS high, min(price) AS low, argMax(price, time) AS close,
                   sum(size) AS volume, sum(price * size) / sum(size) AS vwap, count() AS trades
            FROM {self.source(table, lo, hi, ["sym", "time", "price", "size"])}
            WHERE {self._syms(syms)}
            GROUP BY date, sym, bar
            ORDER BY sym, bar
        """)

    def vwap(self, syms: Sequence[str] | str | None, start: dt.date | str, end: dt.date | str | None = None,
             table: str = "trade") -> pa.Table:
        """Volume-weighted average price per sym per day."""
        lo, hi = self._range(start, end)
        return self.sql(f"""
            SELECT date, sym, sum(price * size) / sum(size) AS vwap, sum(size) AS volume, count() AS trades
            FROM {self.source(table, lo, hi, ["sym", "price", "size"])}
            WHERE {self._syms(syms)}
            GROUP BY date, sym
            ORDER BY date, sym
        """)
