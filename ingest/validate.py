"""What a reader of the log accepts: the one check every consumer makes before any state changes.

The tickerplant's publisher checks rows against the schema, but the log is
Kafka: anything with the right framing can be produced into a table's topic
(another table's rows, a vendor's NUL-padded sym, a clock gone wrong). Every
consumer (RDB, CEP, PDB, replay, backfill) runs each decoded message through
``RowRules`` with the day its log position belongs to, so they all keep the
same rows and refuse the same ones, whatever order they read in:

- the writer schema is the table's own (or a registered evolution of it:
  same record name); a quote row in the trade topic is refused whole;
- ``sym``: a non-empty string of printable characters (no NUL, no control
  characters), at most ``sym_max_bytes`` bytes of UTF-8 (default 64: far
  above any ticker, and within what the engine's RocksDB keys and the
  column-wise encoder hold);
- ``time``: from the epoch on, and before the close of the row's log day
  plus ``max_future_seconds`` (default one hour: a feed's clock a little
  ahead at the rollover passes; a row stamped next week, or INT64_MAX, does
  not). Earlier stamps are late rows, kept in the day whose log holds them.
  With no known day (a range before every marker), only the epoch and
  ``TIME_CEILING`` bound it;
- every double column finite: NaN and infinities are refused. JSON has no
  NaN, an analytic fed one (VWAP, high/low) stays NaN all day, and a value
  that is really missing is a null in a nullable column;
- a message holds at most 1,048,576 rows (``ingest.seq.MAX_MESSAGE_ROWS``):
  the rest are refused, since the ``seq`` column (a row's place in the log)
  numbers a message's rows in 20 bits; the publisher's blocks hold
  ``max_block_rows`` (5,000 by default);
- the row is in its sym's partition (murmur2 of the sym, the Java client's
  default; librdkafka's default partitioner differs: set ``partitioner=
  murmur2_random`` on such producers). A sym's rows are looked for in its
  partition only (the RDB's shards, the engine's state), so a row elsewhere
  is refused with the partition it belongs in, rather than kept unfindable.

A refused message's good rows are kept; the refused rows and their reasons
go to the dead-letter topic, once per message (``ingest.deadletter``).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.eod import TradingCalendar
from ingest.schemas import SchemaCatalog
from ingest.seq import MAX_MESSAGE_ROWS
from ingest.topics import partition_for
from tickplant.clock import Clock, SystemClock
from tickplant.config import Settings

# no market-data time stamp is later than this (2200-01-01): the bound when a row's day is unknown,
# far enough inside int64 that a bar's end or a window's sum never overflows
TIME_CEILING = 7_258_118_400 * 10**9
SYM_MAX_BYTES_LIMIT = 200  # the engine's RocksDB keys hold a sym's length in one byte
HOMES_KEPT = 1 << 16  # syms whose check is remembered (a universe of tickers, not a flood of junk)


@dataclass(frozen=True)
class Refused:
    """Rows of one message the rules refused: (index in the message, row, reason)."""

    rows: list[tuple[int, Any, str]]

    def reason(self) -> str:
        first = self.rows[0][2]
        more = len(self.rows) - 1
        return first if not more else f"{first} (and {more} more row(s) refused)"

    def payload(self, limit: int = 100) -> dict[str, Any]:
        return {"refused_rows": [{"index": i, "row": row, "reason": why} for i, row, why in self.rows[:limit]],
                "refused": len(self.rows)}


class RowRules:
    """The checks of ``ingest.validate``, for one plant's tables and settings."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog, clock: Clock | None = None):
        self.clock = clock or SystemClock()
        self._today: tuple[float, dt.date] | None = None  # (when looked at, the trading day then)
        self.sym_max_bytes = min(settings.sym_max_bytes, SYM_MAX_BYTES_LIMIT)
        self.future_ns = int(settings.max_future_seconds * 1e9)
        self.calendar = TradingCalendar.from_settings(settings)
        self.partitions = settings.partitions
        self.doubles = {t.name: tuple(c for c in t.columns if t.column_type(c)[0] in ("double", "float"))
                        for t in catalog}
        self._ceilings: dict[dt.date | None, int] = {None: TIME_CEILING}
        self._homes: dict[str, int] = {}  # sym -> its partition, or -1 if the sym is refused

    def _home(self, sym: str, limit: int) -> int:
        """The partition of a well-formed sym, -1 for a bad one; remembered (bounded)."""
        good = 0 < len(sym) <= limit and sym.isprintable() and (sym.isascii() or len(sym.encode()) <= limit)
        where = partition_for(sym, self.partitions) if good else -1
        if len(self._homes) >= HOMES_KEPT:
            self._homes.clear()
        self._homes[sym] = where
        return where

    def ceiling(self, date: dt.date | None) -> int:
        """The latest time stamp a row of log day ``date`` may carry: the close of that day or of
        today's trading day, whichever is later, plus ``max_future_seconds``. Today counts because
        a reader's view of the days can lag the log (the marker of a roll it has not read yet
        leaves the new day's rows looking like the old day's): a good row is never refused for it."""
        if date is None:
            return TIME_CEILING
        date = max(date, self.today())
        top = self._ceilings.get(date)
        if top is None:
            top = self._ceilings[date] = min(self.calendar.close_ns(date) + self.future_ns, TIME_CEILING)
        return top

    def today(self) -> dt.date:
        """The trading day on this process's clock, looked at once a second at most."""
        now = time.monotonic()
        if self._today is None or now - self._today[0] >= 1.0:
            self._today = (now, self.calendar.trading_date(self.clock.now_ns()))
        return self._today[1]

    def check(self, table: str, writer: str, rows: list[dict[str, Any]], date: dt.date | None,
              partition: int | None = None) -> tuple[list[dict[str, Any]], Refused | None]:
        """(rows kept, what was refused or None) of one decoded message of ``table``'s topic
        whose writer schema is record ``writer``, at a log position of day ``date`` in
        ``partition`` (None: not checked)."""
        if writer != table:
            return [], Refused([(i, row, f"a {writer!r} row in the {table!r} topic (writer schema of another "
                                         f"table)") for i, row in enumerate(rows)] or [(0, None, "empty")])
        top = self.ceiling(date)
        limit = self.sym_max_bytes
        doubles = self.doubles.get(table, ())
        bad: list[tuple[int, Any, str]] | None = None
        if len(rows) > MAX_MESSAGE_ROWS:  # past what seq can number: refused by every reader alike
            bad = [(i, rows[i], f"row {i} of a message of {len(rows)}: a message holds at most "
                                f"{MAX_MESSAGE_ROWS} rows (the seq column's room)")
                   for i in range(MAX_MESSAGE_ROWS, len(rows))]
            rows = rows[:MAX_MESSAGE_ROWS]
        home = self._homes
        c0, c1, rest = (doubles + ("", ""))[0], (doubles + ("", ""))[1], doubles[2:]
        for i, row in enumerate(rows):
            sym, t = row.get("sym"), row.get("time")
            # the common case in one expression: a sym seen before, a time in range, finite doubles
            # (x - x is 0 for a finite float, NaN for NaN and the infinities)
            where = home.get(sym) if type(sym) is str else -1
            if where is None:  # a str sym not seen before
                where = self._home(cast(str, sym), limit)
            if (where >= 0 and (partition is None or where == partition)
                    and type(t) is int and 0 <= t <= top
                    and (not c0 or (v := row.get(c0)) is None or v - v == 0)
                    and (not c1 or (v := row.get(c1)) is None or v - v == 0)
                    and (not rest or all((v := row.get(c)) is None or v - v == 0 for c in rest))):
                continue
            if bad is None:
                bad = []
            bad.append((i, row, self._why(row, top, doubles, partition)))
        if bad is None:
            return rows, None
        bad.sort(key=lambda b: b[0])
        refused = {i for i, _, _ in bad}
        return [r for i, r in enumerate(rows) if i not in refused], Refused(bad)

    def check_columns(self, table: str, columns: pa.Table, rows_at: Callable[[Any], list[dict[str, Any]]],
                      date: dt.date | None, partition: int | None = None) -> tuple[Any, Refused | None]:
        """``check`` of a message decoded into columns (``ingest.blocks``: the writer is ``table``'s,
        at most ``MAX_MESSAGE_ROWS`` rows): (the kept rows' indices as a numpy array, or None if
        all are kept; what was refused or None). The same tests over whole columns, each sym's once;
        only refused rows become dicts (``rows_at``), for their reasons as ``check`` gives them."""
        n = columns.num_rows
        top = self.ceiling(date)
        ok = np.ones(n, bool)
        sym = columns.column("sym")
        if sym.type != pa.string():
            ok[:] = False
        else:
            codes = pc.dictionary_encode(sym).combine_chunks()
            home, limit = self._homes, self.sym_max_bytes
            homes = np.array([where if (where := home.get(s)) is not None else self._home(s, limit)
                              for s in codes.dictionary.to_pylist()] + [-1], np.int64)
            index = codes.indices
            index = (index.fill_null(len(homes) - 1) if index.null_count else index).to_numpy()
            where = homes[index]
            ok &= where >= 0 if partition is None else where == partition
        t = columns.column("time")
        if not pa.types.is_integer(t.type):
            ok[:] = False
        else:
            if t.null_count:
                ok &= t.is_valid().to_numpy(zero_copy_only=False)
            values = (t.fill_null(0) if t.null_count else t).to_numpy().astype(np.int64, copy=False)
            ok &= (values >= 0) & (values <= top)
        for c in self.doubles.get(table, ()):
            col = columns.column(c)
            finite = pc.is_finite(col)
            ok &= (finite.fill_null(True) if col.null_count else finite).to_numpy(zero_copy_only=False)
        if ok.all():
            return None, None
        refused = np.flatnonzero(~ok)
        doubles = self.doubles.get(table, ())
        bad = [(int(i), row, self._why(row, top, doubles, partition))
               for i, row in zip(refused, rows_at(refused), strict=True)]
        return np.flatnonzero(ok), Refused(bad)

    def _why(self, row: dict[str, Any], top: int, doubles: tuple[str, ...], partition: int | None) -> str:
        sym, t = row.get("sym"), row.get("time")
        if not isinstance(sym, str) or not sym:
            return "sym is empty"
        if len(sym.encode()) > self.sym_max_bytes:
            return f"sym of {len(sym.encode())} bytes is over the {self.sym_max_bytes}-byte limit (sym_max_bytes)"
        if not sym.isprintable():
            return f"sym {sym[:40]!r} holds control or unprintable characters"
        if not isinstance(t, int) or t < 0:
            return f"time {t!r} is before the epoch"
        if t > top:
            return f"time {t} is after {top} (the row's log day closes then, plus max_future_seconds)"
        for c in doubles:
            if row.get(c) is not None and not math.isfinite(row[c]):
                return f"{c} is {row[c]!r}: NaN and infinities are refused (a missing value is a null)"
        expected = partition_for(sym, self.partitions)
        if partition is not None and expected != partition:
            return (f"sym {sym!r} belongs in partition {expected}, not {partition} (partition by murmur2 "
                    f"of the sym: librdkafka producers need partitioner=murmur2_random)")
        return "refused"
