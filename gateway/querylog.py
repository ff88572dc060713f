"""Every query the gateway answers or refuses, one JSON line each, readable as a table.

kdb+ gateways log each request for audit and capacity planning; ours writes
``<data_dir>/gateway/query_log.jsonl`` (user, endpoint, statement, duration,
rows, outcome, error) and serves it back as the ``query_log`` table, so
``SELECT user, count() FROM query_log GROUP BY user`` works like any other
query (admins, or users granted ``query_log``).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

from sinks.hdb import quote

STRUCTURE = (
    "`ts` DateTime64(3, 'UTC'), `user` String, `endpoint` String, `statement` String, "
    "`duration_ms` Float64, `rows` Int64, `outcome` String, `status` Int32, `error` String"
)
TABLE = "query_log"
COLUMNS = ["ts", "user", "endpoint", "statement", "duration_ms", "rows", "outcome", "status", "error"]
# as /v1/tables lists the plant's tables' columns (Arrow type names), ``date`` included
ARROW_TYPES = {"ts": "timestamp[ms, tz=UTC]", "user": "string", "endpoint": "string", "statement": "string",
               "duration_ms": "double", "rows": "int64", "outcome": "string", "status": "int32", "error": "string",
               "date": "date32[day]"}


class QueryLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, user: str, endpoint: str, statement: str, duration_ms: float, rows: int,
               outcome: str, status: int, error: str = "") -> dict[str, Any]:
        entry = {
            "ts": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "user": user, "endpoint": endpoint, "statement": statement,
            "duration_ms": round(duration_ms, 3), "rows": int(rows), "outcome": outcome,
            "status": int(status), "error": error,
        }
        line = json.dumps(entry) + "\n"
        with self._lock, self.path.open("a") as f:
            f.write(line)
        return entry

    def source(self, external: dict[str, tuple[bytes, str, str]] | None = None) -> str:
        """A FROM-able subquery over the log (empty before the first query), with a
        ``date`` column like every table. ``external``: the log goes to a ClickHouse server
        as external data (added there), since it cannot read this host's file."""
        cols = ", ".join(f"`{c}`" for c in COLUMNS) + ", toDate(ts) AS date"
        if not self.path.exists() or self.path.stat().st_size == 0:
            return f"(SELECT {cols} FROM null({quote(STRUCTURE)}))"
        if external is not None:
            name = f"__tickplant_query_log_{len(external)}"
            with self._lock:
                external[name] = (self.path.read_bytes(), "JSONEachRow", STRUCTURE)
            return f"(SELECT {cols} FROM {name})"
        return f"(SELECT {cols} FROM file({quote(str(self.path.resolve()))}, 'JSONEachRow', {quote(STRUCTURE)}))"
