"""What ClickHouse clients ask of the server itself, answered from the plant's catalog.

Drivers and Grafana's ClickHouse plugin ask, on connect and when browsing, for
``version()``, ``timezone()``, ``currentDatabase()`` and the ``system`` tables
(databases, tables, columns, functions, settings). Those statements never reach
the plant's engine: ``system.*`` here is a handful of small Arrow tables made for
the caller (only the tables they are granted, only the columns they may see), and
the statement runs on chDB over them alone. It is parsed and checked node by node
like any gateway query (``gateway.sql.check_node``: the function allowlist, no
table functions, no statements), except that ``system.X`` names are allowed and
the server-information functions become constants. A statement that mixes
``system`` tables with the plant's tables is refused: a plant table goes through
the gateway's own planner, which reads no ``system`` table.

Everything lives in one database, ``default``; ``system`` lists itself too, so a
browsing client sees the tables it can query.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import chdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway import functions
from gateway.auth import User
from gateway.chformats import CHDB_LOCK
from gateway.sql import DIALECT, Forbidden, check_node, function_name, is_cte_ref, strip_comments

DATABASE = "default"
SYSTEM = "system"
TIMEZONE = "UTC"
DISPLAY_NAME = "tickplant"
_SCHEMAS = {"system", "information_schema"}
SYSTEM_TABLES = ("columns", "databases", "functions", "one", "settings", "tables")


@dataclass(frozen=True)
class Server:
    """What the server-information functions answer."""

    version: str
    revision: int
    started: float


@dataclass(frozen=True)
class Setting:
    """A setting a client may send, as ``system.settings`` shows it."""

    name: str
    value: str
    type: str
    description: str


def engine_server(started: float) -> Server:
    """The version and revision of the chDB that writes the answers' formats: a driver
    reads Native and types as that version writes them."""
    with CHDB_LOCK:
        text = chdb.query("SELECT version(), revision()", "TSV").bytes().decode()
    version, revision = text.strip().split("\t")
    return Server(version, int(revision), started)


_DESCRIBE = re.compile(r"(?is)^\s*(?:DESCRIBE|DESC)\s+(?:TABLE\s+)?(?:`?(\w+)`?\s*\.\s*)?`?(\w+)`?\s*;?\s*$")
_SHOW_TABLES = re.compile(r"(?is)^\s*SHOW\s+TABLES(?:\s+(?:FROM|IN)\s+`?(\w+)`?)?\s*;?\s*$")
_SHOW_DATABASES = re.compile(r"(?is)^\s*SHOW\s+DATABASES\s*;?\s*$")


def as_select(sql: str) -> str:
    """``DESCRIBE [TABLE] t``, ``SHOW TABLES [FROM db]`` and ``SHOW DATABASES`` (what clients
    browse with) as the SELECT over ``system`` that answers them; any other text as it is."""
    if match := _DESCRIBE.match(sql):
        db, table = match.group(1) or DATABASE, match.group(2)
        return ("SELECT name, type, '' AS default_type, '' AS default_expression, comment, "
                "'' AS codec_expression, '' AS ttl_expression FROM system.columns "
                f"WHERE database = '{db}' AND table = '{table}' ORDER BY position")
    if match := _SHOW_TABLES.match(sql):
        return f"SELECT name FROM system.tables WHERE database = '{match.group(1) or DATABASE}' ORDER BY name"
    if _SHOW_DATABASES.match(sql):
        return "SELECT name FROM system.databases ORDER BY name"
    return sql


def described(sql: str) -> str | None:
    """The table a ``DESCRIBE`` names, or None for any other statement."""
    match = _DESCRIBE.match(sql)
    return match.group(2) if match else None


def mentions_system(ast: exp.Expression) -> bool:
    """True if the statement reads a ``system`` table or asks the server about itself."""
    for node in ast.walk():
        if isinstance(node, exp.Table) and _schema_of(node) in _SCHEMAS:
            return True
        if isinstance(node, exp.Func) and _info_name(node) is not None:
            return True
    return False


def parse(sql: str) -> exp.Expression | None:
    """One statement's tree, or None if sqlglot cannot read it (the gateway's own
    parser then says why, as it does for every query)."""
    try:
        statements = [s for s in sqlglot.parse(sql, dialect=DIALECT) if s is not None]
    except (ParseError, TokenError, RecursionError):
        return None
    only = statements[0] if len(statements) == 1 else None
    return only if isinstance(only, exp.Expression) else None


def answer(ast: exp.Expression, user: User, server: Server, tables: dict[str, pa.Schema],
           settings: list[Setting], now: Callable[[], float]) -> pa.Table:
    """Run a ``system`` statement for ``user`` over the catalog's ``tables`` (name -> the
    columns the user may see) and return its rows; Forbidden or SqlError as for any query."""
    if not isinstance(ast, exp.Query):
        raise Forbidden("only SELECT statements run")
    sources: dict[str, pa.Table] = {}
    info = _info_values(user, server, now)
    made: dict[str, pa.Table] = {}
    aliases: dict[str, str] = {}
    for node in list(ast.walk()):
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier) and not is_cte_ref(node):
            schema = _schema_of(node)
            if schema not in _SCHEMAS:
                raise Forbidden(f"table {node.sql(dialect=DIALECT)}: system tables and the plant's tables "
                                "cannot be read in one query; query them separately")
            name = node.name.lower()
            if schema != SYSTEM or name not in SYSTEM_TABLES:
                raise Forbidden(f"table {schema}.{node.name} is not served here; the gateway serves "
                                f"system.{', system.'.join(SYSTEM_TABLES)}")
            made = made or _system_tables(tables, settings)
            placeholder = f"tp_system_{name}"
            sources[placeholder] = made[name]
            node.set("db", None)
            node.set("catalog", None)
            node.set("this", exp.to_identifier(placeholder))
            if not node.alias:  # so that columns written system.tables.name can name it
                node.set("alias", exp.TableAlias(this=exp.to_identifier(placeholder)))
            aliases.setdefault(name, node.alias)
        elif isinstance(node, exp.Func):
            which = _info_name(node)
            if which is not None:
                value = info[which]  # the numbers as ClickHouse types them (the Go driver scans a uint32)
                constant: exp.Expr = (
                    exp.Cast(this=exp.Literal.number(value), to=exp.DataType.build("UInt32", dialect=DIALECT))
                    if isinstance(value, int) else exp.Literal.string(str(value)))
                if isinstance(node.parent, exp.Select) and node.arg_key == "expressions":
                    constant = exp.alias_(constant, _column_name(node), quoted=True)  # as ClickHouse names it
                node.replace(constant)
    for column in ast.find_all(exp.Column):  # system.tables.name, as JDBC writes it
        db, table = column.args.get("db"), column.args.get("table")
        if isinstance(db, exp.Identifier) and db.name.lower() == SYSTEM and isinstance(table, exp.Identifier) \
                and table.name.lower() in aliases:
            column.set("db", None)
            column.set("table", exp.to_identifier(aliases[table.name.lower()]))
    for node in ast.walk():
        check_node(node)
    for table in ast.find_all(exp.Table):
        if table.name in sources:
            table.set("this", exp.Anonymous(this="Python", expressions=[exp.to_identifier(table.name)]))
    sql = strip_comments(ast).sql(dialect=DIALECT)
    return _run(sql, sources)


def _run(sql: str, sources: dict[str, pa.Table]) -> pa.Table:
    scope: dict[str, Any] = dict(sources)  # chDB's Python() reads these names from the caller's locals
    tp_system_tables = scope.get("tp_system_tables")  # noqa: F841
    tp_system_columns = scope.get("tp_system_columns")  # noqa: F841
    tp_system_databases = scope.get("tp_system_databases")  # noqa: F841
    tp_system_functions = scope.get("tp_system_functions")  # noqa: F841
    tp_system_settings = scope.get("tp_system_settings")  # noqa: F841
    tp_system_one = scope.get("tp_system_one")  # noqa: F841
    with CHDB_LOCK:
        try:
            result = chdb.query(sql, "Arrow")
        except Exception as exc:
            raise ValueError(str(exc).strip().splitlines()[0]) from None
    import pyarrow.ipc as ipc

    return ipc.open_file(pa.py_buffer(result.bytes())).read_all()


_INFO = {"version": "version", "currentversion": "version", "currentdatabase": "database",
         "currentschemas": "database", "currentuser": "user", "user": "user", "sessionuser": "user",
         "timezone": "timezone", "timezoneof": None, "servertimezone": "timezone", "displayname": "name",
         "hostname": "name", "fqdn": "name", "revision": "revision", "uptime": "uptime",
         "getoscpuname": None}


def _info_name(node: exp.Func) -> str | None:
    name = function_name(node)
    if name is None or node.expressions or node.args.get("this") is not None and not isinstance(node, exp.Anonymous):
        return None
    return _INFO.get(name.lower().replace("_", ""))


def _info_values(user: User, server: Server, now: Callable[[], float]) -> dict[str, str | int]:
    return {"version": server.version, "database": DATABASE, "user": user.name, "timezone": TIMEZONE,
            "name": DISPLAY_NAME, "revision": server.revision, "uptime": int(now() - server.started)}


def _schema_of(table: exp.Table) -> str | None:
    db = table.args.get("db")
    return db.name.lower() if isinstance(db, exp.Identifier) else None


_TYPE_CACHE: dict[str, str] = {}


def clickhouse_types(schema: pa.Schema) -> list[str]:
    """The ClickHouse type of each column, as the answers' formats write it (non-null)."""
    key = str(schema)
    if key not in _TYPE_CACHE:
        empty = pa.schema([f.with_nullable(False) for f in schema]).empty_table()  # noqa: F841 (for Python())
        with CHDB_LOCK:
            text = chdb.query("DESCRIBE Python(empty)", "TSV").bytes().decode()
        _TYPE_CACHE[key] = "\n".join(line.split("\t")[1].replace("\\'", "'") for line in text.splitlines())
    return _TYPE_CACHE[key].split("\n")


def _system_tables(tables: dict[str, pa.Schema], settings: list[Setting]) -> dict[str, pa.Table]:
    """The ``system`` tables over ``tables``: those a user is granted, with the columns they may see."""
    own = {
        "databases": pa.schema([("name", pa.string()), ("engine", pa.string()), ("data_path", pa.string()),
                                ("metadata_path", pa.string()), ("uuid", pa.string()), ("engine_full", pa.string()),
                                ("comment", pa.string())]),
        "tables": _TABLES_SCHEMA, "columns": _COLUMNS_SCHEMA,
        "functions": pa.schema([("name", pa.string()), ("is_aggregate", pa.uint8()),
                                ("case_insensitive", pa.uint8()), ("alias_to", pa.string()),
                                ("create_query", pa.string()), ("origin", pa.string()),
                                ("description", pa.string())]),
        "settings": pa.schema([("name", pa.string()), ("value", pa.string()), ("changed", pa.uint8()),
                               ("description", pa.string()), ("min", pa.string()), ("max", pa.string()),
                               ("readonly", pa.uint8()), ("type", pa.string()), ("default", pa.string()),
                               ("alias_for", pa.string()), ("is_obsolete", pa.uint8())]),
        "one": pa.schema([("dummy", pa.uint8())]),
    }
    listed = [(DATABASE, name, schema) for name, schema in sorted(tables.items())]
    listed += [(SYSTEM, name, schema) for name, schema in sorted(own.items())]
    db_rows = [{"name": db, "engine": "Atomic", "data_path": "", "metadata_path": "", "uuid": "",
                "engine_full": "Atomic", "comment": ""} for db in (DATABASE, SYSTEM)]
    table_rows: list[dict[str, Any]] = []
    column_rows: list[dict[str, Any]] = []
    for db, name, schema in listed:
        table_rows.append({"database": db, "name": name, "uuid": "", "engine": "View" if db == DATABASE else "SystemTable",
                           "is_temporary": 0, "data_paths": [], "metadata_path": "", "metadata_modification_time": 0,
                           "dependencies_database": [], "dependencies_table": [], "create_table_query": "",
                           "engine_full": "", "as_select": "", "partition_key": "", "sorting_key": "",
                           "primary_key": "", "sampling_key": "", "storage_policy": "", "total_rows": None,
                           "total_bytes": None, "comment": "", "has_own_data": 0})
        for position, (field, ch_type) in enumerate(zip(schema, clickhouse_types(schema), strict=True), 1):
            column_rows.append({"database": db, "table": name, "name": field.name, "type": ch_type,
                                "position": position, "default_kind": "", "default_expression": "",
                                "comment": "", "is_in_partition_key": 0, "is_in_sorting_key": 0,
                                "is_in_primary_key": 0, "is_in_sampling_key": 0, "compression_codec": "",
                                "numeric_precision": None, "numeric_scale": None, "datetime_precision": None,
                                "numeric_precision_radix": None, "character_octet_length": None})
    catalog = functions.catalog()
    fn_rows = [{"name": f.name, "is_aggregate": int(f.kind == "aggregate"), "case_insensitive": int(f.case_insensitive),
                "alias_to": f.alias_to, "create_query": "", "origin": "System", "description": ""}
               for f in sorted(catalog.exact.values(), key=lambda f: f.name) if f.allowed]
    setting_rows = [{"name": s.name, "value": s.value, "changed": 0, "description": s.description, "min": None,
                     "max": None, "readonly": 0, "type": s.type, "default": s.value, "alias_for": "",
                     "is_obsolete": 0} for s in settings]
    rows = {"databases": db_rows, "tables": table_rows, "columns": column_rows, "functions": fn_rows,
            "settings": setting_rows, "one": [{"dummy": 0}]}
    return {name: pa.Table.from_pylist(rows[name], schema=own[name]) for name in own}


_TABLES_SCHEMA = pa.schema([
    ("database", pa.string()), ("name", pa.string()), ("uuid", pa.string()), ("engine", pa.string()),
    ("is_temporary", pa.uint8()), ("data_paths", pa.list_(pa.string())), ("metadata_path", pa.string()),
    ("metadata_modification_time", pa.timestamp("s", tz="UTC")), ("dependencies_database", pa.list_(pa.string())),
    ("dependencies_table", pa.list_(pa.string())), ("create_table_query", pa.string()), ("engine_full", pa.string()),
    ("as_select", pa.string()), ("partition_key", pa.string()), ("sorting_key", pa.string()),
    ("primary_key", pa.string()), ("sampling_key", pa.string()), ("storage_policy", pa.string()),
    ("total_rows", pa.uint64()), ("total_bytes", pa.uint64()), ("comment", pa.string()), ("has_own_data", pa.uint8()),
])
_COLUMNS_SCHEMA = pa.schema([
    ("database", pa.string()), ("table", pa.string()), ("name", pa.string()), ("type", pa.string()),
    ("position", pa.uint64()), ("default_kind", pa.string()), ("default_expression", pa.string()),
    ("comment", pa.string()), ("is_in_partition_key", pa.uint8()), ("is_in_sorting_key", pa.uint8()),
    ("is_in_primary_key", pa.uint8()), ("is_in_sampling_key", pa.uint8()), ("compression_codec", pa.string()),
    ("numeric_precision", pa.uint64()), ("numeric_scale", pa.uint64()), ("datetime_precision", pa.uint64()),
    ("numeric_precision_radix", pa.uint64()), ("character_octet_length", pa.uint64()),
])


_TYPED_NAMES = {"CurrentVersion": "version()", "CurrentDatabase": "currentDatabase()", "CurrentUser": "currentUser()"}


def _column_name(node: exp.Func) -> str:
    """The name ClickHouse gives a projected call: as written (sqlglot's typed nodes: as ClickHouse spells them)."""
    return _TYPED_NAMES.get(type(node).__name__, node.sql(dialect=DIALECT))
