"""Parsing user SQL for the gateway: one ClickHouse SELECT, nothing else.

The gateway never sends the user's text to ClickHouse. It parses it with
sqlglot (dialect ``clickhouse``), checks the tree here, rewrites it in
``gateway.policy`` and sends SQL generated from that tree (``render``), with
every comment dropped. So what ClickHouse runs is exactly what was checked:
comments, odd quoting or a second statement cannot hide anything, because
they either become part of the tree (and are checked) or make the parse fail.

``parse_select`` refuses, with ``Forbidden`` (HTTP 403) and the reason:

- anything but one SELECT (or UNION/INTERSECT/EXCEPT of SELECTs, ``WITH ...
  SELECT``, a parenthesised SELECT): INSERT, ALTER, DROP, CREATE, SET, SYSTEM,
  KILL, ATTACH, OPTIMIZE, EXPLAIN, DESCRIBE, SHOW, ...; several statements;
- ``SETTINGS``, ``FORMAT``, ``INTO OUTFILE`` clauses, anywhere;
- table functions in FROM/JOIN, all of them, ``numbers()`` included
  (``arrayJoin(range(n))`` makes a series without one): they read files, URLs,
  S3, other servers, other tables (``merge``, ``cluster``, ``remote``), the
  request body (``input``) or Python objects (chDB's ``python``);
- any database-qualified table (``system.tables``, ``default.trade``,
  ``information_schema.columns``);
- ``x IN t`` / ``x IN (t)`` with a bare name, which ClickHouse reads as a table;
- query parameters (``{name:Type}``); any text containing ``__tickplant``
  (reserved for the engine's placeholders);
- functions that read outside the statement's tables or leak the server
  (see ``DENIED_FUNCTIONS`` / ``DENIED_PREFIXES``): ``file``, ``dictGet*``,
  ``joinGet*``, ``hasColumnInTable``, ``getSetting``, ``getMacro``,
  ``catboostEvaluate``, host/user/version functions, the function forms of
  ``in``, internal ``__*`` functions, and the error/timing probes
  ``throwIf``/``sleep`` (which could reveal rows a row filter hides through
  an error raised before the filter applies).

Unparseable text gives ``SqlError`` (HTTP 400) with the parser's message and
line/column. Whether a table exists and who may read it is
``gateway.policy``'s job: this module knows no plant tables.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import ParseError, TokenError


class PlantClickHouse(ClickHouse):
    """sqlglot's ClickHouse dialect, less the rewrites that change what a statement means
    when the checked tree is written back out (each found running both texts on chDB):
    ``a DIV b`` became a float division cast back to an integer (off by one near whole
    seconds of nanosecond times) and ``rand()`` became ``randCanonical()`` (a float in
    [0, 1): ``rand() % 10 = 0`` matched nothing)."""

    class Generator(ClickHouse.Generator):
        TRANSFORMS = {
            **ClickHouse.Generator.TRANSFORMS,
            exp.IntDiv: lambda self, e: self.func("intDiv", e.this, e.expression),
            exp.Rand: lambda self, e: self.func("rand", e.this),
        }


DIALECT = PlantClickHouse


class SqlError(ValueError):
    """The statement cannot be parsed (HTTP 400); the message has line and column."""


class Forbidden(PermissionError):
    """The statement is refused (HTTP 403); the message names what was refused."""


# Every ClickHouse table function (system.table_functions of chDB 26.9), refused in
# FROM/JOIN and, since several double as scalar functions (file), anywhere.
TABLE_FUNCTIONS = frozenset(
    n.lower()
    for n in """
    SQLStandardValues arrowstream azureBlobStorage azureBlobStorageCluster bigquery cluster
    clusterAllReplicas cosn deltaLake deltaLakeAzure deltaLakeAzureCluster deltaLakeCluster
    deltaLakeLocal deltaLakeS3 deltaLakeS3Cluster dictionary eval executable file fileCluster
    filesystem format fuzzJSON fuzzQuery gcs generateRandom generateSeries generate_series hdfs
    hdfsCluster hudi hudiCluster iceberg icebergAzure icebergAzureCluster icebergCluster
    icebergHDFS icebergHDFSCluster icebergLocal icebergLocalCluster icebergS3 icebergS3Cluster
    input jdbc loop merge mergeTreeAnalyzeIndexes mergeTreeAnalyzeIndexesUUID
    mergeTreeCodecBlockCounts mergeTreeIndex mergeTreeProjection mergeTreeTextIndex mongodb
    mysql null numbers numbers_mt odbc oss paimon paimonAzure paimonAzureCluster paimonCluster
    paimonHDFS paimonHDFSCluster paimonLocal paimonS3 paimonS3Cluster postgresql primes
    prometheusQuery prometheusQueryRange python redis remote remoteSecure s3 s3Cluster sqlite
    timeSeriesData timeSeriesMetricFamilies timeSeriesMetrics timeSeriesSamples
    timeSeriesSelector timeSeriesTags url urlCluster values view viewExplain viewIfPermitted
    ytsaurus zeros zeros_mt
    """.split()
)

# Scalar functions refused anywhere (compared lower-cased): they read data outside the
# statement's tables (file, dictionaries, Join tables, models), reveal the server or
# session (settings, macros, host, users, versions, query ids), write somewhere
# (logTrace, generateSerialID), or raise/sleep on a row's value, which would let a
# predicate probe rows that a row filter removes.
DENIED_FUNCTIONS = frozenset(
    n.lower()
    for n in """
    file hasColumnInTable getSetting getSettingOrDefault getServerSetting getMergeTreeSetting
    catboostEvaluate modelEvaluate getMacro hostName hostname fullHostName FQDN tcpPort
    getServerPort currentUser current_user user authUser authenticatedUser session_user
    currentDatabase current_database DATABASE SCHEMA currentSchemas current_schemas
    currentProfiles enabledProfiles defaultProfiles currentRoles enabledRoles defaultRoles
    getClientHTTPHeader currentRequestURL currentHandler getOSKernelVersion uptime version
    revision buildId serverUUID zookeeperSessionUptime queryID query_id currentQueryID
    current_query_id initialQueryID initial_query_id initialQueryStartTime
    initial_query_start_time connectionId connection_id displayName shardNum shardCount
    globalVariable demangle sleep sleepEachRow throwIf aggThrow timeSeriesThrowDuplicateSeriesIf
    logTrace generateSerialID showCertificate transactionID transactionLatestSnapshot
    transactionOldestSnapshot pgGetUserById pg_get_userbyid pgTableIsVisible pg_table_is_visible
    getMaxTableNameLengthForDatabase regionIn
    in notIn nullIn notNullIn globalIn globalNotIn globalNullIn globalNotNullIn
    inIgnoreSet notInIgnoreSet globalInIgnoreSet globalNotInIgnoreSet
    globalNullInIgnoreSet globalNotNullInIgnoreSet
    """.split()
) | (TABLE_FUNCTIONS - {"format"})  # format() the scalar only formats the values it is given

# Families refused by prefix: dictGet*/dictHas/dictIsIn, joinGet*, addressToLine*/Symbol,
# filesystemAvailable/Capacity/Unreserved, naiveBayesClassifier* (models from the server
# config), and ClickHouse's internal __* functions.
DENIED_PREFIXES = ("dict", "joinget", "addressto", "filesystem", "naivebayes", "__")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# the engine's placeholder names start with this; a user string or name holding it could
# be mistaken for one when the engine substitutes its sources into the generated text
RESERVED = "__tickplant"
# Func subclasses that are operators (AND, OR, =, NOT, ...), not named calls
_OPERATORS = (exp.Binary, exp.Connector, exp.Unary)
_TOO_DEEP = "the query nests too deeply (parentheses or subqueries); simplify it"
_GENERATOR = sqlglot.Dialect.get_or_raise(DIALECT).generator_class
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# first words of ClickHouse statements that are not queries: refused before parsing,
# so that a statement sqlglot cannot parse (KILL QUERY ...) is still a clear 403
_STATEMENT_WORDS = frozenset(
    """
    INSERT ALTER DROP CREATE REPLACE SET SYSTEM KILL ATTACH DETACH OPTIMIZE EXPLAIN DESCRIBE
    DESC SHOW TRUNCATE RENAME GRANT REVOKE USE EXCHANGE UNDROP DELETE UPDATE BACKUP RESTORE
    CHECK WATCH MOVE EXISTS BEGIN COMMIT ROLLBACK UNSET PARALLEL
    """.split()
)
_SELECT_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery)
# statement nodes that may never appear, even nested (sqlglot's Command is its fallback
# for statements it does not model: SYSTEM, OPTIMIZE, ATTACH, EXPLAIN, SHOW, ...)
_STATEMENTS = tuple(
    getattr(exp, name)
    for name in (
        "DDL", "DML", "Command", "Set", "Describe", "Use", "Drop", "Alter", "Kill", "Pragma",
        "Transaction", "Commit", "Rollback", "Grant", "Revoke", "Cache", "Uncache", "Refresh",
        "Analyze", "Show", "LoadData", "Summarize",
    )
    if hasattr(exp, name)
)


def parse_select(sql: str) -> exp.Expression:
    """Parse exactly one SELECT statement and refuse everything it may not contain.

    Returns the tree with comments removed; raises ``SqlError`` if it cannot be
    parsed (or nests too deeply for the parser) and ``Forbidden`` naming the
    first refused construct.
    """
    try:
        return _parse_select(sql)
    except RecursionError:
        raise SqlError(_TOO_DEEP) from None


def _parse_select(sql: str) -> exp.Expression:
    if not isinstance(sql, str):
        raise SqlError(f"the query must be a string, not {type(sql).__name__}")
    if RESERVED in sql.lower():
        raise Forbidden(f"names containing {RESERVED!r} are reserved for the gateway")
    tokens = _tokenize(sql)
    if not tokens:
        raise SqlError("the query is empty")
    _check_tokens(tokens)
    try:
        parsed = sqlglot.Dialect.get_or_raise(DIALECT).parser().parse(tokens, sql)
        statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    except ParseError as err:
        raise SqlError(parse_message(err)) from None
    except TokenError as err:
        raise SqlError(f"cannot read the query: {err}") from None
    if not statements:
        raise SqlError("the query is empty")
    if len(statements) > 1:
        raise Forbidden(f"one statement per query; got {len(statements)} separated by ';'")
    ast = statements[0]
    if not _is_select(ast):
        raise Forbidden(f"only SELECT statements run; this is {_statement_kind(ast, tokens)}")
    for node in ast.walk():
        check_node(node)
    strip_comments(ast)
    return ast


def table_refs(ast: exp.Expression) -> list[exp.Table]:
    """The plant-table references in the statement: Table nodes that are not CTE names.

    A name is a CTE reference only inside the query whose WITH defines it (or
    inside that WITH), as ClickHouse scopes it.
    """
    return [t for t in ast.find_all(exp.Table) if not is_cte_ref(t)]


def is_cte_ref(table: exp.Table) -> bool:
    """True if this (unqualified) Table node names a CTE visible where it stands."""
    if table.args.get("db") or table.args.get("catalog") or not isinstance(
        table.this, exp.Identifier
    ):
        return False
    return table.name in visible_cte_names(table)


def visible_cte_names(node: exp.Expression) -> set[str]:
    """Names of the CTEs of every query enclosing ``node`` (its WITH included)."""
    names: set[str] = set()
    parent = node.parent
    while parent is not None:
        with_ = parent.args.get("with_") or parent.args.get("with")
        if isinstance(with_, exp.With):
            names.update(cte.alias for cte in with_.expressions if not cte.args.get("scalar"))
        parent = parent.parent
    return names


def cte_names(ast: exp.Expression) -> set[str]:
    """Every table-valued CTE name defined anywhere in the statement."""
    return {cte.alias for cte in ast.find_all(exp.CTE) if not cte.args.get("scalar")}


def function_name(node: exp.Func) -> str:
    """The name ClickHouse will see for a function call node.

    An unknown function (Anonymous) keeps the user's spelling; a typed node is
    named by the SQL generated for it (``version()`` parses as CurrentVersion
    and is generated back as ``version()``), so the check sees what runs.
    """
    if isinstance(node, exp.Anonymous) and isinstance(node.this, str):
        return node.this
    if type(node) not in _GENERATOR.TRANSFORMS and not hasattr(_GENERATOR, f"{node.key}_sql"):
        return node.sql_name()  # generated by the generic fallback: NAME(args)
    match = _CALL.match(node.sql(dialect=DIALECT))
    return match.group(1) if match else node.sql_name()


def strip_comments(ast: exp.Expression) -> exp.Expression:
    """Drop every comment in place: nothing the checks did not see reaches ClickHouse."""
    for node in ast.walk():
        node.comments = None
    return ast


def render(ast: exp.Expression) -> str:
    """The SQL ClickHouse runs: generated from the checked tree, never the user's text."""
    try:
        return strip_comments(ast).sql(dialect=DIALECT)
    except RecursionError:
        raise SqlError(_TOO_DEEP) from None


def _tokenize(sql: str) -> list:
    try:
        return sqlglot.Dialect.get_or_raise(DIALECT).tokenize(sql)
    except (TokenError, ParseError) as err:
        raise SqlError(f"cannot read the query: {_ANSI.sub('', str(err))}") from None


def _check_tokens(tokens: list) -> None:
    """Clear refusals for clauses sqlglot cannot parse (INTO OUTFILE), before parsing."""
    texts = [t.text.upper() for t in tokens]
    for i, (text, nxt) in enumerate(zip(texts, texts[1:] + [""], strict=True)):
        if text == "INTO" and nxt == "OUTFILE":
            tok = tokens[i]
            raise Forbidden(f"INTO OUTFILE is not allowed (line {tok.line}, column {tok.col})")
    if texts[0] in _STATEMENT_WORDS:
        raise Forbidden(f"only SELECT statements run; this is {texts[0]}")


def parse_message(err: ParseError) -> str:
    """The parser's first error as one line: what, line, column, and the text near it."""
    if err.errors:
        first = err.errors[0]
        near = (first.get("highlight") or "").strip()
        where = f" near {near!r}" if near else ""
        return (
            f"{first.get('description', 'syntax error')} at line {first.get('line')}, "
            f"column {first.get('col')}{where}"
        )
    return _ANSI.sub("", str(err))


def _is_select(ast: exp.Expression) -> bool:
    if isinstance(ast, exp.Subquery):
        return _is_select(ast.this)
    if isinstance(ast, exp.SetOperation):
        return _is_select(ast.this) and _is_select(ast.expression)
    return isinstance(ast, exp.Select)


def _statement_kind(ast: exp.Expression, tokens: list) -> str:
    if isinstance(ast, exp.Command):
        return str(ast.this).upper()
    return tokens[0].text.upper() if tokens else ast.key.upper()


def check_node(node: exp.Expression) -> None:
    """Refuse one node of the tree if it is a construct users may not run (Forbidden)."""
    if isinstance(node, _STATEMENTS):
        raise Forbidden(f"only SELECT statements run; found {node.key.upper()} inside the query")
    if isinstance(node, exp.Query) and not isinstance(node, _SELECT_ROOTS):
        raise Forbidden(f"{node.key.upper()} is not allowed in a query")
    if isinstance(node, exp.Select):
        if node.args.get("settings"):
            raise Forbidden("SETTINGS is not allowed in a query (limits are set by the gateway)")
        if node.args.get("format"):
            raise Forbidden("FORMAT is not allowed in a query (use the Accept header)")
        if node.args.get("into"):
            raise Forbidden("SELECT ... INTO is not allowed")
    if isinstance(node, exp.Placeholder):
        raise Forbidden(f"query parameters are not supported: {node.sql(dialect=DIALECT)}")
    if isinstance(node, exp.Table):
        _check_table(node)
    if isinstance(node, exp.In):
        _check_in(node)
    if isinstance(node, exp.Func) and not isinstance(node, _OPERATORS):
        _check_function(function_name(node))
    if isinstance(node, exp.Apply) and isinstance(node.expression, (exp.Var, exp.Identifier)):
        _check_function(node.expression.name)


def _check_table(table: exp.Table) -> None:
    source = table.this
    if not isinstance(source, exp.Identifier):
        name = function_name(source) if isinstance(source, exp.Func) else source.sql(DIALECT)
        raise Forbidden(f"table function {name}() is not allowed; query the plant's tables")
    qualifier = table.args.get("catalog") or table.args.get("db")
    if qualifier is not None:
        raise Forbidden(
            f"table {table.sql(dialect=DIALECT)} is not allowed: database-qualified tables "
            "(system.*, information_schema.*, default.*) cannot be queried; "
            "use the plain table name"
        )


def _check_in(node: exp.In) -> None:
    field = node.args.get("field")
    values = node.expressions
    bare = field is not None or (len(values) == 1 and isinstance(values[0], exp.Column))
    if bare:
        name = (field or values[0]).sql(dialect=DIALECT)
        raise Forbidden(
            f"IN {name}: a bare name after IN reads a table; "
            "use IN (SELECT ...) or a list of values"
        )


def _check_function(name: str) -> None:
    lower = name.lower()
    if lower in DENIED_FUNCTIONS or lower.startswith(DENIED_PREFIXES):
        kind = "table function" if lower in TABLE_FUNCTIONS else "function"
        raise Forbidden(f"{kind} {name}() is not allowed in gateway queries")
