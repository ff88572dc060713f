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
        rng = self.rng
        now = max(self.clock.now_ns(), self._last_ns + 1)
        trades: list[dict[str, Any]] = []
        quotes: list[dict[str, Any]] = []
        for i in range(n):
            sym = self.syms[rng.randrange(len(self.syms))]
            mid = self.mid[sym] * (1.0 + rng.gauss(0.0, 0.0002))
            self.mid[sym] = mid
            half = max(0.005, round(mid * 0.0001, 2))
            bid, ask = round(mid - half, 2), round(mid + half, 2)
            t = now + i
            exchange = EXCHANGES[rng.randrange(len(EXCHANGES))]
            quotes.append({
                "time": t, "sym": sym, "bid": bid, "ask": ask,
                "bsize": rng.randrange(1, 50) * 100, "asize": rng.randrange(1, 50) * 100,
                "exchange": exchange,
            })
            if rng.random() < self.trade_ratio:
                trades.append({
                    "time": t, "sym": sym, "price": bid if rng.random() < 0.5 else ask,
                    "size": rng.randrange(1, 20) * 100, "exchange": exchange, "cond": "",
                })
        self._last_ns = now + n
        return trades, quotes


Publish = Callable[[str, list[dict[str, Any]]], None]


def run_feed(
    market: SyntheticMarket,
    publish: Publish,
    rate: float,
    stop: threading.Event,
    duration: float | None = None,
    tick_seconds: float = 0.01,
) -> int:
    """Publish ``rate`` quote events a second until ``stop`` (or ``duration``); return events."""
    start = time.monotonic()
    sent = 0
    while not stop.is_set():
        elapsed = time.monotonic() - start
        if duration is not None and elapsed >= duration:
            break
        due = int(rate * elapsed) - sent
        if due > 0:
            trades, quotes = market.events(due)
            publish("quote", quotes)
            if trades:
                publish("trade", trades)
            sent += due
        stop.wait(tick_seconds)
    return sent
