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
- any function that ``gateway/functions.tsv`` does not allow: an allowlist
  of every function of the engine, matched as ClickHouse resolves names
  (case, aliases, aggregate combinators; quoting and escapes are decoded by
  the parser), see ``gateway.functions``;
- any name or string that decodes to one holding ``__tickplant`` (the
  engine's placeholders), checked on the parsed tree, where escapes are gone.

Unparseable text gives ``SqlError`` (HTTP 400) with the parser's message and
line/column. Whether a table exists and who may read it is
``gateway.policy``'s job: this module knows no plant tables.
"""

from __future__ import annotations

import re
from typing import TypeVar

import sqlglot
from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import ParseError, TokenError
from sqlglot.generators.clickhouse import ClickHouseGenerator

from gateway import functions


class PlantClickHouse(ClickHouse):
    """sqlglot's ClickHouse dialect, less the rewrites that change what a statement means
    when the checked tree is written back out (each found running both texts on chDB):
    ``a DIV b`` became a float division cast back to an integer (off by one near whole
    seconds of nanosecond times) and ``rand()`` became ``randCanonical()`` (a float in
    [0, 1): ``rand() % 10 = 0`` matched nothing)."""

    class Generator(ClickHouseGenerator):
        TRANSFORMS = {
            **ClickHouseGenerator.TRANSFORMS,
            exp.IntDiv: lambda self, e: self.func("intDiv", e.this, e.expression),
            exp.Rand: lambda self, e: self.func("rand", e.this),
        }


DIALECT = PlantClickHouse


class SqlError(ValueError):
    """The statement cannot be parsed (HTTP 400); the message has line and column."""


class Forbidden(PermissionError):
    """The statement is refused (HTTP 403); the message names what was refused."""


# ClickHouse syntax that reads like a call but is parsed by ClickHouse itself into its own
# functions (TRIM(BOTH ...), EXTRACT(DAY FROM ...), ...): no name of the user's reaches the engine
SYNTAX_CALLS = frozenset("TRIM EXTRACT SUBSTRING POSITION INTERVAL COLUMNS EXISTS CAST DATE TIMESTAMP".split())
# functions whose first argument names an aggregate function (a string, resolved by the engine)
AGGREGATE_BY_NAME = frozenset({"arrayreduce", "arrayreduceinranges", "initializeaggregation"})

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# the engine's placeholder names start with this; a user string or name holding it could
# be mistaken for one when the engine substitutes its sources into the generated text
RESERVED = "__tickplant"
FENCE_LIMIT = str(2**64 - 1)  # ClickHouse's largest LIMIT: every row
# Func subclasses that are operators (AND, OR, =, NOT, ...), not named calls
_OPERATORS = (exp.Binary, exp.Connector, exp.Unary)
_TOO_DEEP = "the query nests too deeply (parentheses or subqueries); simplify it"
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_AGGREGATE_IN_TYPE = re.compile(r"(?i)AggregateFunction\s*\(\s*`?([A-Za-z_][A-Za-z0-9_]*)")
_AGGREGATE_TYPES = {exp.DataType.Type.AGGREGATEFUNCTION, exp.DataType.Type.SIMPLEAGGREGATEFUNCTION}
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
    if not isinstance(ast, exp.Expression):  # every node class sqlglot builds is one
        raise SqlError(f"cannot read the query: it parsed as a bare {type(ast).__name__}")
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


def function_name(node: exp.Expr) -> str | None:
    """The name ClickHouse will see for a function call node, or None for syntax.

    A function sqlglot does not model (Anonymous) is named by its identifier as
    parsed, quotes and escapes decoded (``"file"``, ```\\x66ile``` are ``file``);
    a typed node is named by the SQL generated for it (``version()`` parses as
    CurrentVersion and is generated back as ``version()``), so the check sees
    what runs; a node generated as syntax, not a call (``CASE``), has no name.
    """
    if isinstance(node, exp.Anonymous):
        return node.this if isinstance(node.this, str) else node.this.name
    match = _CALL.match(node.sql(dialect=DIALECT))
    return match.group(1) if match else None


def fence(select: exp.Select) -> exp.Select:
    """``select`` with a LIMIT that keeps every row: no optimiser may move a filter of an
    outer query below a LIMIT (it would change which rows the LIMIT keeps), so whatever
    the outer query computes, it computes only on rows ``select`` passed."""
    return select.limit(exp.Literal.number(FENCE_LIMIT), copy=False)


def is_fence(select: exp.Select) -> bool:
    """True if the LIMIT of ``select`` is ``fence``'s (it keeps every row)."""
    limit = select.args.get("limit")
    value = limit.expression if isinstance(limit, exp.Limit) else None
    return isinstance(value, exp.Literal) and value.this == FENCE_LIMIT and not select.args.get("offset")


Node = TypeVar("Node", bound=exp.Expr)


def strip_comments(ast: Node) -> Node:
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


def _is_select(ast: exp.Expr) -> bool:
    if isinstance(ast, exp.Subquery):
        return _is_select(ast.this)
    if isinstance(ast, exp.SetOperation):
        return _is_select(ast.this) and _is_select(ast.expression)
    return isinstance(ast, exp.Select)


def _statement_kind(ast: exp.Expr, tokens: list) -> str:
    if isinstance(ast, exp.Command):
        return str(ast.this).upper()
    return tokens[0].text.upper() if tokens else ast.key.upper()


def check_node(node: exp.Expr) -> None:
    """Refuse one node of the tree if it is a construct users may not run (Forbidden)."""
    _check_reserved(node)
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
        name = function_name(node)
        if name is not None:
            _check_function(name)
            if name.lower() in AGGREGATE_BY_NAME:
                _check_aggregate_argument(name, node)
    if isinstance(node, exp.Apply) and isinstance(node.expression, (exp.Var, exp.Identifier)):
        _check_function(node.expression.name)
    if isinstance(node, exp.Literal) and node.is_string and "aggregatefunction" in node.this.lower():
        for name in _AGGREGATE_IN_TYPE.findall(node.this):  # CAST(x, 'AggregateFunction(f, T)')
            _check_function(name)
    if isinstance(node, exp.DataType) and node.this in _AGGREGATE_TYPES:
        for arg in node.expressions:
            if isinstance(arg, (exp.Identifier, exp.Var, exp.Anonymous)):
                _check_function(arg.name)


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
    only = values[0] if len(values) == 1 else None
    while isinstance(only, exp.Paren):  # IN ((system.one)) reads the table like IN (system.one)
        only = only.this
    bare = only if isinstance(only, (exp.Column, exp.Dot, exp.Identifier, exp.Var, exp.Table)) else None
    named = field if field is not None else bare
    if named is not None:
        name = named.sql(dialect=DIALECT)
        raise Forbidden(
            f"IN {name}: a bare name after IN reads a table; "
            "use IN (SELECT ...) or a list of values"
        )


def _check_function(name: str) -> None:
    found = functions.catalog().resolve(name)
    if found is None:
        if name.upper() in SYNTAX_CALLS:
            return
        raise SqlError(f"unknown function {printable(name)}()")
    if not found.allowed:
        raise Forbidden(f"function {printable(name)}() is not allowed in gateway queries ({found.why})")


def _check_aggregate_argument(name: str, node: exp.Func) -> None:
    """``arrayReduce('sum', ...)``: the aggregate named by the string is checked like a call."""
    args = [a for a in node.iter_expressions()]
    first = args[0] if args else None
    if not (isinstance(first, exp.Literal) and first.is_string):
        raise Forbidden(f"{name}() takes the aggregate function's name as a string literal")
    _check_function(first.this)


def _check_reserved(node: exp.Expr) -> None:
    """No name or string, as the parser decoded it, may hold the engine's reserved prefix
    (``\\x5f\\x5ftickplant...`` in backquotes decodes to it; the raw text does not show it)."""
    for value in node.args.values():
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str) and RESERVED in item.lower():
                raise Forbidden(f"names containing {RESERVED!r} are reserved for the gateway")


def printable(name: str) -> str:
    """A name as an error message may show it: one line, bounded."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 64 else text[:61] + "..."
