"""Two trading days for the gateway's tests: the first written to the HDB, the second open on
the log (for an RDB worker to load), both of the synthetic market; the rows published each day."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.publisher import Tickerplant
from sinks.backfill import backfill
from tickplant.clock import ManualClock


def publish_two_days(settings: Any, catalog: Any, t0: int, days: tuple[dt.date, dt.date], *, syms: int,
                     seed: int, events: int) -> dict[dt.date, dict[str, list[dict]]]:
    """``events`` quote events a day from ``t0`` (09:30 of the first day); the day rolled at
    the next day's 00:30; the first day's trade and quote backfilled into the HDB."""
    clock = ManualClock(t0)
    open_first_day(settings, catalog, clock)
    market = SyntheticMarket(syms=syms, seed=seed, clock=clock)
    published: dict[dt.date, dict[str, list[dict]]] = {}
    for day in days:
        if day != days[0]:
            clock.advance(15 * 3600)
            roll_day(settings, catalog, clock)
            clock.advance(9 * 3600)
        trades, quotes = market.events(events)
        with Tickerplant(settings, catalog, mode="batch") as tp:
            tp.publish_rows("quote", quotes)
            tp.publish_rows("trade", trades)
        published[day] = {"trade": trades, "quote": quotes}
    for table in ("trade", "quote"):
        backfill(settings, table, days[0], catalog=catalog)
    return published
