"""What a refusal is called: the HTTP status an exception answers with, and the outcome word
the query log records for it; one table for every door (REST, SQL, the ClickHouse interface)."""

from __future__ import annotations

from gateway import named
from gateway.auth import Unauthorized
from gateway.engine import QueryFailed
from gateway.sql import Forbidden, SqlError
from sinks.hdb import HdbQueryError
from sinks.store import StoreError

# every exception a door answers with its own status and message (``status_of``); any other is a 500
REFUSALS: tuple[type[Exception], ...] = (QueryFailed, Forbidden, Unauthorized, SqlError, named.BadParameter,
                                         HdbQueryError, StoreError, ValueError)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, QueryFailed):
        return exc.status
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, SqlError | named.BadParameter | HdbQueryError | ValueError):
        return 400
    if isinstance(exc, StoreError):  # the HDB's directory or bucket cannot be read (S3 refusing the keys)
        return 503
    return 500


def outcome(status: int) -> str:
    return {400: "bad request", 401: "unauthorized", 403: "denied", 408: "timeout", 413: "too large",
            429: "too many queries", 503: "unavailable"}.get(status, "error")
