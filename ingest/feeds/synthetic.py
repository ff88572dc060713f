"""A synthetic market: random-walk mids, quotes around them, trades at the touch.

Deterministic for a seed. Rows are stamped by the feed's Clock, so a
ScaledClock compresses a trading day into minutes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from tickplant.clock import Clock, SystemClock

TICKERS = (
    "AAPL MSFT AMZN GOOG META NVDA TSLA JPM V JNJ WMT PG MA UNH HD DIS BAC XOM CVX KO PEP "
    "CSCO INTC ORCL IBM NFLX ADBE CRM AMD QCOM TXN AVGO MCD NKE SBUX GS MS C WFC T VZ PFE MRK "
    "ABT TMO LLY BA CAT GE MMM"
).split()
EXCHANGES = ("N", "Q", "A", "P", "Z")


def sym_names(count: int) -> list[str]:
    return [TICKERS[i] if i < len(TICKERS) else f"S{i:04d}" for i in range(count)]


class SyntheticMarket:
    """Generates quote and trade rows; ``trade_ratio`` of events also print a trade."""

    def __init__(self, syms: int = 50, seed: int = 1, clock: Clock | None = None, trade_ratio: float = 0.3):
        self.rng = random.Random(seed)
        self.syms = sym_names(syms)
        self.clock = clock or SystemClock()
        self.trade_ratio = trade_ratio
        self.mid = {s: self.rng.uniform(10, 500) for s in self.syms}
        self._last_ns = 0

    def events(self, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The next ``n`` quote events and the trades among them: (trades, quotes)."""
        trades, quotes = self.columns(n)
        return _rows(trades), _rows(quotes)

    def columns(self, n: int) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """``events`` as columns (for ``Tickerplant.publish_frame``): the same values."""
        rng = self.rng
        now = max(self.clock.now_ns(), self._last_ns + 1)
        syms, mids, nsyms = self.syms, self.mid, len(self.syms)
        randrange, gauss, random = rng.randrange, rng.gauss, rng.random
        q_time: list[int] = []
        q_sym: list[str] = []
        q_bid: list[float] = []
        q_ask: list[float] = []
        q_bsize: list[int] = []
        q_asize: list[int] = []
        q_exchange: list[str] = []
        t_time: list[int] = []
        t_sym: list[str] = []
        t_price: list[float] = []
        t_size: list[int] = []
        t_exchange: list[str] = []
        for i in range(n):  # the draws in the order the row-at-a-time generator made them
            sym = syms[randrange(nsyms)]
            mid = mids[sym] * (1.0 + gauss(0.0, 0.0002))
            mids[sym] = mid
            half = max(0.005, round(mid * 0.0001, 2))
            bid, ask = round(mid - half, 2), round(mid + half, 2)
            t = now + i
            exchange = EXCHANGES[randrange(len(EXCHANGES))]
            q_time.append(t)
            q_sym.append(sym)
            q_bid.append(bid)
            q_ask.append(ask)
            q_bsize.append(randrange(1, 50) * 100)
            q_asize.append(randrange(1, 50) * 100)
            q_exchange.append(exchange)
            if random() < self.trade_ratio:
                t_time.append(t)
                t_sym.append(sym)
                t_price.append(bid if random() < 0.5 else ask)
                t_size.append(randrange(1, 20) * 100)
                t_exchange.append(exchange)
        self._last_ns = now + n
        trades: dict[str, list[Any]] = {"time": t_time, "sym": t_sym, "price": t_price, "size": t_size, "exchange": t_exchange,
                  "cond": [""] * len(t_time)}
        quotes: dict[str, list[Any]] = {"time": q_time, "sym": q_sym, "bid": q_bid, "ask": q_ask, "bsize": q_bsize, "asize": q_asize,
                  "exchange": q_exchange}
        return trades, quotes


def _rows(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


Publish = Callable[[str, list[dict[str, Any]]], None]


# a tick of at least this many events goes out as columns (``publish_frame``): below it the
# rows' own path is cheaper (the column-wise path costs ~0.5 ms a call whatever its size)
FRAME_MIN_EVENTS = 1000


def run_feed(
    market: SyntheticMarket,
    publish: Publish,
    rate: float,
    stop: threading.Event,
    duration: float | None = None,
    tick_seconds: float = 0.01,
    publish_frame: Callable[[str, Any], Any] | None = None,
) -> int:
    """Publish ``rate`` quote events a second until ``stop`` (or ``duration``); return events.
    With ``publish_frame`` (``Tickerplant.publish_frame``), ticks of ``FRAME_MIN_EVENTS`` events
    or more go out as columns; the log is the same either way."""
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        elapsed = time.monotonic() - start
        if duration is not None and elapsed >= duration:
            break
        due = int(rate * elapsed) - sent
        if due > 0:
            if publish_frame is not None and due >= FRAME_MIN_EVENTS:
                trade_cols, quote_cols = market.columns(due)
                publish_frame("quote", quote_cols)
                if trade_cols["time"]:
                    publish_frame("trade", trade_cols)
            else:
                trades, quotes = market.events(due)
                publish("quote", quotes)
                if trades:
                    publish("trade", trades)
            sent += due
        stop.wait(tick_seconds)
    return sent
