"""Named queries (kdb+'s stored procedures): SQL written once, run like any user's statement.

Each builds a SELECT over the plant's table names; the gateway then parses,
authorises and runs it through the same engine as ``POST /v1/sql``, so a
user's grants apply and today and history join the same way. The analytics'
SQL (aj, bars, vwap) is the HDB's own (sinks/hdb.py), here over today and
history together. Ties of time go by publish order, as in kdb+: each orders by
``(time, seq)`` (``ingest.seq``), never by time alone.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingest.seq import SEQ
from sinks.analytics_sql import AJ_SETTINGS, aj_sql, bars_sql, quote, sym_filter, vwap_sql
from sinks.options import option_chain_sql


class BadParameter(ValueError):
    """A named query's parameter is malformed; the message names it."""


@dataclass
class NamedQuery:
    sql: str
    settings: dict[str, Any] = field(default_factory=dict)
    rdb_view: str = "rows"  # "last": only each sym's latest real-time row is needed
    table: str = ""


def parse_syms(value: str | None) -> list[str] | None:
    syms = [s.strip() for s in (value or "").split(",") if s.strip()]
    return syms or None


def parse_day(name: str, value: str | None, today: dt.date) -> dt.date | None:
    if value is None or value == "":
        return None
    if value == "today":
        return today
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadParameter(f"{name}={value!r} is not a date (YYYY-MM-DD or 'today')") from None


def day_range(start: str | None, end: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """[start, end], inclusive; start defaults to the open day, end to start."""
    lo = parse_day("start", start, today) or today
    hi = parse_day("end", end, today) or lo
    if hi < lo:
        raise BadParameter(f"end {hi} is before start {lo}")
    return lo, hi


def _where(lo: dt.date, hi: dt.date, syms: list[str] | None) -> str:
    return f"date BETWEEN toDate({quote(lo.isoformat())}) AND toDate({quote(hi.isoformat())}) AND {sym_filter(syms)}"


def _columns(value: str | None, allowed: list[str], what: str) -> list[str] | None:
    cols = [c.strip() for c in (value or "").split(",") if c.strip()]
    unknown = [c for c in cols if c not in allowed]
    if unknown:
        raise BadParameter(f"{what} has no column(s) {', '.join(unknown)}; columns: {', '.join(allowed)}")
    return cols or None


def rows_query(table: str, columns: list[str], syms: str | None, start: str | None, end: str | None,
               select: str | None, today: dt.date) -> NamedQuery:
    """``trades``/``quotes``: a table's rows for syms over days, by date, sym, time and publish
    order; ``columns=`` may name ``seq`` too (not given unless named, as in SQL)."""
    lo, hi = day_range(start, end, today)
    cols = _columns(select, [*columns, SEQ], table) or columns
    listed = ", ".join(f"`{c}`" for c in dict.fromkeys(["date", *cols]))
    return NamedQuery(f"SELECT {listed} FROM {table} WHERE {_where(lo, hi, parse_syms(syms))} "
                      f"ORDER BY date, sym, time, {SEQ}", table=table)


def last_query(table: str, syms: str | None, today: dt.date) -> NamedQuery:
    """The latest row of each sym today (kdb+'s ``select by sym from trade``): of rows at its
    latest time, the last published."""
    return NamedQuery(
        f"SELECT * EXCEPT ({SEQ}) FROM {table} WHERE date = toDate({quote(today.isoformat())}) "
        f"AND {sym_filter(parse_syms(syms))} ORDER BY sym, time DESC, {SEQ} DESC LIMIT 1 BY sym",
        rdb_view="last", table=table,
    )


def bars_query(syms: str | None, start: str | None, end: str | None, minutes: int, today: dt.date) -> NamedQuery:
    lo, hi = day_range(start, end, today)
    if minutes <= 0:
        raise BadParameter(f"minutes={minutes} must be positive")
    return NamedQuery(bars_sql("trade", _where(lo, hi, parse_syms(syms)), minutes), table="trade")


def vwap_query(syms: str | None, start: str | None, end: str | None, today: dt.date) -> NamedQuery:
    lo, hi = day_range(start, end, today)
    return NamedQuery(vwap_sql("trade", _where(lo, hi, parse_syms(syms))), table="trade")


def aj_query(syms: str | None, start: str | None, end: str | None, trade_columns: list[str],
             quote_columns: list[str], select: str | None, quote_select: str | None,
             today: dt.date) -> NamedQuery:
    """Each trade with its sym's prevailing quote (kdb+'s ``aj``), by date, sym, time."""
    lo, hi = day_range(start, end, today)
    tcols = _columns(select, trade_columns, "trade") or trade_columns
    qcols = _columns(quote_select, quote_columns, "quote") or ["bid", "ask"]
    sql = aj_sql("trade", "quote", tcols, qcols, _where(lo, hi, parse_syms(syms)), one_day=lo == hi,
                 ordered=True)
    return NamedQuery(sql, settings=dict(AJ_SETTINGS), table="trade")


def black_scholes_query(syms: str | None, date: str | None, at: str | None, rate: str | None, div: str | None,
                        contracts: str | None, today: dt.date, close_ns: Callable[[dt.date], int],
                        now_ns: int) -> NamedQuery:
    """Black-Scholes prices and greeks of the ``option`` table's contracts on one day
    (sinks/options.py): each contract's latest volatility mark and its underlying's quote
    mid at ``at`` (an ISO time, or HH:MM[:SS] UTC on the day; default: the day's close, or
    now on the open day), ``rate`` and ``div`` continuously compounded per year."""
    day = parse_day("date", date, today) or today
    at_ns = _instant(at, day) if at else min(close_ns(day), now_ns)
    return NamedQuery(option_chain_sql("option", "quote", day, at_ns, _required_number("rate", rate),
                                       _number("div", div) or 0.0, parse_syms(syms), parse_syms(contracts)),
                      table="option")


def _required_number(name: str, value: str | None) -> float:
    number = _number(name, value)
    if number is None:
        raise BadParameter(f"{name}= is required (per year, continuously compounded: 0.05 is 5%)")
    return number


def _number(name: str, value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadParameter(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > 10:
        raise BadParameter(f"{name}={value!r} is out of range (per year: 0.05 is 5%)")
    return number


def _instant(value: str, day: dt.date) -> int:
    """``at=``: an ISO date-time (UTC unless it says), or a time of day (UTC) on ``day``."""
    try:
        if "T" in value or " " in value.strip():
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        else:
            when = dt.datetime.combine(day, dt.time.fromisoformat(value.strip()))
    except ValueError:
        raise BadParameter(f"at={value!r} is neither an ISO date-time nor HH:MM[:SS]") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000
