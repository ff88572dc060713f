"""OHLCV bars of one partition's trades, closed by the partition's event-time watermark.

A trade at ``time`` belongs to bucket ``time // width`` (a tick exactly on
a boundary opens the next bar). A sym's bar closes at the first of these
log positions:

- the sym trades in a later bucket (``closed_by = "next"``);
- the partition's watermark, the largest trade time read so far from that
  trade partition, reaches the bar's end + ``grace`` (``"watermark"``): a
  quiet sym's bar closes as soon as any other sym of the partition trades
  past the minute;
- the end-of-day fence of the trade partition (``"eod"``);
- the idle timer (``"idle"``): when the partition has been quiet for a
  while on the live day, the worker advances the watermark to the wall
  clock minus ``grace`` (``advance``), so the last bars of a quiet market
  still close.

Why the watermark comes from the trade partition alone: one partition of
one topic is a total order, so every decision above happens at a definite
log position, and a replay of the same log closes the same bars with the
same contents in the same order. (Quotes, read from another topic, arrive
interleaved differently on every run.) The idle timer is the one wall-clock
input: it can only differ from a replay if a trade older than wall clock
minus grace arrives after a quiet spell.

One bad clock must not close the partition's bars for the day: a trade more
than ``lead`` (an hour, or two bar widths if more) past the watermark moves
it only once a trade of another sym is that far ahead too (a market reopening
after a halt); until then it waits in ``held``, out of the bars (it is in the
day's analytics at once). Held trades are folded in when confirmed, or at
the end of day, when the fence closes every bar and the watermark starts
again from nothing for the next day.

A trade whose bar is already closed (its bucket's end + grace is at or
below the watermark, or the sym has moved on to a later bucket) is *late*:
it still counts in the day's analytics, but no closed bar is reopened; it
is counted per sym in ``late`` (shown by /cep/v1/status), never dropped
silently.
"""

from __future__ import annotations

from typing import Any

from streams.cep.longs import saturated

# an open bar: [bucket, open, high, low, close, volume, trades, notional]
Bar = list[Any]
NO_WATERMARK = -(1 << 62)
LEAD_NS = 3600 * 10**9  # a trade further ahead of the watermark waits for another sym to confirm it


class BarBook:
    """The open bars and watermark of one partition; its state is a dict of plain data."""

    def __init__(self, width_ns: int, grace_ns: int, state: dict[str, Any] | None = None):
        if width_ns <= 0:
            raise ValueError(f"bar width must be positive, not {width_ns} ns")
        self.width = width_ns
        self.grace = grace_ns
        state = state or {}
        self.wm: int = state.get("wm", NO_WATERMARK)
        self.open: dict[str, Bar] = state.get("open", {})
        self.late: dict[str, int] = state.get("late", {})
        self.held: list[dict[str, Any]] = state.get("held", [])  # trades far ahead, not confirmed yet
        self.lead = max(LEAD_NS, 2 * width_ns)
        self._next_close = self._earliest_close()

    def state(self) -> dict[str, Any]:
        return {"wm": self.wm, "open": self.open, "late": self.late, "held": self.held}

    def _hold(self, r: dict[str, Any]) -> list[dict[str, Any]] | None:
        """None if trade ``r`` is not far ahead of the watermark; else the held trades to fold
        in now (all of them, in log order, once two syms are that far ahead), or []."""
        if self.wm == NO_WATERMARK or r["time"] <= self.wm + self.lead:
            return None
        self.held.append({"time": r["time"], "sym": r["sym"], "price": r["price"], "size": r["size"]})
        if len({h["sym"] for h in self.held}) < 2:
            return []
        held, self.held = self.held, []
        return held

    def _earliest_close(self) -> int:
        if not self.open:
            return 1 << 62
        return (min(bar[0] for bar in self.open.values()) + 1) * self.width + self.grace

    def _close(self, sym: str, bar: Bar, reason: str, date: str, out: list[dict[str, Any]]) -> None:
        bucket, o, h, lo, c, v, n, notional = bar
        out.append({
            "time": bucket * self.width, "sym": sym, "date": date, "end": (bucket + 1) * self.width,
            "open": o, "high": h, "low": lo, "close": c, "volume": saturated(v), "trades": n,
            "vwap": notional / v if v else None, "closed_by": reason,
        })

    def _close_due(self, reason: str, date: str, out: list[dict[str, Any]]) -> None:
        """Close every open bar whose end + grace the watermark has reached, oldest first."""
        limit = self.wm - self.grace
        due = sorted((bar[0], sym) for sym, bar in self.open.items() if (bar[0] + 1) * self.width <= limit)
        for _, sym in due:
            self._close(sym, self.open.pop(sym), reason, date, out)
        self._next_close = self._earliest_close()

    def add(self, rows: list[dict[str, Any]], date: str, hold: bool = True) -> list[dict[str, Any]]:
        """Fold trades (log order) into the bars; return the bars they closed, in closing order.
        ``hold``: trades far ahead of the watermark wait for confirmation (see the module)."""
        out: list[dict[str, Any]] = []
        width, grace, open_bars = self.width, self.grace, self.open
        for r in rows:
            confirmed = self._hold(r) if hold else None
            if confirmed is not None:
                out.extend(self.add(confirmed, date, hold=False))
                continue
            t = r["time"]
            bucket = t // width
            if (bucket + 1) * width + grace <= self.wm:
                self.late[r["sym"]] = self.late.get(r["sym"], 0) + 1
                continue
            if t > self.wm:
                self.wm = t
                if t >= self._next_close:
                    self._close_due("watermark", date, out)
            sym, price, size = r["sym"], r["price"], r["size"]
            bar = open_bars.get(sym)
            if bar is not None and bar[0] != bucket:
                if bucket < bar[0]:
                    self.late[sym] = self.late.get(sym, 0) + 1
                    continue
                self._close(sym, open_bars.pop(sym), "next", date, out)
                bar = None
            if bar is None:
                open_bars[sym] = [bucket, price, price, price, price, size, 1, price * size]
                end = (bucket + 1) * width + grace
                if end < self._next_close:
                    self._next_close = end
            else:
                if price > bar[2]:
                    bar[2] = price
                if price < bar[3]:
                    bar[3] = price
                bar[4] = price
                bar[5] += size
                bar[6] += 1
                bar[7] += price * size
        return out

    def advance(self, now_ns: int, date: str) -> list[dict[str, Any]]:
        """The idle timer: move the watermark to ``now_ns`` (wall clock) and close what is due."""
        out: list[dict[str, Any]] = []
        if now_ns > self.wm:
            self.wm = now_ns
            if now_ns >= self._next_close:
                self._close_due("idle", date, out)
        return out

    def due(self, now_ns: int) -> bool:
        """Whether advancing the watermark to ``now_ns`` would close a bar."""
        return now_ns >= self._next_close

    def close_all(self, reason: str, date: str) -> list[dict[str, Any]]:
        """End of day: close every open bar, oldest first, then those of the trades still held
        (folded in now), and start the next day clean (no watermark: a bad clock of one day
        does not reach into the next)."""
        out: list[dict[str, Any]] = []
        held, self.held = self.held, []
        for rows in ([], held):
            out.extend(self.add(rows, date, hold=False))
            for _, sym in sorted((bar[0], sym) for sym, bar in self.open.items()):
                self._close(sym, self.open.pop(sym), reason, date, out)
        self.late = {}
        self.wm = NO_WATERMARK
        self._next_close = self._earliest_close()
        return out

    def open_bar(self, sym: str, date: str) -> dict[str, Any] | None:
        """The sym's bar still open, as a record (``closed_by`` empty), or None."""
        bar = self.open.get(sym)
        if bar is None:
            return None
        out: list[dict[str, Any]] = []
        self._close(sym, list(bar), "", date, out)
        return out[0]
