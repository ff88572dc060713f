"""ClickHouse's HTTP interface on the gateway: ClickHouse drivers, tools and Grafana talk to the plant.

Served on its own port (``clickhouse_http_port``), as ClickHouse serves it on 8123:

    GET  /ping                               ``Ok.``
    GET  /?query=SELECT ...                  a query in the URL
    POST /   (body: the query)               or in the body; ``query=`` + body are joined as ClickHouse joins them

The answer's format is the statement's ``FORMAT x``, else ``default_format=``, else
``TabSeparated``, written by chDB (``gateway.chformats``). The caller is the users
file's user whose key is the password (``X-ClickHouse-User``/``X-ClickHouse-Key``,
Basic auth, or ``user=``/``password=``); the user name, when given, must be that
key's user. Settings a driver sends are accepted from an allowlist:
``max_result_rows`` and ``max_execution_time`` lower the gateway's own limits
(never raise them), output_format_* settings shape the answer, the rest that
drivers send on connect are accepted and have no effect here; any other is refused
by name.

A plant statement runs exactly as ``/v1/sql`` runs it (``Gateway.run``: the same
parse, entitlements, today+history tables, limits and query log, endpoint
``clickhouse``); ``system.*`` tables and the server functions are answered from the
catalog (``gateway.chsystem``). Errors read as ClickHouse's own (``Code: 497.
DB::Exception: ... (ACCESS_DENIED)``, with ``X-ClickHouse-Exception-Code``), so a
driver shows the gateway's reason.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway import chcompress, chformats, chsystem, querylog
from gateway.app import Gateway, limit_body
from gateway.auth import Unauthorized, User
from gateway.refusals import outcome, status_of
from gateway.sql import DIALECT, Forbidden, SqlError, render

ENDPOINT = "clickhouse"
# accepted, and without effect here: what drivers send on connect or with every query
NO_EFFECT = {
    "readonly": "the gateway only reads", "wait_end_of_query": "answers are sent whole",
    "session_id": "no sessions: every query stands alone", "session_timeout": "", "session_check": "",
    "query_id": "echoed in X-ClickHouse-Query-Id", "compress": "1: the answer in ClickHouse's LZ4 blocks", "enable_http_compression": "with Accept-Encoding: zstd, gzip, deflate",
    "http_zlib_compression_level": "", "client_protocol_version": "the Native revision written",
    "buffer_size": "", "send_progress_in_http_headers": "", "http_headers_progress_interval_ms": "",
    "max_block_size": "", "date_time_input_format": "", "cast_string_to_dynamic_use_inference": "",
    "log_comment": "", "add_http_cors_header": "", "quota_key": "", "use_client_time_zone": "",
    "max_threads": "", "max_memory_usage": "the gateway's gateway_max_memory_mb applies",
    "http_response_buffer_size": "", "async_insert": "", "wait_for_async_insert": "",
    "input_format_null_as_default": "", "date_time_output_format": "",
}
# accepted only with these values (ClickHouse's defaults, the only behaviour here)
FIXED = {"decompress": ("0",), "extremes": ("0",), "result_overflow_mode": ("throw",),
         "session_timezone": ("", "UTC", "Etc/UTC"), "database": ("", chsystem.DATABASE),
         "network_compression_method": ("LZ4", "lz4")}
LIMITS = ("max_result_rows", "max_execution_time")
CREDENTIALS = ("user", "password")


class ClickHouseError(Exception):
    """A refusal in ClickHouse's terms: its error code and name, and the HTTP status."""

    def __init__(self, code: int, name: str, status: int, message: str):
        super().__init__(message)
        self.code, self.name, self.status = code, name, status


@dataclass
class Options:
    """What a request's parameters ask for."""

    limit: int | None = None
    timeout: float | None = None
    default_format: str | None = None
    revision: int = 0
    compression: bool = False  # HTTP's Content-Encoding, if the client accepts one of ours
    framed: bool = False  # ClickHouse's own compressed blocks (compress=1)
    compression_level: int | None = None
    format_settings: dict[str, str] = field(default_factory=dict)


def read_options(params: dict[str, str], gw: Gateway) -> Options:
    """The request's settings, checked against the allowlist (ClickHouseError naming the first bad one)."""
    opts = Options()
    for key, value in params.items():
        if key in ("query", *CREDENTIALS):
            continue
        if key.startswith("param_"):
            raise ClickHouseError(456, "UNKNOWN_QUERY_PARAMETER", 400,
                                  f"query parameters are not supported ({key}): bind values in the client")
        if key == "default_format":
            opts.default_format = value
        elif key in LIMITS:
            opts.limit, opts.timeout = _limit(key, value, gw, opts)
        elif key in FIXED:
            if value not in FIXED[key]:
                hint = (" (a request body in ClickHouse's block compression); send the body plain or gzip"
                        if key == "decompress" else "")
                raise ClickHouseError(36, "BAD_ARGUMENTS", 400, f"setting {key}={value!r} is not supported{hint}; "
                                      f"the gateway accepts {' or '.join(repr(v) for v in FIXED[key])}")
        elif key.startswith("output_format_") or key.startswith("format_"):
            opts.format_settings[key] = value
        elif key in NO_EFFECT:
            if key == "client_protocol_version":
                opts.revision = _number(key, value)
            elif key == "compress":
                opts.framed = value not in ("0", "false", "")
            elif key == "enable_http_compression":
                opts.compression = value not in ("0", "false", "")
            elif key == "http_zlib_compression_level":
                opts.compression_level = _number(key, value)
        else:
            raise ClickHouseError(115, "UNKNOWN_SETTING", 400,
                                  f"setting {key!r} is not accepted by the tickplant gateway; it accepts "
                                  f"{', '.join(sorted([*NO_EFFECT, *FIXED, *LIMITS]))} and output_format_*")
    return opts


def _number(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ClickHouseError(36, "BAD_ARGUMENTS", 400, f"setting {key}={value!r}: not a whole number") from None


def _limit(key: str, value: str, gw: Gateway, opts: Options) -> tuple[int | None, float | None]:
    """``max_result_rows``/``max_execution_time`` as the gateway's limit and timeout (0: the gateway's)."""
    try:
        number = float(value)
    except ValueError:
        raise ClickHouseError(36, "BAD_ARGUMENTS", 400, f"setting {key}={value!r}: not a number") from None
    if number < 0:
        raise ClickHouseError(36, "BAD_ARGUMENTS", 400, f"setting {key}={value!r}: negative")
    if key == "max_result_rows":
        rows = int(number)
        return (min(rows, gw.settings.gateway_row_limit) if rows else None), opts.timeout
    return opts.limit, (min(number, gw.settings.gateway_timeout_s) if number else None)


def settings_table(gw: Gateway) -> list[chsystem.Setting]:
    """``system.settings``: what a client may send, at the gateway's values."""
    rows = [chsystem.Setting("max_result_rows", str(gw.settings.gateway_row_limit), "UInt64",
                             "rows at most (gateway_row_limit: a client may ask for fewer)"),
            chsystem.Setting("max_execution_time", str(gw.settings.gateway_timeout_s), "Seconds",
                             "seconds at most (gateway_timeout_s: a client may ask for less)")]
    rows += [chsystem.Setting(k, v[-1], "String", "only this value") for k, v in FIXED.items()]
    rows += [chsystem.Setting(k, "", "String", why or "accepted, no effect here") for k, why in NO_EFFECT.items()]
    return sorted(rows, key=lambda s: s.name)


def credentials(request: Request, params: dict[str, str]) -> tuple[str | None, str | None]:
    """The user name and key, from the headers, Basic auth or the parameters (first found)."""
    headers = request.headers
    if "x-clickhouse-user" in headers or "x-clickhouse-key" in headers:
        return headers.get("x-clickhouse-user"), headers.get("x-clickhouse-key")
    auth = headers.get("authorization")
    if auth:
        scheme, _, rest = auth.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, key = base64.b64decode(rest.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthorized("malformed Basic authorization header") from None
            return name, key
        if scheme.lower() == "bearer":
            return None, rest.strip()
        raise Unauthorized(f"unsupported authorization scheme {scheme!r}; use Basic or X-ClickHouse-User/Key")
    return params.get("user"), params.get("password")


def authenticate(gw: Gateway, name: str | None, key: str | None) -> User:
    users = gw.users
    if users.is_open:
        return users.authenticate(None)
    if not key:
        raise Unauthorized(f"{name or 'default'}: no key: send the user's API key as the password "
                           "(X-ClickHouse-Key, Basic auth or password=)")
    try:
        user = users.authenticate(key)
    except Unauthorized:
        user = None
    if user is None or (name and name != user.name):
        raise Unauthorized(f"{name or 'default'}: Authentication failed: the key is wrong, "
                           "or there is no user with such name")
    return user


_BROWSING = re.compile(r"(?is)^\s*(SHOW|DESCRIBE|DESC)\s")
_TRAILING_FORMAT = re.compile(r"(?is)^(.*?)\s+FORMAT\s+(\w+)\s*;?\s*$")


def split_format(text: str) -> tuple[str, str | None]:
    """The statement without a trailing ``FORMAT x`` (and ``;``), and x."""
    if _BROWSING.match(text):  # sqlglot reads these as one word and a string: no tokens to look at
        found = _TRAILING_FORMAT.match(text)
        return (found.group(1), found.group(2)) if found else (text, None)
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(text)
    except (TokenError, ParseError):
        return text, None
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if len(tokens) >= 2 and tokens[-2].text.upper() == "FORMAT" and tokens[-1].text.replace("_", "").isalnum():
        return text[:tokens[-2].start].rstrip(), tokens[-1].text
    return (text[:tokens[-1].end + 1] if tokens else text), None


def plant_statement(sql: str, ast: exp.Expression | None) -> str:
    """The statement for the gateway: ``default.trade`` (what Grafana's query builder
    writes) as ``trade``; otherwise the user's own text, as the query log shows it."""
    if ast is None:
        return sql
    qualified = [t for t in ast.find_all(exp.Table) if isinstance(t.args.get("db"), exp.Identifier)
                 and t.args["db"].name == chsystem.DATABASE and not t.args.get("catalog")]
    if not qualified:
        return sql
    for table in qualified:
        table.set("db", None)
    return render(ast)


def table_schemas(gw: Gateway, user: User) -> dict[str, pa.Schema]:
    """The tables ``user`` is granted, with the columns they may see (as ``/v1/tables``)."""
    out: dict[str, pa.Schema] = {}
    for schema in gw.catalog:
        grant = user.grant_for(schema.name)
        if grant is not None:
            out[schema.name] = pa.schema([f for f in schema.arrow_schema if grant.column_allowed(f.name)]
                                         + [pa.field("date", pa.date32())])
    log_grant = user.grant_for(querylog.TABLE)
    if log_grant is not None:
        types = {"string": pa.string(), "double": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
                 "date32[day]": pa.date32(), "timestamp[ms, tz=UTC]": pa.timestamp("ms", tz="UTC")}
        out[querylog.TABLE] = pa.schema([(c, types[t]) for c, t in querylog.ARROW_TYPES.items()
                                         if log_grant.column_allowed(c)])
    return out


def to_clickhouse(exc: BaseException) -> ClickHouseError:
    """Any refusal as ClickHouse's error of the same meaning."""
    if isinstance(exc, ClickHouseError):
        return exc
    text = str(exc)
    if isinstance(exc, Unauthorized):
        return ClickHouseError(516, "AUTHENTICATION_FAILED", 401, text)
    if isinstance(exc, chformats.UnknownFormat):
        return ClickHouseError(73, "UNKNOWN_FORMAT", 400, text)
    if isinstance(exc, Forbidden):
        if text.startswith("only SELECT"):
            return ClickHouseError(164, "READONLY", 403, text)
        return ClickHouseError(497, "ACCESS_DENIED", 403, text)
    if isinstance(exc, SqlError):
        if text.startswith("unknown table"):
            return ClickHouseError(60, "UNKNOWN_TABLE", 404, text)
        if text.startswith("unknown function"):
            return ClickHouseError(46, "UNKNOWN_FUNCTION", 404, text)
        return ClickHouseError(62, "SYNTAX_ERROR", 400, text)
    status = status_of(exc)
    code, name = {408: (159, "TIMEOUT_EXCEEDED"), 413: (396, "TOO_MANY_ROWS_OR_BYTES"),
                  429: (202, "TOO_MANY_SIMULTANEOUS_QUERIES"), 503: (210, "NETWORK_ERROR"),
                  400: (36, "BAD_ARGUMENTS"), 403: (497, "ACCESS_DENIED")}.get(status, (1002, "UNKNOWN_EXCEPTION"))
    return ClickHouseError(code, name, status, text)


class ClickHouseDoor:
    """One request at a time: credentials, settings, the statement, its answer."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.server = chsystem.engine_server(gw.started)

    def error(self, exc: BaseException, query_id: str) -> Response:
        err = to_clickhouse(exc)
        message = str(err).rstrip(".")
        body = f"Code: {err.code}. DB::Exception: {message}. ({err.name}) (version {self.server.version})\n"
        return PlainTextResponse(body, status_code=err.status, headers={
            "X-ClickHouse-Exception-Code": str(err.code), "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": chsystem.DISPLAY_NAME})

    def handle(self, request: Request, params: dict[str, str], body: bytes) -> Response:
        query_id = params.get("query_id") or str(uuid.uuid4())
        started = time.monotonic()
        name: str | None = None
        statement, user = "", None
        try:
            name, key = credentials(request, params)
            statement = _statement(params.get("query", ""), body, request.headers.get("content-encoding"))
            user = authenticate(self.gw, name, key)
            opts = read_options({**_header_settings(request), **params}, self.gw)
            sql, fmt_name = split_format(statement)
            fmt = chformats.format_named(fmt_name or opts.default_format or chformats.DEFAULT)
            if not sql.strip():
                raise ClickHouseError(62, "SYNTAX_ERROR", 400, "Empty query")
            table, logged = self._run(user, sql, opts)
            data = chformats.encode(table, fmt, opts.format_settings, opts.revision if fmt.name == "Native" else 0)
        except Exception as exc:
            if not getattr(exc, "_tickplant_logged", False):
                err = to_clickhouse(exc)
                self.gw.query_log.record(user.name if user else (name or "-"), ENDPOINT, statement,
                                         (time.monotonic() - started) * 1e3, 0, outcome(err.status), err.status,
                                         str(exc))
            return self.error(exc, query_id)
        if not logged:
            self.gw.query_log.record(user.name, ENDPOINT, statement, (time.monotonic() - started) * 1e3,
                                     table.num_rows, "ok", 200)
        elapsed_ns = int((time.monotonic() - started) * 1e9)
        headers = {
            "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Format": fmt.name, "X-ClickHouse-Timezone": chsystem.TIMEZONE,
            "X-ClickHouse-Server-Display-Name": chsystem.DISPLAY_NAME,
            "X-ClickHouse-Summary": json.dumps({
                "read_rows": str(table.num_rows), "read_bytes": str(table.nbytes), "written_rows": "0",
                "written_bytes": "0", "total_rows_to_read": str(table.num_rows), "result_rows": str(table.num_rows),
                "result_bytes": str(len(data)), "elapsed_ns": str(elapsed_ns)}, separators=(",", ":")),
        }
        if opts.framed:
            data = chcompress.frames(data)
        coding = chformats.content_coding(request.headers.get("accept-encoding")) if opts.compression else None
        if coding is not None:
            data = chformats.compress(data, coding, opts.compression_level)
            headers["Content-Encoding"] = coding
        return Response(data, media_type=fmt.content_type, headers=headers)

    def _run(self, user: User, sql: str, opts: Options) -> tuple[pa.Table, bool]:
        """The statement's rows, and whether the gateway's query log has it already."""
        ast = chsystem.parse(chsystem.as_select(sql))
        if ast is not None and chsystem.mentions_system(ast):
            tables = table_schemas(self.gw, user)
            rows = chsystem.answer(ast, user, self.server, tables, settings_table(self.gw), time.time)
            described = chsystem.described(sql)
            if described is not None and not rows.num_rows:  # as ClickHouse: no such table
                raise SqlError(f"unknown table {described!r}; your tables: {', '.join(sorted(tables))}")
            return rows, False
        try:
            answer, _, _ = self.gw.run(user, ENDPOINT, plant_statement(sql, ast), limit=opts.limit,
                                       timeout=opts.timeout)
        except Exception as exc:
            exc._tickplant_logged = True  # type: ignore[attr-defined]
            raise
        return answer.table, True


def _header_settings(request: Request) -> dict[str, str]:
    """``X-ClickHouse-Format`` and ``X-ClickHouse-Database``: what JDBC sends as headers."""
    pairs = {"x-clickhouse-format": "default_format", "x-clickhouse-database": "database"}
    return {name: request.headers[header] for header, name in pairs.items() if header in request.headers}


def _statement(query: str, body: bytes, encoding: str | None) -> str:
    """``query=`` and the body joined as ClickHouse joins them (a line between)."""
    coding = (encoding or "").strip().lower()
    try:
        if coding == "gzip":
            body = gzip.decompress(body)
        elif coding == "deflate":
            body = zlib.decompress(body)
        elif coding not in ("", "identity"):
            raise ClickHouseError(36, "BAD_ARGUMENTS", 415, f"request Content-Encoding {coding!r} is not supported; "
                                  "send gzip, deflate or none")
        text = body.decode()
    except (OSError, zlib.error, UnicodeDecodeError) as exc:
        raise ClickHouseError(36, "BAD_ARGUMENTS", 400, f"cannot read the request body: {exc}") from None
    return f"{query}\n{text}" if query and text else query or text


def create_clickhouse_app(gw: Gateway) -> FastAPI:
    """The ClickHouse HTTP interface over ``gw`` (the REST app's gateway: one engine, one log)."""
    door = ClickHouseDoor(gw)
    app = FastAPI(title="tickplant gateway: ClickHouse HTTP interface", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.gateway = gw
    app.add_middleware(limit_body, max_bytes=gw.settings.gateway_max_statement_bytes + 4096)

    @app.get("/ping")
    def ping() -> Response:
        return PlainTextResponse("Ok.\n")

    @app.api_route("/", methods=["GET", "POST"])
    async def root(request: Request) -> Response:
        body = await request.body()
        params: dict[str, Any] = dict(request.query_params)
        if "query" not in params and not body:
            return PlainTextResponse("Ok.\n")
        return await run_in_threadpool(door.handle, request, params, body)

    return app
