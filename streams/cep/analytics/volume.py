"""Cumulative volume, notional, trade count and VWAP of the day per sym.

Sums are taken in log order, so a replay of the same log gives the same
floating-point values bit for bit.
"""

from __future__ import annotations

from typing import Any

from streams.cep.analytics import Analytic, register
from streams.cep.longs import saturated


@register
class Volume(Analytic):
    name = "volume"
    table = "trade"
    fields = {"volume": "long", "notional": "double", "trades": "long", "vwap": "double"}

    def initial(self) -> dict[str, Any]:
        return {"volume": 0, "notional": 0.0, "trades": 0}

    def update(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        volume, notional = state["volume"], state["notional"]
        for r in rows:
            size = r["size"]
            volume += size
            notional += r["price"] * size
        state["volume"], state["notional"] = saturated(volume), notional
        state["trades"] += len(rows)

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        volume = state["volume"]
        return {"volume": volume, "notional": state["notional"], "trades": state["trades"],
                "vwap": state["notional"] / volume if volume else None}
