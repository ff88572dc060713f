"""Black-Scholes prices and greeks of European options, in ClickHouse SQL.

The reference's example analytic (serverless q on Lambda prices options read
from S3), written once as SQL so that every caller runs the same formula: the
gateway's named query ``/v1/black_scholes`` over the ``option`` table's
volatility marks and the underlyings' quotes (today and history, with the
caller's grants), and the Lambda handler over options given as parameters or
as a CSV/Parquet object on S3 (``price_rows``). ClickHouse's ``erfc`` gives the
normal distribution to double precision, in the tails too (``N(-x)`` is
``erfc(x/sqrt 2)/2``, never ``1 - N(x)``).

Generalised Black-Scholes-Merton with a continuous dividend yield ``div``
(Hull, Options, Futures and Other Derivatives, ch. 15 and 19), in Hull's units:
``years`` is time to expiry in years (ACT/365), ``rate`` and ``div``
continuously compounded per year, ``vol`` annualised; ``vega`` and ``rho`` per
unit (1.00) change of vol and rate, ``theta`` per year (divide by 100, and by
365, for the per-point and per-day figures desks quote).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import pyarrow as pa

from ingest.seq import SEQ
from sinks.analytics_sql import quote, sym_filter
from sinks.hdb import pool

INPUTS = ("spot", "strike", "years", "rate", "div", "vol", "kind")
GREEKS = ("price", "delta", "gamma", "vega", "theta", "rho")
YEAR_NS = 365 * 86_400 * 10**9


def greeks_sql(source: str, keep: Sequence[str] = (), order: str = "") -> str:
    """Price and greeks of each row of ``source``, which has the columns of ``INPUTS``
    (``kind`` 'C' or 'P'); ``keep``: more columns of it carried through, first. A row
    whose inputs cannot be priced (vol or years not positive, kind neither C nor P, a
    spot or strike not positive) gets nulls, never a number. ``order``: an ORDER BY list."""
    carried = "".join(f"`{c}`, " for c in keep)
    inputs = ", ".join(INPUTS)
    valid = ("kind IN ('C', 'P') AND spot > 0 AND strike > 0 AND years > 0 AND vol > 0 "
             "AND isFinite(spot) AND isFinite(strike) AND isFinite(years) AND isFinite(vol) "
             "AND isFinite(rate) AND isFinite(div)")
    call = "kind = 'C'"

    def priced(expression: str) -> str:
        return f"if({valid}, {expression}, NULL)"

    greeks = {
        "price": f"if({call}, spot * dq * nd1 - strike * dr * nd2, strike * dr * nmd2 - spot * dq * nmd1)",
        "delta": f"if({call}, dq * nd1, -dq * nmd1)",
        "gamma": "dq * pd1 / (spot * vol * sqrt(years))",
        "vega": "spot * dq * pd1 * sqrt(years)",
        "theta": (f"-spot * dq * pd1 * vol / (2 * sqrt(years)) + if({call}, "
                  "div * spot * dq * nd1 - rate * strike * dr * nd2, "
                  "rate * strike * dr * nmd2 - div * spot * dq * nmd1)"),
        "rho": f"if({call}, strike * years * dr * nd2, -strike * years * dr * nmd2)",
    }
    outer = ", ".join(f"{priced(expression)} AS {name}" for name, expression in greeks.items())
    return f"""
        SELECT {carried}{inputs}, {outer}
        FROM (SELECT {carried}{inputs}, dq, dr,
                     erfc(-d1 / sqrt(2)) / 2 AS nd1, erfc(-d2 / sqrt(2)) / 2 AS nd2,
                     erfc(d1 / sqrt(2)) / 2 AS nmd1, erfc(d2 / sqrt(2)) / 2 AS nmd2,
                     exp(-d1 * d1 / 2) / sqrt(2 * pi()) AS pd1
              FROM (SELECT {carried}{inputs}, d1, d1 - vol * sqrt(years) AS d2,
                           exp(-div * years) AS dq, exp(-rate * years) AS dr
                    FROM (SELECT {carried}{inputs},
                                 (log(spot / strike) + (rate - div + vol * vol / 2) * years)
                                     / (vol * sqrt(years)) AS d1
                          FROM {source})))
        {f"ORDER BY {order}" if order else ""}
    """


def option_chain_sql(option_source: str, quote_source: str, day: dt.date, at_ns: int, rate: float,
                     div: float, syms: Sequence[str] | None, contracts: Sequence[str] | None) -> str:
    """Every unexpired contract of ``syms`` (None: all) on ``day`` valued at ``at_ns``: its
    latest volatility mark at or before then (of marks at one time, the last published),
    the spot its underlying's latest quote mid (bid+ask)/2 at or before then, time to
    expiry from ``at_ns``. Contracts with no mark, or whose underlying has no quote yet,
    are not in the answer (nothing to price them with)."""
    when = f"fromUnixTimestamp64Nano(toInt64({int(at_ns)}), 'UTC')"
    on_day = f"date = toDate({quote(day.isoformat())})"
    syms_where = sym_filter(list(syms) if syms is not None else None)
    contract_where = ("1" if contracts is None else
                      f"contract IN ({', '.join(quote(c) for c in contracts) or quote('')})")
    marks = (f"SELECT sym, contract, kind, strike, expiry, vol, time AS mark_time FROM {option_source} "
             f"WHERE {on_day} AND {syms_where} AND {contract_where} AND time <= {when} "
             f"ORDER BY contract, time DESC, {SEQ} DESC LIMIT 1 BY contract")
    spots = (f"SELECT sym, (bid + ask) / 2 AS spot, time AS quote_time FROM {quote_source} "
             f"WHERE {on_day} AND {syms_where} AND time <= {when} "
             f"ORDER BY sym, time DESC, {SEQ} DESC LIMIT 1 BY sym")
    chain = (f"SELECT m.sym AS sym, m.contract AS contract, "
             f"fromUnixTimestamp64Nano(m.expiry, 'UTC') AS expiry, m.mark_time AS mark_time, "
             f"s.quote_time AS quote_time, s.spot AS spot, m.strike AS strike, "
             f"(m.expiry - {int(at_ns)}) / {YEAR_NS} AS years, toFloat64({float(rate)!r}) AS rate, "
             f"toFloat64({float(div)!r}) AS div, m.vol AS vol, m.kind AS kind "
             f"FROM ({marks}) AS m INNER JOIN ({spots}) AS s ON m.sym = s.sym "
             f"WHERE m.expiry > {int(at_ns)}")
    keep = ("sym", "contract", "expiry", "mark_time", "quote_time")
    return greeks_sql(f"({chain})", keep, order="sym, expiry, strike, kind, contract")


class OptionInputError(ValueError):
    """Options given as parameters that cannot be read; the message names what and where."""


NUMBERS = tuple(c for c in INPUTS if c != "kind")


def price_table(options: pa.Table, keep: Sequence[str] = (), pool_url: str = "chdb://") -> pa.Table:
    """``greeks_sql`` over an Arrow table with the columns of ``INPUTS`` (``div`` may be
    left out: 0), numbers or text (a CSV's), in embedded chDB, rows in their order; ``keep``:
    more columns carried through. A value that is not a number reads as null, and a row
    that cannot be priced gets nulls: ``unpriceable`` says which and why."""
    missing = [c for c in INPUTS if c not in options.column_names and c != "div"]
    if missing:
        raise OptionInputError(f"options need the column(s) {', '.join(missing)}; "
                               f"got {', '.join(options.column_names) or 'none'}")
    if "div" not in options.column_names:
        options = options.append_column("div", pa.array([0.0] * options.num_rows, pa.float64()))
    name = "__tickplant_options"  # chDB finds Python(name) among the caller's frames' locals
    ordered = options.append_column("__row", pa.array(range(options.num_rows), pa.int64()))
    typed = [*(f"accurateCastOrNull(`{c}`, 'Float64') AS `{c}`" for c in NUMBERS),
             "toString(kind) AS kind", *(f"`{c}`" for c in ["__row", *keep])]
    source = f"(SELECT {', '.join(typed)} FROM Python({name}))"
    out = pool(pool_url).run(greeks_sql(source, [*keep, "__row"], order="__row"), tables={name: ordered})
    return out.drop_columns(["__row"])


def unpriceable(priced: pa.Table) -> list[tuple[int, str]]:
    """Why each row of ``price_table``'s answer without a price has none: (its index,
    ``field: reason``)."""
    problems = []
    nulls = priced.column("price").is_null().to_pylist()
    for i in (i for i, null in enumerate(nulls) if null):
        row = {c: priced.column(c)[i].as_py() for c in INPUTS}
        for c in NUMBERS:
            value = row[c]
            if value is None or not math.isfinite(value):
                problems.append((i, f"{c}: not a finite number"))
                break
            if c in ("spot", "strike", "years", "vol") and value <= 0:
                problems.append((i, f"{c}: {value!r} is not positive"))
                break
        else:
            problems.append((i, f"kind: {row['kind']!r} is neither 'C' (call) nor 'P' (put)"))
    return problems
