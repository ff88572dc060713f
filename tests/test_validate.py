"""The checks every reader of the log makes (ingest/validate.py), row by row."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from ingest.topics import partition_for
from ingest.validate import TIME_CEILING, RowRules
from tickplant.clock import ManualClock
from tickplant.config import Settings

DAY = dt.date(2026, 11, 22)
NOON = int(dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC).timestamp()) * 10**9
CLOSE = int(dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()) * 10**9


def quote(**changes) -> dict:
    return {"time": NOON, "sym": "AAPL", "bid": 1.0, "ask": 1.1, "bsize": 1, "asize": 1, "exchange": "N", **changes}


@pytest.fixture
def rules(catalog) -> RowRules:
    return RowRules(Settings(), catalog, clock=ManualClock(NOON))  # today is DAY


@pytest.mark.parametrize(("changes", "reason"), [
    ({"sym": ""}, "sym is empty"),
    ({"sym": "A\tB"}, "control or unprintable"),
    ({"sym": "É" * 33}, "66 bytes is over the 64-byte limit"),
    ({"time": -1}, "before the epoch"),
    ({"time": CLOSE + 3600 * 10**9 + 1}, "max_future_seconds"),
    ({"bid": math.nan}, "bid is nan"),
    ({"ask": -math.inf}, "ask is -inf"),
])
def test_each_rule_refuses_with_its_reason(rules, changes, reason):
    row = quote(**changes)
    kept, refused = rules.check("quote", "quote", [quote(), row, quote()], DAY)
    assert kept == [quote(), quote()]
    assert [(i, why) for i, _, why in refused.rows] == [(1, refused.rows[0][2])] and reason in refused.rows[0][2]


def test_what_passes(rules):
    rows = [quote(time=0), quote(time=CLOSE + 3600 * 10**9), quote(sym="É" * 32), quote(sym="BRK.B")]
    assert rules.check("quote", "quote", rows, DAY) == (rows, None)
    # with no known day only the absolute ceiling holds
    assert rules.check("quote", "quote", [quote(time=TIME_CEILING)], None)[1] is None
    assert rules.check("quote", "quote", [quote(time=TIME_CEILING + 1)], None)[1] is not None


def test_another_tables_rows_and_the_wrong_partition(rules):
    kept, refused = rules.check("trade", "quote", [quote()], DAY)
    assert kept == [] and "'quote' row in the 'trade' topic" in refused.reason()
    home = partition_for("AAPL", 4)
    assert rules.check("quote", "quote", [quote()], DAY, home)[1] is None
    _, refused = rules.check("quote", "quote", [quote()], DAY, (home + 1) % 4)
    assert f"belongs in partition {home}" in refused.reason()


def test_a_readers_stale_view_of_the_days_never_refuses_a_good_row(catalog):
    """A reader that has not yet read the marker of a roll takes the new day's rows for the old
    day's: as long as they are within today's trading day they are kept; beyond it, refused."""
    day = 86_400 * 10**9
    rules = RowRules(Settings(), catalog, clock=ManualClock(NOON + day))  # today is the day after DAY
    row = quote(time=NOON + day)
    assert rules.check("quote", "quote", [row], DAY) == ([row], None)
    far = quote(time=CLOSE + day + 3600 * 10**9 + 1)  # past today's close and the hour after it
    assert rules.check("quote", "quote", [far], DAY)[1] is not None
