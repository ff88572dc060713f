"""The gateway on AWS Lambda: SQL and named queries over the HDB on S3, history only.

The reference's serverless gateway (a q function checking entitlements, then
asking the data's processes) is here the plant's own gateway app (gateway/app.py)
run on each API Gateway event (gateway/apigw.py): the same SQL guard, named
queries, users file, statuses and one-line errors, answered from the HDB's
Parquet through embedded chDB. It has no RDB: it reads no Kafka, so the open
day (and, while the write-down may still be running, the day before it if the
HDB lacks it) is never in an answer: a statement over history and the open day
is answered from history saying what it leaves out (``notes``), one over the
open day alone is refused with a 400 saying so and where to ask. A statement
over history alone answers exactly as the plant's gateway does; every answer
says ``X-Tickplant-Source: hdb``.

Lambda specifics: the data directory defaults to ``/tmp/tickplant`` (the code's
directory is read-only); a users file is required (the function is on a
network), a path or ``s3://bucket/key``, the object copied to the data directory
and fetched again when it changes; each query-log record is also printed as a
JSON line, for CloudWatch Logs (``/tmp`` does not outlive the instance).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.fs as pafs

from gateway.apigw import EventError, call, error_response, response_of, scope_of
from gateway.app import create_app
from gateway.engine import Engine, QueryFailed
from gateway.plan import TableNeed
from gateway.querylog import QueryLog
from gateway.routing import NoReplica, Routing
from ingest.eod import TradingCalendar
from sinks.store import HdbStore
from tickplant.config import Settings, load_settings

log = logging.getLogger(__name__)

SOURCE_HEADER = ("x-tickplant-source", "hdb")
WRITE_DOWN_GRACE_S = 3600  # after a roll, the day before may still be being written down this long
USERS_CHECK_S = 5.0  # how often the users object on S3 is looked at (a HEAD)
LAMBDA_DATA_DIR = "/tmp/tickplant"


class ServerlessError(RuntimeError):
    """The serverless gateway is misconfigured; the message names the setting."""


class HistoryRouting:
    """The gateway's routing with no RDB: no nodes, no metadata topic, the open day by the
    plant's calendar (``eod_time``, ``eod_timezone``). It serves no day itself: the days only
    the RDB holds are ``unserved_dates``, which ``HistoryEngine`` leaves out saying so."""

    def __init__(self, settings: Settings, store: HdbStore | None = None):
        self.settings = settings
        self.calendar = TradingCalendar.from_settings(settings)
        self.store = store or HdbStore.from_settings(settings)
        self._thread = threading.Thread(target=lambda: None)  # no metadata topic to tail

    def start(self, wait: float = 0.0) -> HistoryRouting:
        return self

    def close(self) -> None:
        pass

    def open_date(self) -> dt.date:
        return self.calendar.trading_date(time.time_ns())

    def realtime_dates(self, table: str) -> set[dt.date]:
        return set()  # none that this process can read: see ``unserved_dates``

    def unserved_dates(self, table: str) -> list[dt.date]:
        """The days only the plant's RDB holds: the open day, and, within
        ``WRITE_DOWN_GRACE_S`` of the roll, the day before it unless the HDB already has it."""
        today = self.open_date()
        days = [today]
        before = today - dt.timedelta(days=1)
        if time.time_ns() - self.calendar.close_ns(before) < WRITE_DOWN_GRACE_S * 10**9 \
                and before not in self.store.dates(table):
            days.insert(0, before)
        return days

    def realtime_rows(self, table: str) -> int:
        return 0

    def published_version(self) -> int:
        return 0

    def partition_count(self, table: str) -> int:
        return self.settings.partitions

    def nodes(self, kind: str = "rdb") -> list:
        return []

    def announced(self, kind: str) -> list:
        return []

    def coverage(self, tables: Any) -> tuple[list[str], list[str]]:
        """Nothing it should answer is missing: the open day is never its to answer."""
        return [], [f"history only: the open day {self.open_date().isoformat()} is the plant's real-time "
                    "database's, not in this gateway's answers"]

    def route(self, table: str, partitions: Any, exclude: Any = ()) -> Any:
        raise NoReplica("the serverless gateway has no real-time database")

    def begin(self, url: str) -> None:
        pass

    def end(self, url: str) -> None:
        pass

    def bench(self, url: str, seconds: float = 0.0) -> None:
        pass


class HistoryEngine(Engine):
    """The gateway's engine over the HDB alone. A statement whose date range takes in a day
    only the RDB holds is answered from history with a note saying which days are left out
    (``notes``, in the answer and its ``X-Tickplant-Notes`` header); one that asks for
    nothing but such days is refused (400) saying so, and where to ask."""

    routing: HistoryRouting  # type: ignore[assignment]  # Routing's stand-in: the same calls, no Kafka

    def _realtime(self, need: TableNeed, columns: list[str] | None, view: Any,
                  deadline: float) -> tuple[list[tuple[dt.date, pa.Table]], list[dt.date], dict[str, Any]]:
        parts, hdb_days, info = super()._realtime(need, columns, view, deadline)
        unserved = [d for d in self.routing.unserved_dates(need.table) if need.dates.accepts(d) and d not in hdb_days]
        if not unserved:
            return parts, hdb_days, info
        listed = ", ".join(d.isoformat() for d in unserved)
        if not hdb_days:
            raise QueryFailed(400, f"the serverless gateway answers from history (the HDB) only: {need.table} on "
                                   f"{listed} is in the plant's real-time database; ask the plant's gateway")
        info["notes"] = [f"history only: {need.table} on {listed} (in the plant's real-time database) "
                         f"is not included"]
        return parts, hdb_days, info


class LambdaQueryLog(QueryLog):
    """The query log, each record also one JSON line on stdout (CloudWatch Logs)."""

    def record(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        entry = super().record(*args, **kwargs)
        print(json.dumps({"query_log": entry}), flush=True)
        return entry


class UsersObject:
    """The users file as an S3 object, copied to ``local`` (which the gateway watches as
    it watches any users file) and again whenever the object changes."""

    def __init__(self, url: str, local: Path, settings: Settings, check_seconds: float = USERS_CHECK_S):
        bucket, _, key = url[len("s3://"):].partition("/")
        if not bucket or not key:
            raise ServerlessError(f"gateway_users_file {url!r} names no object (s3://bucket/key)")
        self.url = url
        self.path = f"{bucket}/{key}"
        self.fs = HdbStore(f"s3://{bucket}", settings.s3_endpoint, settings.s3_region).fs
        self.local = local
        self.check_seconds = check_seconds
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.refresh(first=True)

    def refresh(self, first: bool = False) -> None:
        """Copy the object again if it changed (looked at most every ``check_seconds``). A
        failure after the first copy leaves the last copy in force, logged."""
        now = time.monotonic()
        if not first and now - self._checked < self.check_seconds:
            return
        self._checked = now
        try:
            info = self.fs.get_file_info(self.path)
            if info.type != pafs.FileType.File:
                raise ServerlessError(f"gateway_users_file {self.url} does not exist")
            stamp = (info.mtime_ns or 0, info.size or 0)
            if stamp == self._stamp:
                return
            with self.fs.open_input_stream(self.path) as f:
                data = f.read()
        except (OSError, ServerlessError) as exc:
            if first:
                raise ServerlessError(f"cannot read gateway_users_file {self.url}: {exc}") from None
            log.error("users file %s not fetched again, the last copy stays in force: %s", self.url, exc)
            return
        self.local.parent.mkdir(parents=True, exist_ok=True)
        part = self.local.with_name(self.local.name + ".part")
        part.write_bytes(data)
        os.replace(part, self.local)
        self._stamp = stamp


def lambda_settings(settings: Settings | None = None) -> Settings:
    """The plant's settings (``TICKPLANT_*`` variables, ``tickplant.toml``), with the data
    directory in ``/tmp`` on Lambda unless one is given."""
    settings = settings or load_settings()
    if os.environ.get("LAMBDA_TASK_ROOT") and "TICKPLANT_DATA_DIR" not in os.environ:
        settings = settings.replace(data_dir=Path(LAMBDA_DATA_DIR))
    return settings


class ServerlessGateway:
    """The gateway app over history, answering API Gateway events."""

    def __init__(self, settings: Settings):
        if not settings.gateway_users_file:
            raise ServerlessError("gateway_users_file is not set: a serverless gateway is on a network, give it "
                                  "a users file (TICKPLANT_GATEWAY_USERS_FILE: a path or s3://bucket/key)")
        self.users_object: UsersObject | None = None
        if settings.gateway_users_file.startswith("s3://"):
            local = Path(settings.data_dir) / "gateway" / "users.toml"
            self.users_object = UsersObject(settings.gateway_users_file, local, settings)
            settings = settings.replace(gateway_users_file=str(local))
        self.settings = settings
        # HistoryRouting answers the calls the gateway makes of its Routing, without Kafka
        self.app = create_app(settings, routing=cast(Routing, HistoryRouting(settings)), engine_class=HistoryEngine)
        gw = self.app.state.gateway
        gw.query_log = gw.engine.query_log = LambdaQueryLog(gw.query_log.path)

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        """One API Gateway (HTTP API, payload 2.0) event -> its response object."""
        if self.users_object is not None:
            self.users_object.refresh()
        try:
            scope, body = scope_of(event)
        except EventError as exc:
            return error_response(400, str(exc), dict([SOURCE_HEADER]))
        answer = call(self.app, scope, body)
        answer.headers.append(SOURCE_HEADER)
        return response_of(answer)


_gateway: ServerlessGateway | None = None
_gateway_lock = threading.Lock()


def handle_query(event: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The Lambda entry's work: the gateway built once per instance (a failure to build it
    is the answer, a 500 naming the setting, and is tried again on the next event)."""
    global _gateway
    with _gateway_lock:
        if _gateway is None:
            try:
                _gateway = ServerlessGateway(lambda_settings(settings))
            except Exception as exc:  # noqa: BLE001 - the caller gets the one line, the log the rest
                log.exception("the serverless gateway could not start")
                return error_response(500, f"the serverless gateway could not start: {exc}")
        gateway = _gateway
    return gateway.handle(event)


def reset() -> None:
    """Forget the built gateway (the next event builds it from the settings again)."""
    global _gateway
    with _gateway_lock:
        _gateway = None
