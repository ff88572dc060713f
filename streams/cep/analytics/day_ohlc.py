"""The day's open, high, low and close per sym, from trades (reset at the trade fence)."""

from __future__ import annotations

from typing import Any

from streams.cep.analytics import Analytic, register


@register
class DayOhlc(Analytic):
    name = "day_ohlc"
    table = "trade"
    fields = {"open": "double", "high": "double", "low": "double", "close": "double"}

    def initial(self) -> dict[str, Any]:
        return {"open": None, "high": None, "low": None, "close": None}

    def update(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        prices = [r["price"] for r in rows]
        if state["open"] is None:
            state["open"] = state["high"] = state["low"] = prices[0]
        state["high"] = max(state["high"], max(prices))
        state["low"] = min(state["low"], min(prices))
        state["close"] = prices[-1]

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        return dict(state)
