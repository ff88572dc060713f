"""Last trade per sym: price, size and time of the latest trade print of the day."""

from __future__ import annotations

from typing import Any

from streams.cep.analytics import Analytic, register


@register
class LastTrade(Analytic):
    name = "last_trade"
    table = "trade"
    fields = {"last_price": "double", "last_size": "long", "last_time": "long"}

    def initial(self) -> dict[str, Any]:
        return {"price": None, "size": None, "time": None}

    def update(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        last = rows[-1]
        state["price"], state["size"], state["time"] = last["price"], last["size"], last["time"]

    def snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"last_price": state["price"], "last_size": state["size"], "last_time": state["time"]}
