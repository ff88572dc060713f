"""What a query that could not be answered tells its caller: the status and one line.

A ClickHouse error is the caller's fault (400: the statement, said without the SQL the
gateway generated, paths or internal names) or the plant's (503: details in the log only).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("gateway.engine")


class EndpointDown(RuntimeError):
    """A ClickHouse endpoint of the pool did not answer (the query may run on another)."""


class PartialRefused(RuntimeError):
    """An RDB node's engine refused a split statement's partial: run it unsplit."""


class QueryFailed(RuntimeError):
    """A query that could not be answered: ``status`` is the HTTP status to give, the
    message says why in one line (and whether retrying may help)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ClickHouse errors about the plant, not the statement: the HDB's files or S3, the network,
# memory. Retrying may help, and the caller is told no more than that (paths, keys).
SERVER_SIDE_ERRORS = frozenset("""
    CANNOT_STAT FILE_DOESNT_EXIST CANNOT_OPEN_FILE CANNOT_READ_FROM_FILE_DESCRIPTOR CANNOT_READ_ALL_DATA
    S3_ERROR NETWORK_ERROR SOCKET_TIMEOUT ALL_CONNECTION_TRIES_FAILED RECEIVED_ERROR_FROM_REMOTE_IO_SERVER
    MEMORY_LIMIT_EXCEEDED CANNOT_ALLOCATE_MEMORY TOO_MANY_SIMULTANEOUS_QUERIES INCORRECT_DATA
    CANNOT_EXTRACT_TABLE_STRUCTURE CORRUPTED_DATA
""".split())
_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*\))?\s*$")
# what follows these in a ClickHouse message is the engine's view of the statement: the SQL
# the gateway generated (HDB locations, S3 settings, the caller's own row filter), the
# operators it runs, the files it reads
_INTERNAL_TAIL = re.compile(r"(?i)[.:]?\s*(?:In scope |while executing |: while executing|\(in file/uri |"
                            r"\(in query:|Stack trace|read stage:|While executing |Maybe you meant:.*\bIn scope ).*$")
_INTERNAL_PARTS = [
    (re.compile(r"__tickplant_\w+"), "<source>"),
    (re.compile(r"__table\d+\.?"), ""),
    (re.compile(r"__set_\S+"), "<set>"),
    (re.compile(r"(?i)\b(?:s3|https?|file)://\S+"), "<location>"),
    (re.compile(r"(?<![\w'])/(?:[\w.@%+=:-]+/)+[\w.@%+=:{},*-]*"), "<path>"),
]
USER_ERROR_CHARS = 300


def clickhouse_failure(message: str) -> QueryFailed:
    """A ClickHouse error as the caller sees it: a fault in the statement is theirs (400),
    said in one line without the engine's view of the statement (``user_message``); a
    fault of the plant is 503, its details in the gateway's log only."""
    name = _ERROR_NAME.search(message)
    code = name.group(1) if name else None
    if code in SERVER_SIDE_ERRORS:
        log.warning("ClickHouse failed a query: %s", message)
        return QueryFailed(503, f"the historical data could not be read ({code}); retry shortly, "
                                "and if it persists tell the plant's operators")
    log.info("ClickHouse refused a query: %s", message)
    return QueryFailed(400, f"ClickHouse refused the query: {user_message(message, code)}")


def user_message(message: str, code: str | None) -> str:
    """ClickHouse's message cut to what the caller wrote: no generated SQL, no paths, no
    internal names, one bounded line. A syntax error is in SQL the gateway wrote from the
    checked tree, which the caller never saw: said as such."""
    if code == "SYNTAX_ERROR":
        return "the statement uses syntax the gateway cannot pass on to ClickHouse; simplify it (SYNTAX_ERROR)"
    text = message.split("\n", 1)[0]
    text = re.sub(r"^Code: \d+\. DB::\w*Exception: ", "", text)
    text = _ERROR_NAME.sub("", text).strip()
    text = _INTERNAL_TAIL.sub("", text).strip().rstrip(".:, ")
    for pattern, replacement in _INTERNAL_PARTS:
        text = pattern.sub(replacement, text)
    if len(text) > USER_ERROR_CHARS:
        text = text[: USER_ERROR_CHARS - 3] + "..."
    return f"{text} ({code})" if code else text
