"""Entitlements applied to a parsed SELECT: which tables, columns and rows a user reads.

``authorize`` does two things, in this order:

1. A pre-check that gives a clear 403: a table the user has no grant on, or a
   reference to a column the user may not see, wherever it stands (select
   list, WHERE, ORDER BY, GROUP BY, JOIN ON/USING, a function argument, a
   subquery, a CTE, a UNION branch), qualified by the table name, by its
   alias, or not at all. A name that is an alias defined in the statement
   (``SELECT price AS exchange ... ORDER BY exchange``) is the alias, as in
   ClickHouse; an unqualified name denied on one table of the statement and
   granted on another must be qualified (``q.exchange``).
2. The rewrite, which is the guarantee: every plant-table reference
   ``trade [AS t]`` becomes ``(SELECT <granted columns>, date FROM trade
   WHERE <row filter> LIMIT <all>) AS t`` (the alias defaults to the table name, so
   ``trade.price`` still resolves). A denied column cannot be read because the
   subquery does not expose it (``SELECT *`` and ``COLUMNS('.*')`` therefore
   expand to the granted columns plus ``date``), and a denied row is filtered
   before any of the user's SQL sees it, however the statement nests, joins
   or unions. The LIMIT that keeps every row is a fence for ClickHouse's
   optimiser: it may not push the user's predicates below it (to PREWHERE or
   into the Parquet reader), where they would run on hidden rows first and
   tell of them by an error (``toInt64(sym)`` failing on a hidden sym).
   Even if the pre-check missed a construct, the query would then fail
   with an unknown column rather than return data.

The inner ``trade`` stays a plain Table node (``gateway.sql.table_refs`` finds
it): the engine replaces it with the RDB+HDB source. Admins' statements, and
references to tables a user is granted whole (all columns, all rows), are
checked but not rewritten.

Unknown tables are ``SqlError`` (400, naming the table and listing the
tables); a CTE named like a plant table is refused, so a name always means
one thing. FINAL, SAMPLE and parenthesised joins on a plant table are 400s:
the sources behind a table support none of them; PREWHERE is folded into WHERE.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from sqlglot import exp

from gateway.auth import Grant, User
from gateway.sql import (
    Forbidden,
    SqlError,
    cte_names,
    fence,
    parse_select,
    printable,
    render,
    strip_comments,
    table_refs,
)
from ingest.seq import SEQ

DATE = "date"


def authorize(
    ast: exp.Expression, user: User, columns: dict[str, list[str]]
) -> exp.Expression:
    """Check ``ast`` (from ``parse_select``) for ``user`` and return it rewritten.

    ``columns`` maps each plant table to its column names (with ``date``).
    Raises ``Forbidden`` (403) naming the table or column refused, ``SqlError``
    (400) for an unknown table. The tree is modified in place and returned.
    """
    refs = table_refs(ast)
    for name in sorted(cte_names(ast) & set(columns)):
        raise Forbidden(f"CTE name {name!r} is also a table name; rename the CTE")
    grants: dict[str, Grant] = {}
    for table in refs:
        name = table.name
        if name not in columns:  # named as the caller may see them: only tables granted
            yours = sorted(t for t in columns if user.grant_for(t) is not None)
            raise SqlError(f"unknown table '{printable(name)}'; your tables: {', '.join(yours) or 'none'}")
        grant = user.grant_for(name)
        if grant is None:
            raise Forbidden(f"user {user.name!r} has no grant on table {name!r}")
        grants[name] = grant
        _check_plain(table)
    strip_comments(ast)
    if user.admin:
        return ast
    _check_columns(ast, refs, grants, columns, user)
    restricted = [t for t in refs if grants[t.name].restricted]
    # ``seq`` (ingest.seq) is in a restricted source only when named: ``SELECT *`` leaves it out
    named_seq = any(c.name == SEQ for c in ast.find_all(exp.Column))
    for table in restricted:
        cols = [c for c in columns[table.name] if c != SEQ or named_seq]
        table.replace(restricted_source(table, grants[table.name], cols))
    if restricted:
        _prewhere_to_where(ast)
    return ast


def visible_columns(grant: Grant, table_columns: list[str]) -> list[str]:
    """The columns a grant exposes, in table order, always ending with ``date``."""
    visible = [c for c in table_columns if c != DATE and grant.column_allowed(c)]
    return [*visible, DATE]


def restricted_source(table: exp.Table, grant: Grant, table_columns: list[str]) -> exp.Subquery:
    """``(SELECT <visible columns> FROM <table> WHERE <rows>) AS <alias or table name>``."""
    inner = exp.Table(this=exp.to_identifier(table.name))
    select = exp.Select(
        expressions=[exp.column(c, quoted=True) for c in visible_columns(grant, table_columns)]
    ).from_(inner, copy=False)
    if grant.row_filter is not None:
        # fenced: the user's expressions then never see a row the filter removes (else an
        # error raised on a hidden row, or its absence, would tell of it)
        select = fence(select.where(grant.row_filter.copy(), copy=False))
    alias = table.args.get("alias")
    alias = alias.copy() if alias is not None else exp.TableAlias(this=exp.to_identifier(table.name))
    return exp.Subquery(this=select, alias=alias)


def _prewhere_to_where(ast: exp.Expression) -> None:
    """PREWHERE is an optimisation ClickHouse refuses over a subquery: fold it into WHERE,
    which means the same, so the rewritten statement still runs."""
    for select in list(ast.find_all(exp.Select)):
        prewhere = select.args.get("prewhere")
        if prewhere is not None:
            select.set("prewhere", None)
            select.where(prewhere.this, copy=False)


def _check_plain(table: exp.Table) -> None:
    """Refuse table modifiers the rewrite cannot carry (they would be silently lost)."""
    if isinstance(table.parent, exp.Final):
        raise SqlError(f"FINAL is not supported on table {table.name!r}")
    for key, value in table.args.items():
        if key in ("this", "alias") or not value:
            continue
        if key == "sample":
            raise SqlError(f"SAMPLE is not supported on table {table.name!r}")
        if key == "joins":
            raise SqlError(
                f"parenthesised joins ('(' {table.name} JOIN ... ')') are not supported; "
                "write the joins without parentheses"
            )
        raise SqlError(f"{key.upper()} is not supported on table {table.name!r}")


def _check_columns(
    ast: exp.Expression,
    refs: list[exp.Table],
    grants: dict[str, Grant],
    columns: dict[str, list[str]],
    user: User,
) -> None:
    """The clear-403 pre-check: any reference to a column the user may not see."""
    denied = {
        name: {c for c in columns[name] if not grant.column_allowed(c)}
        for name, grant in grants.items()
    }
    if not any(denied.values()):
        return
    qualifiers = {t.alias_or_name: t.name for t in refs}
    defined = _defined_names(ast)

    def refuse(table: str, column: str) -> None:
        raise Forbidden(
            f"column {column!r} of table {table!r} is not granted to user {user.name!r}"
        )

    def check_unqualified(name: str, node: exp.Expression) -> None:
        if any(d.resolves(node) for d in defined.get(name, ())):
            return  # an alias, a WITH name or a lambda parameter, not the column
        denying = [t for t, cols in denied.items() if name in cols]
        if denying:
            granting = [t for t in grants if t not in denying and name in columns[t]]
            if granting:
                raise Forbidden(
                    f"column {name!r} of table {denying[0]!r} is not granted to user "
                    f"{user.name!r}; qualify it ({granting[0]}.{name}) to mean "
                    f"table {granting[0]!r}"
                )
            refuse(denying[0], name)

    for col in ast.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            continue
        qualifier = col.table
        if qualifier and qualifier in qualifiers:
            table = qualifiers[qualifier]
            if col.name in denied[table]:
                refuse(table, col.name)
            continue
        check_unqualified(col.name, col)
    for join in ast.find_all(exp.Join):
        for ident in join.args.get("using") or []:
            check_unqualified(ident.name, ident)


def _defined_names(ast: exp.Expression) -> dict[str, list[_Definition]]:
    """Names the statement defines for values: column aliases, scalar CTEs, lambda params."""
    defined: dict[str, list[_Definition]] = {}
    for node in ast.walk():
        if isinstance(node, exp.Alias):
            defined.setdefault(node.alias, []).append(_Definition(node, "alias"))
        elif isinstance(node, exp.Aliases):
            for ident in node.expressions:
                defined.setdefault(ident.name, []).append(_Definition(node, "alias"))
        elif isinstance(node, exp.CTE) and node.args.get("scalar"):
            defined.setdefault(node.alias, []).append(_Definition(node, "with"))
        elif isinstance(node, exp.Lambda):
            for ident in node.expressions:
                defined.setdefault(ident.name, []).append(_Definition(node, "lambda"))
    return defined


class _Definition:
    """Where a defined name applies, the way ClickHouse resolves it.

    A column alias applies in its own SELECT (all its clauses), except inside
    its own expression (``SELECT exchange AS exchange`` reads the column); a
    ``WITH <expr> AS name`` in the query that owns the WITH and its subqueries;
    a lambda parameter only inside the lambda. Anything else is a column: the
    pre-check refuses more rather than less, and the rewrite decides in the end.
    """

    def __init__(self, node: exp.Expression, kind: str):
        self.node = node
        self.kind = kind
        self.scope: exp.Expr | None  # the subtree where the name means the definition
        if kind == "alias":
            self.scope = node.find_ancestor(exp.Select)
        elif kind == "with":
            self.scope = node.parent.parent if node.parent is not None else None
        else:
            self.scope = node

    def resolves(self, ref: exp.Expression) -> bool:
        if self.kind == "lambda":
            return _is_within(ref, self.node)
        if self.scope is None or _is_within(ref, self.node):
            return False
        if self.kind == "alias":
            return ref.find_ancestor(exp.Select) is self.scope
        return _is_within(ref, self.scope)


def _is_within(node: exp.Expr, ancestor: exp.Expr) -> bool:
    parent: exp.Expr | None = node
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False


def entitled(sql: str, user: User, columns: dict[str, list[str]]) -> exp.Expression:
    """``parse_select`` then ``authorize``: the checked, rewritten tree for one request."""
    return authorize(parse_select(sql), user, columns)


def check_subscription(user: User, source: str, tables: set[str] | dict[str, list[str]],
                       derived_from: Iterable[str] = ()) -> None:
    """Refuse a live subscription the user's grant cannot be applied to (Forbidden).

    Subscriptions fan one decoded stream out to many clients, unfiltered per
    user, so a plant table needs an unrestricted grant (all columns, all rows);
    a user limited to some columns or rows queries ``/v1/sql`` instead, or the
    hub filters that user's batches with ``restrict_table``. Any other source is
    a real-time engine's output, computed from every row of the plant tables
    ``derived_from`` (a vwap over exchanges a user may not see tells of them):
    it needs an unrestricted grant on each of those.
    """
    if source in tables:
        _check_whole(user, source, f"a live subscription to {source!r}")
        return
    for table in derived_from:
        _check_whole(user, table, f"{source!r}, computed from every row of {table!r},")


def _check_whole(user: User, table: str, what: str) -> None:
    grant = user.grant_for(table)
    if grant is None:
        raise Forbidden(f"user {user.name!r} has no grant on table {table!r}"
                        + ("" if what.startswith("a live") else f" ({what[:-1]} needs one)"))
    limits = [kind for kind, on in (("columns", grant.columns is not None),
                                    ("rows", grant.row_filter is not None)) if on]
    if limits:
        raise Forbidden(
            f"{what} needs an unrestricted grant; user "
            f"{user.name!r} is limited to some {' and '.join(limits)} of {table!r}"
        )


def restrict_table(grant: Grant, rows: pa.Table) -> pa.Table:
    """The rows and columns of an Arrow batch that ``grant`` lets its user see.

    The same filter as the SQL rewrite, run by chDB over the batch (the
    gateway's own SQL, never a user's), for pushing live rows to a restricted user.
    """
    keep = [c for c in rows.column_names if grant.column_allowed(c)]
    if grant.row_filter is None or rows.num_rows == 0:
        return rows.select(keep)
    import chdb  # only the embedded engine evaluates a ClickHouse row filter locally

    select = exp.Select(expressions=[exp.column(c, quoted=True) for c in keep]).from_(
        exp.Table(this=exp.Anonymous(this="Python", expressions=[exp.to_identifier("batch")])),
        copy=False,
    ).where(grant.row_filter.copy(), copy=False)
    batch = rows  # noqa: F841 - read by name by chDB's Python() table function
    return chdb.query(render(select), "ArrowTable")
