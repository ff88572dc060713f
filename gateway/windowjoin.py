"""kdb+'s window join (``wj``, ``wj1``) in ClickHouse SQL: aggregates of the quotes around each trade.

kdb+'s ``wj[w; `sym`time; trade; (quote; (max; `ask); (min; `bid))]`` gives
each trade aggregates over its sym's quotes in the window
``[time + lo, time + hi]`` (both ends included). ``wj`` counts the quote
*prevailing* at the window's start as in it (quotes are a step function: the
book at ``time + lo`` is that quote), then every quote after it up to the
end; ``wj1`` takes only the quotes whose time is in the window. Ties of time
go by publish order (``seq``, ingest/seq.py), as kdb+'s table order: the
prevailing quote is the last one published at or before the start (so of
several quotes at exactly ``time + lo``, ``wj`` keeps only that last one and
``wj1`` all of them), and ``first``/``last`` are by ``(time, seq)``.

The SQL runs where the rows are (the gateway's chDB, over today's RDB rows and
the HDB's files as one table), in three steps:

1. ``ranked``: each quote numbered ``n = 1, 2, ...`` within its date and sym
   in ``(time, seq)`` order, with its ``(time, seq)`` packed in one Int128
   (``sinks.hdb.asof_key``).
2. ``bounds``: each trade with the numbers of the first and last quote of its
   window, from two ASOF JOINs on the packed key: the last quote at or before
   ``time + hi`` ends it; the last at or before ``time + lo`` (``wj``: it is
   the first) or strictly before it (``wj1``: the next one is) starts it.
3. each trade's numbers ``first..last`` (an ARRAY JOIN of ``range``; none for
   an empty window) joined back to ``ranked`` on ``(date, sym, n)`` and
   aggregated per trade (``GROUP BY date, sym, seq``).

Work is the trades plus the quotes plus the sum of the windows' sizes, as
kdb+'s own ``wj`` is for any aggregate. Quotes are matched on the trade's
date, as ``/v1/aj`` does: a window never reaches into another day.

An empty window gives ``count`` 0 and ``sum`` 0 (kdb+'s ``count``/``sum`` of
an empty list) and null for the others (kdb+'s ``max`` of nothing is ``-0w``,
its ``avg`` ``0n``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from gateway.named import BadParameter, NamedQuery, day_range, parse_syms
from ingest.schemas import TableSchema
from ingest.seq import SEQ
from sinks.analytics_sql import MAX_SEQ
from sinks.hdb import quote, sym_filter

MODES = ("wj", "wj1")
FUNCTIONS = ("count", "first", "last", "min", "max", "avg", "sum")
NUMERIC_ONLY = ("avg", "sum")
WJ_SETTINGS = {"join_use_nulls": 1}  # an unmatched quote reads as null, so aggregates skip it
MAX_OFFSET_NS = 24 * 3600 * 10**9  # a window lies within the trade's day: a wider one means nothing

_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_NUMBER = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)?$")
_TIMESPAN = re.compile(r"^([+-]?)(\d+)D(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")  # kdb+'s -0D00:00:02.5
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BadWindowJoin(BadParameter):
    """A window join's parameter is malformed; the message names it."""


@dataclass(frozen=True)
class Aggregate:
    """One output column: ``function`` of the window's quotes' ``column`` (None: ``count`` of quotes)."""

    function: str
    column: str | None
    name: str

    def sql(self) -> str:
        """Over the joined window quotes ``w`` (null where the window is empty)."""
        if self.column is None or self.function == "count":
            return "count(w.n)"
        col = f"w.`{self.column}`"
        if self.function == "first":
            return f"argMin({col}, w.n)"
        if self.function == "last":
            return f"argMax({col}, w.n)"
        if self.function == "sum":
            return f"coalesce(sum({col}), 0)"
        return f"{self.function}({col})"


def parse_offset(name: str, value: str | None) -> int:
    """A signed offset from the trade's time in ns: ``-2s``, ``500ms``, ``250us``, ``100ns``,
    ``1.5m``, ``1h``, kdb+'s timespan ``-0D00:00:02.5``, or a bare number of milliseconds."""
    text = (value or "").strip()
    if not text:
        raise BadWindowJoin(f"{name}= is required: the window is [time+lo, time+hi], e.g. lo=-2s&hi=0s")
    ns: int | None = None
    number = _NUMBER.match(text)
    if number:
        sign, digits, unit = number.groups()
        whole, _, frac = digits.partition(".")
        scale = _UNITS[unit or "ms"]
        ns = int(whole) * scale + (int(frac) * scale // 10 ** len(frac) if frac else 0)
        if frac and (int(frac) * scale) % 10 ** len(frac):
            raise BadWindowJoin(f"{name}={value!r} is not a whole number of nanoseconds")
        ns = -ns if sign == "-" else ns
    span = _TIMESPAN.match(text)
    if span:
        sign, days, hh, mm, ss, frac = span.groups()
        ns = ((int(days) * 24 + int(hh)) * 60 + int(mm)) * 60 + int(ss)
        ns = ns * 10**9 + int((frac or "").ljust(9, "0") or 0)
        ns = -ns if sign == "-" else ns
    if ns is None:
        raise BadWindowJoin(f"{name}={value!r} is not a time offset (e.g. -2s, 500ms, 250us, 100ns, 1m, "
                            "kdb+'s -0D00:00:02, or a number of milliseconds)")
    if abs(ns) > MAX_OFFSET_NS:
        raise BadWindowJoin(f"{name}={value!r} is more than a day from the trade (windows stay within its day)")
    return ns


def parse_window(lo: str | None, hi: str | None) -> tuple[int, int]:
    lo_ns, hi_ns = parse_offset("lo", lo), parse_offset("hi", hi)
    if lo_ns > hi_ns:
        raise BadWindowJoin(f"the window is empty: lo={lo} is after hi={hi}")
    return lo_ns, hi_ns


def parse_mode(value: str | None) -> str:
    mode = (value or "wj").strip()
    if mode not in MODES:
        raise BadWindowJoin(f"mode={value!r}: wj (the quote prevailing at the window's start counts) "
                            "or wj1 (only quotes in the window)")
    return mode


def parse_aggs(value: str | None, quote_columns: Sequence[str], numeric: Sequence[str],
               taken: Sequence[str]) -> list[Aggregate]:
    """``aggs=max:ask,min:bid,count`` (``[name:]function:column``; the column's name is the
    output's, as in kdb+, unless named). ``numeric``: the quote columns ``avg``/``sum`` take;
    ``taken``: the output's other (trade) columns, which an aggregate may not be named."""
    items = [a.strip() for a in (value or "").split(",") if a.strip()]
    if not items:
        raise BadWindowJoin(f"aggs= is required, e.g. aggs=max:ask,min:bid,count (functions: {', '.join(FUNCTIONS)}; "
                            f"columns: {', '.join(quote_columns)})")
    out: list[Aggregate] = []
    for item in items:
        parts = [p.strip() for p in item.split(":")]
        if len(parts) == 1 and parts[0] == "count":
            name, function, column = "count", "count", None
        elif len(parts) == 2:
            function, column = parts
            name = column
        elif len(parts) == 3:
            name, function, column = parts
        else:
            raise BadWindowJoin(f"aggs item {item!r} is not [name:]function:column (e.g. max:ask, spread_hi:max:ask)")
        if function not in FUNCTIONS:
            raise BadWindowJoin(f"aggs item {item!r}: no function {function!r}; functions: {', '.join(FUNCTIONS)}")
        if column is not None and column not in quote_columns:
            raise BadWindowJoin(f"aggs item {item!r}: quote has no column {column!r}; columns: {', '.join(quote_columns)}")
        if function in NUMERIC_ONLY and column not in numeric:
            raise BadWindowJoin(f"aggs item {item!r}: {function} takes a numeric column ({', '.join(numeric)})")
        if not _NAME.match(name):
            raise BadWindowJoin(f"aggs item {item!r}: {name!r} is not a column name (letters, digits, _)")
        clash = [a.name for a in out if a.name == name] or [c for c in taken if c == name]
        if clash:
            raise BadWindowJoin(f"aggs item {item!r}: the answer already has a column {name!r}; name this one, "
                                f"e.g. {function}_{column or 'n'}:{function}:{column}")
        out.append(Aggregate(function, column, name))
    return out


def wj_sql(trade_source: str, quote_source: str, trade_columns: Sequence[str], aggs: Sequence[Aggregate],
           where: str, lo_ns: int, hi_ns: int, mode: str = "wj") -> str:
    """Each trade of ``trade_source`` (``where``: its date and sym predicates, the quotes' too)
    with ``aggs`` over its sym's quotes in ``[time + lo_ns, time + hi_ns]`` on its date,
    ``wj`` or ``wj1`` (module docstring); by date, sym, time and publish order. Run with
    ``WJ_SETTINGS``."""
    if mode not in MODES:
        raise BadWindowJoin(f"mode {mode!r} is neither wj nor wj1")
    tcols = [c for c in trade_columns if c not in ("date", "sym", "time", SEQ)]
    qcols = sorted({a.column for a in aggs if a.column is not None})
    ranked_cols = "".join(f"`{c}`, " for c in qcols)
    trade_cols = "".join(f"`{c}`, " for c in tcols)
    outer_cols = "".join(f"any(b.`{c}`) AS `{c}`, " for c in tcols)
    agg_cols = ", ".join(f"{a.sql()} AS `{a.name}`" for a in aggs)
    # the window's start: wj takes the last quote at or before it (its number is the first of the
    # window), wj1 the last strictly before it (the next one is the first)
    start_key = _key(f"toUnixTimestamp64Nano(time) + {lo_ns}", MAX_SEQ if mode == "wj" else 0)
    start_match = "t.start_key >= s.k" if mode == "wj" else "t.start_key > s.k"
    first = "if(s.n IS NULL, 1, s.n)" if mode == "wj" else "if(s.n IS NULL, 1, s.n + 1)"
    return f"""
        WITH ranked AS (
            SELECT date, sym, {ranked_cols}
                   row_number() OVER (PARTITION BY date, sym ORDER BY time, `{SEQ}`) AS n,
                   {_key("toUnixTimestamp64Nano(time)", f"`{SEQ}`")} AS k
            FROM {quote_source} WHERE {where}
        ),
        bounds AS (
            SELECT t.date AS date, t.sym AS sym, t.time AS time, t.`{SEQ}` AS `{SEQ}`, {_prefixed(tcols, "t")}
                   toUInt64({first}) AS first_n, toUInt64(if(e.n IS NULL, 0, e.n)) AS last_n
            FROM (SELECT date, sym, time, `{SEQ}`, {trade_cols}
                         {start_key} AS start_key,
                         {_key(f"toUnixTimestamp64Nano(time) + {hi_ns}", MAX_SEQ)} AS end_key
                  FROM {trade_source} WHERE {where}) AS t
            ASOF LEFT JOIN (SELECT date, sym, n, k FROM ranked) AS s
                ON t.date = s.date AND t.sym = s.sym AND {start_match}
            ASOF LEFT JOIN (SELECT date, sym, n, k FROM ranked) AS e
                ON t.date = e.date AND t.sym = e.sym AND t.end_key >= e.k
        )
        SELECT b.date AS date, b.sym AS sym, any(b.time) AS time, {outer_cols}{agg_cols}
        FROM bounds AS b
        LEFT ARRAY JOIN range(b.first_n, b.last_n + 1) AS window_n
        LEFT JOIN (SELECT date, sym, n, {ranked_cols.rstrip(', ') or 'k'} FROM ranked) AS w
            ON b.date = w.date AND b.sym = w.sym AND window_n = w.n
        GROUP BY b.date, b.sym, b.`{SEQ}`
        ORDER BY date, sym, time, b.`{SEQ}`
    """


def _key(nanos: str, seq: int | str) -> str:
    """``(time, seq)`` packed as ``sinks.hdb.asof_key`` packs it, from a time in ns (Int64)."""
    return f"bitOr(bitShiftLeft(toInt128({nanos}), 63), toInt128({seq}))"


def _prefixed(columns: Sequence[str], alias: str) -> str:
    return "".join(f"{alias}.`{c}` AS `{c}`, " for c in columns)


def wj_query(trade: TableSchema, quote_table: TableSchema, syms: str | None, start: str | None, end: str | None,
             lo: str | None, hi: str | None, aggs: str | None, mode: str | None, select: str | None,
             today: dt.date) -> NamedQuery:
    """``/v1/wj``: the named query from its parameters (``select``: the trade columns, default all)."""
    first_day, last_day = day_range(start, end, today)
    lo_ns, hi_ns = parse_window(lo, hi)
    chosen = [c.strip() for c in (select or "").split(",") if c.strip()]
    unknown = [c for c in chosen if c not in trade.columns]
    if unknown:
        raise BadWindowJoin(f"trade has no column(s) {', '.join(unknown)}; columns: {', '.join(trade.columns)}")
    tcols = [c for c in chosen or trade.columns if c not in ("date", "sym", "time")]
    schema = quote_table.arrow_schema
    numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    usable = [c for c in quote_table.columns if c != "sym"]
    parsed = parse_aggs(aggs, usable, [c for c in numeric if c != "time"], ["date", "sym", "time", *tcols])
    where = (f"date BETWEEN toDate({quote(first_day.isoformat())}) AND toDate({quote(last_day.isoformat())}) "
             f"AND {sym_filter(parse_syms(syms))}")
    sql = wj_sql(trade.name, quote_table.name, tcols, parsed, where, lo_ns, hi_ns, parse_mode(mode))
    return NamedQuery(sql, settings=dict(WJ_SETTINGS), table=trade.name)
