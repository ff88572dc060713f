"""Last quote per sym: the touch (bid, ask, sizes), its spread and mid, and its time."""

from __future__ import annotations

from typing import Any

from streams.cep.analytics import Analytic, register


@register
class LastQuote(Analytic):
    name = "last_quote"
    table = "quote"
    fields = {"bid": "double", "ask": "double", "bsize": "long", "asize": "long",
              "spread": "double", "mid": "double", "quote_time": "long"}

    def initial(self) -> dict[str, Any]:
        return {"bid": None, "ask": None, "bsize": None, "asize": None, "time": None}

    def update(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        q = rows[-1]
        state.update(bid=q["bid"], ask=q["ask"], bsize=q["bsize"], asize=q["asize"], time=q["time"])

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        bid, ask = state["bid"], state["ask"]
        both = bid is not None and ask is not None
        return {"bid": bid, "ask": ask, "bsize": state["bsize"], "asize": state["asize"],
                "spread": ask - bid if both else None, "mid": (bid + ask) / 2 if both else None,
                "quote_time": state["time"]}
