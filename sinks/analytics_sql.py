"""The analytics' SQL, over any FROM-able source: the HDB's (sinks/hdb.py), or today and
history together in the gateway (gateway/named.py). kdb+'s aj, OHLC bars and VWAP as
ClickHouse, and the literals they are made of."""

from __future__ import annotations

from collections.abc import Sequence

from ingest.seq import SEQ


class HdbQueryError(ValueError):
    """A query could not be built or run; the message says why."""


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


AJ_SETTINGS = {"join_use_nulls": 1}  # a trade before its sym's first quote gets nulls, not zeros


def sym_filter(syms: Sequence[str] | str | None) -> str:
    """A WHERE condition on ``sym`` (None: every sym)."""
    if syms is None:
        return "1"
    if isinstance(syms, str):
        syms = [syms]
    if not syms:
        return "0"
    return f"sym IN ({', '.join(quote(s) for s in syms)})"


# kdb+'s order on equal time stamps (ingest.seq): a row's key is (time, seq). ClickHouse's ASOF
# JOIN takes one inequality column, so the pair is packed in one Int128, time << 63 | seq (both
# below 2^63): ordered as the pair is. A trade's key takes the largest seq, so the join finds the
# quote with the greatest (time, seq) at or before the trade's time: the last one published.
MAX_SEQ = (1 << 63) - 1


def asof_key(time: str, seq: str) -> str:
    """The Int128 ``time << 63 | seq`` of a ``time`` (DateTime64(9)) and a ``seq`` expression."""
    return f"bitOr(bitShiftLeft(toInt128(toUnixTimestamp64Nano({time})), 63), toInt128({seq}))"


def aj_sql(trade_source: str, quote_source: str, trade_columns: Sequence[str], quote_columns: Sequence[str],
           where: str, one_day: bool = False, ordered: bool = False) -> str:
    """kdb+'s ``aj[`sym`time; trade; quote]`` per date (a ClickHouse ASOF JOIN): each trade
    with its sym's latest quote at or before its time, same date, never a later one; of
    quotes sharing that time, the last published (greatest ``seq``, see ``asof_key``); no
    quote yet -> nulls (run with ``AJ_SETTINGS``). ``quote_time`` is the matched quote's time.
    ``ordered``: by date, sym, time and publish order."""
    tcols = ["sym", "time", *(c for c in trade_columns if c not in ("sym", "time", "date", SEQ))]
    qcols = [c for c in quote_columns if c not in ("sym", "time", "date", SEQ)]
    t_select = ", ".join(f"t.`{c}` AS `{c}`" for c in tcols)
    q_select = "".join(f"q.`{c}` AS `{c}`, " for c in qcols)
    same_day = "" if one_day else "t.date = q.date AND "  # one day: no need to match dates
    q_inner = ", ".join([*(["date"] if same_day else []), "sym", "time", *(f"`{c}`" for c in qcols)])
    t_inner = ", ".join(["date", *(f"`{c}`" for c in tcols), f"`{SEQ}`"])
    order = f"ORDER BY date, sym, time, t.`{SEQ}`" if ordered else ""
    return f"""
        SELECT t.date AS date, {t_select}, {q_select}q.time AS quote_time
        FROM (SELECT {t_inner}, {asof_key("time", str(MAX_SEQ))} AS asof_key
              FROM {trade_source} WHERE {where}) AS t
        ASOF LEFT JOIN (SELECT {q_inner}, {asof_key("time", SEQ)} AS asof_key
                        FROM {quote_source} WHERE {where}) AS q
        ON {same_day}t.sym = q.sym AND t.asof_key >= q.asof_key
        {order}
    """


def bars_sql(source: str, where: str, minutes: int) -> str:
    """OHLC bars of ``minutes`` per sym: open/close are the first/last trade by time, of
    trades at the same time the first/last published (``seq``), as kdb+'s first/last. By the
    packed key of ``asof_key``: ``argMin(price, (time, seq))`` means the same, but a tuple
    key costs ClickHouse more than one Int128."""
    if int(minutes) <= 0:
        raise HdbQueryError("minutes must be positive")
    key = asof_key("time", SEQ)
    return f"""
        SELECT date, sym, toDateTime64(toStartOfInterval(time, INTERVAL {int(minutes)} MINUTE), 9, 'UTC') AS bar,
               argMin(price, {key}) AS open, max(price) AS high, min(price) AS low,
               argMax(price, {key}) AS close,
               sum(size) AS volume, sum(price * size) / sum(size) AS vwap, count() AS trades
        FROM {source}
        WHERE {where}
        GROUP BY date, sym, bar
        ORDER BY sym, bar
    """


def vwap_sql(source: str, where: str) -> str:
    """Volume-weighted average price, volume and trade count per sym per day."""
    return f"""
        SELECT date, sym, sum(price * size) / sum(size) AS vwap, sum(size) AS volume, count() AS trades
        FROM {source}
        WHERE {where}
        GROUP BY date, sym
        ORDER BY date, sym
    """
