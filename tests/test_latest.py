"""Which SQL needs only each sym's latest row of today (gateway/latest.py)."""

from __future__ import annotations

import pytest
import sqlglot

from gateway.latest import as_fetched, latest_only
from gateway.sql import DIALECT

SOURCE = "__tickplant_source_test_0__"

LATEST = [
    "SELECT * FROM T WHERE date = today() ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, price FROM T WHERE sym IN ('A', 'B') ORDER BY time DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(price, time) AS p, max(time) FROM T WHERE date = today() GROUP BY sym",
    "SELECT date, sym, argMax(bid, time), argMax(ask, time) FROM T GROUP BY date, sym ORDER BY sym",
    ("SELECT sym, argMax(price, time) FROM (SELECT time, sym, price, date FROM T WHERE sym != 'X' "
     "LIMIT 18446744073709551615) AS trade GROUP BY sym"),
    "SELECT sym, argMax(bid, (time, seq)) AS bid, max(time) FROM T GROUP BY sym",  # kdb+'s order on ties
    "SELECT * FROM T ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym",
    ('SELECT sym, argMax(bid, time) FROM (SELECT "time", "sym", "bid", "date" FROM T) AS quote '
     "WHERE date = today() GROUP BY sym"),  # a column grant's projection
]
NOT_LATEST = [
    "SELECT * FROM T WHERE size > 100 ORDER BY sym, time DESC LIMIT 1 BY sym",  # may drop the latest row
    "SELECT * FROM T ORDER BY sym, time LIMIT 1 BY sym",  # the first row, not the last
    "SELECT * FROM T ORDER BY sym, time DESC LIMIT 2 BY sym",
    "SELECT * FROM T ORDER BY sym, price DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(price, size) FROM T GROUP BY sym",
    "SELECT sym, argMax(price, time), count() FROM T GROUP BY sym",
    "SELECT exchange, argMax(price, time) FROM T GROUP BY exchange",
    "SELECT sym, argMax(price, time) FROM T GROUP BY sym HAVING max(price) > 1",
    ("SELECT sym, argMax(price, time) FROM (SELECT time, sym, price, date FROM T WHERE exchange = 'N' "
     "LIMIT 18446744073709551615) AS trade GROUP BY sym"),  # a row filter on another column
    "SELECT sym, max(time + 1) FROM T GROUP BY sym",
    "SELECT sym, argMax(bid, (seq, time)) FROM T GROUP BY sym",  # the last published, not the latest
    "SELECT sym, argMax(bid, (time, size)) FROM T GROUP BY sym",
    "SELECT sym, max((time, seq)) FROM T GROUP BY sym",
    "SELECT * FROM T ORDER BY sym, time DESC, seq LIMIT 1 BY sym",  # the first published of the latest time
    "SELECT * FROM T ORDER BY sym, seq DESC, time DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(bid, time) FROM (SELECT time, sym, bid + 1 AS bid FROM T) AS q GROUP BY sym",
    "SELECT sym, argMax(bid, time) FROM (SELECT time, sym, bid FROM T WHERE bid > 1) AS q GROUP BY sym",
    "SELECT sym, argMax(bid, time) FROM (SELECT bid AS time, sym, bid FROM T) AS q GROUP BY sym",
    "SELECT sym, argMax(bid, time) FROM (SELECT DISTINCT time, sym, bid FROM T) AS q GROUP BY sym",
]


COLUMNS = ["time", "sym", "price", "size", "bid", "ask", "exchange"]


def _ast(statement: str) -> sqlglot.exp.Expression:
    return sqlglot.parse_one(statement.replace("FROM T", f"FROM {SOURCE} AS trade", 1), read=DIALECT)


@pytest.mark.parametrize("statement", LATEST)
def test_latest_rows_answer(statement):
    assert latest_only(_ast(statement), SOURCE)


@pytest.mark.parametrize("statement", NOT_LATEST)
def test_every_row_is_needed(statement):
    assert not latest_only(_ast(statement), SOURCE)


AS_FETCHED = [  # the latest rows as they are are the answer (kdb+'s ``select by sym``); the
    # engine plans ``today()`` as the open day's literal (gateway.plan.replace_today)
    "SELECT * FROM T WHERE date = '2026-11-23' ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * EXCEPT (seq) FROM T WHERE date = toDate('2026-11-23') AND sym IN ('A', 'B') AND 1 "
    "ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym",  # the named ``last``
    "SELECT * FROM T WHERE sym = 'A' AND date IN ('2026-11-23') AND TRUE ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, bid, exchange AS ex, date FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(bid, time) AS bid, argMax(ask, (time, seq)) AS a, max(time) AS ts FROM T "
    "WHERE date = '2026-11-23' GROUP BY sym ORDER BY sym",
    "SELECT date, sym, argMax(bid, time) AS bid FROM T GROUP BY date, sym ORDER BY date, sym",
    "SELECT argMax(bid, time) AS bid FROM T GROUP BY sym",  # in no order: by sym is one
]
NOT_AS_FETCHED = [  # the latest rows are enough, but the statement must run over them
    "SELECT sym, argMax(bid, time) FROM T GROUP BY sym ORDER BY sym",  # a value with no name of its own
    "SELECT sym, argMax(ask, time) AS bid FROM T GROUP BY sym",  # an alias naming another column
    "SELECT sym, bid AS ask FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, sym FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(bid, time) AS b FROM T GROUP BY sym ORDER BY b",  # another order
    "SELECT sym, argMax(bid, time) AS b FROM T GROUP BY sym ORDER BY sym DESC",
    "SELECT sym, argMax(bid, time) AS b FROM T GROUP BY sym ORDER BY sym LIMIT 5",  # some of the syms
    "SELECT sym, bid + 1 AS b FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * EXCEPT (bid) FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * REPLACE (bid + 1 AS bid) FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T ORDER BY sym DESC, time DESC LIMIT 1 BY sym",  # another order
    "SELECT * FROM T ORDER BY time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE sym != 'A' ORDER BY sym, time DESC LIMIT 1 BY sym",  # a filter left to run
    "SELECT * FROM T WHERE sym = 'A' OR sym = 'B' ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE date >= today() ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE sym IN ('A', 1) ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE 0 ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE trade.sym = 'A' ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T ORDER BY sym, time DESC LIMIT 1 BY sym SETTINGS max_threads = 1",
    "WITH 1 AS one SELECT * FROM T ORDER BY sym, time DESC LIMIT 1 BY sym",
    ("SELECT * FROM (SELECT time, sym, bid, date FROM T LIMIT 18446744073709551615) AS quote "
     "ORDER BY sym, time DESC LIMIT 1 BY sym"),  # through a grant's fence
    # what ClickHouse answers otherwise than the rows, or refuses (found in review)
    "SELECT * FROM T ORDER BY sym, time DESC, seq DESC LIMIT 1 BY sym",  # ``*`` has seq then
    "SELECT sym, argMax(bid, time) AS bid FROM T GROUP BY sym WITH ROLLUP ORDER BY sym",
    "SELECT sym, argMax(bid, time) AS bid FROM T GROUP BY sym WITH CUBE",
    "SELECT sym, argMax(bid, time) AS bid FROM T GROUP BY sym WITH TOTALS",
    ("SELECT date, sym, argMax(bid, time) AS bid FROM T WHERE date = '2026-11-23' GROUP BY date, sym "
     "ORDER BY date WITH FILL FROM toDate('2026-11-20') TO toDate('2026-11-24'), sym"),
    "SELECT * FROM T WHERE date = CAST('2026-11-22' AS DateTime) + 1 ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE date = '2026-11-22' + 1 ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT * FROM T WHERE date = '2026-W48-1' ORDER BY sym, time DESC LIMIT 1 BY sym",
    "SELECT sym, argMax(bid, time) AS bid, max(time) AS time FROM T GROUP BY sym",  # time is the max then
    "SELECT sym, argMax(bid, time) AS bid, argMax(bid, (time, seq)) AS b2 FROM T GROUP BY sym",
    "SELECT argMax(sym, time) AS sym FROM T GROUP BY sym",
    "SELECT sym, argMax(time) AS t FROM T GROUP BY sym",
    "SELECT sym, argMax(bid, time) AS b FROM T GROUP BY sym ORDER BY date, sym",  # date is no key
    "SELECT * FROM T ORDER BY sym, trade.time DESC LIMIT 1 BY sym",
]


@pytest.mark.parametrize("statement", AS_FETCHED)
def test_the_latest_rows_are_the_answer(statement):
    """(gateway/test_gateway.py checks the answers against the engine's)"""
    assert latest_only(_ast(statement), SOURCE) and as_fetched(_ast(statement), SOURCE, COLUMNS)


@pytest.mark.parametrize("statement", NOT_AS_FETCHED)
def test_the_statement_runs_over_the_latest_rows(statement):
    assert as_fetched(_ast(statement), SOURCE, COLUMNS) is None
