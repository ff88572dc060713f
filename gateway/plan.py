"""What a statement needs from each table: which days, which syms, which columns.

The gateway reads this off the parsed statement, never off strings, to touch
only what the answer needs: the HDB days in range (whole directories pruned),
today's rows from the RDB for the syms asked (the shards that hold them), and
only the columns the statement names.

A predicate prunes a table only where that is safe: a conjunct (``AND``) of
the WHERE of the SELECT reading the table, on its ``date`` or ``sym`` column,
compared with constants, and never on the null-supplying side of an outer join
(whose missing rows come out as defaults the WHERE may keep). It also looks
through pass-through sub-queries (one source and no join, no GROUP BY, LIMIT,
DISTINCT, window or aggregate, and ``date``/``sym`` selected as they are),
which is what the entitlement rewrite
``(SELECT cols FROM trade WHERE rows) AS trade`` is. Anything else (an OR, a
function of the column, a comparison with another column) prunes nothing:
the statement still filters, it just reads more.

``today()`` and ``yesterday()`` are the plant's open trading day and the day
before it, not the calendar of the machine: an FX plant's Monday starts on
Sunday at 17:00 New York. They are replaced by literals before the statement
runs, so the answer and the pruning agree.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Literal

from sqlglot import exp

from gateway.sql import cte_names, is_fence


@dataclass
class DateFilter:
    """Inclusive bounds and/or an explicit set of days; empty = every day."""

    lo: dt.date | None = None
    hi: dt.date | None = None
    days: set[dt.date] | None = None

    def accepts(self, day: dt.date) -> bool:
        if self.lo is not None and day < self.lo:
            return False
        if self.hi is not None and day > self.hi:
            return False
        return self.days is None or day in self.days

    def tighten(self, lo: dt.date | None = None, hi: dt.date | None = None,
                days: set[dt.date] | None = None) -> None:
        if lo is not None:
            self.lo = lo if self.lo is None else max(self.lo, lo)
        if hi is not None:
            self.hi = hi if self.hi is None else min(self.hi, hi)
        if days is not None:
            self.days = set(days) if self.days is None else self.days & days


@dataclass
class TableNeed:
    """What one reference to a plant table needs."""

    table: str
    dates: DateFilter = field(default_factory=DateFilter)
    syms: set[str] | None = None  # None = every sym


def replace_today(ast: exp.Expression, open_date: dt.date) -> exp.Expression:
    """``today()``/``yesterday()`` -> the plant's open day and the day before, as literals,
    in place (a copy of the tree per query cost more than the rewrite)."""
    days = {"today": open_date, "yesterday": open_date - dt.timedelta(days=1)}

    def swap(node: exp.Expression) -> exp.Expression:
        name = "today" if isinstance(node, exp.CurrentDate) else _function_name(node)
        if name in days and not _args(node):
            return exp.Anonymous(this="toDate", expressions=[exp.Literal.string(days[name].isoformat())])
        return node

    return ast.transform(swap, copy=False)  # in place: the tree is the caller's to give up


def plant_tables(ast: exp.Expression, tables: set[str]) -> list[exp.Table]:
    """References to plant tables: undotted names that are tables, not table CTEs' names
    (a scalar CTE, ``WITH 1 AS trade``, names a value: ``FROM trade`` is still the table)."""
    ctes = cte_names(ast)
    return [t for t in ast.find_all(exp.Table)
            if not t.args.get("db") and t.name in tables and t.name not in ctes
            and isinstance(t.this, exp.Identifier)]


def column_names(ast: exp.Expression) -> set[str] | None:
    """Every column name the statement mentions; None if it selects ``*`` (outside
    ``count(*)``): one walk of the tree, shared by all of its table references."""
    names: set[str] = set()
    for node in ast.walk():
        if isinstance(node, exp.Star):
            if not isinstance(node.parent, exp.Count):
                return None
        elif isinstance(node, exp.Column) and node.name:
            names.add(node.name)
    return names


def columns_needed(ast: exp.Expression, table_columns: list[str],
                   names: set[str] | None | Literal[False] = False) -> list[str] | None:
    """The table's columns the statement names (in table order); None = all of them.

    Conservative: a column name appearing anywhere counts, whatever it qualifies;
    a ``*`` anywhere outside ``count(*)`` means all. A statement naming none
    (``count()``) still needs its rows: one narrow column, ``sym`` (a dictionary),
    carries them. ``names`` is ``column_names(ast)`` when the caller has it already
    (several references, one walk).
    """
    if names is False:
        names = column_names(ast)
    if names is None:
        return None
    return [c for c in table_columns if c in names] or ["sym" if "sym" in table_columns else table_columns[0]]


def need_of(ref: exp.Table) -> TableNeed:
    """Days and syms one table reference needs, from the predicates that safely apply."""
    need = TableNeed(ref.name)
    alias = ref.alias_or_name
    node: exp.Expression = ref
    visible = {"date", "sym"}  # the pruning columns still the table's own at this level
    while visible:
        select = _reading_select(node)
        if select is None:
            break
        if _null_supplying(node, select):
            break  # its unmatched rows come out with default values: filtering them is the WHERE's job
        sole = len(_sources(select)) == 1
        for conjunct in _conjuncts(select.args.get("where")):
            _apply(conjunct, alias, sole, need, visible)
        outer = select.parent
        if not (isinstance(outer, exp.Subquery) and isinstance(outer.parent, exp.From | exp.Join)):
            break
        visible &= _passed_through(select)
        node, alias = outer, outer.alias_or_name
    return need


def exact_keys(where: exp.Where | None) -> bool:
    """Whether ``where`` says nothing but what ``need_of`` takes from it, and takes exactly:
    unqualified ``date`` and ``sym`` equal to, or in, literals, and TRUE. The rows fetched
    for the need are then the rows it selects, with nothing left to filter. A day must be
    spelled as ClickHouse reads it the same way (``'YYYY-MM-DD'`` or ``toDate`` of it, as
    ``today()`` is planned): ``_date_value`` also takes forms that only prune."""
    for conjunct in _conjuncts(where):
        if isinstance(conjunct, exp.Boolean) and conjunct.this is True or \
                isinstance(conjunct, exp.Literal) and not conjunct.is_string and conjunct.this == "1":
            continue
        if isinstance(conjunct, exp.In) and not conjunct.args.get("query"):
            column, values = conjunct.this, conjunct.expressions
        elif isinstance(conjunct, exp.EQ):
            column, values = conjunct.this, [conjunct.expression]
            if not isinstance(column, exp.Column):
                column, values = conjunct.expression, [conjunct.this]
        else:
            return False
        if not isinstance(column, exp.Column) or column.table or not values:
            return False
        literal = {"date": _plain_date, "sym": _string_value}.get(column.name)
        if literal is None or any(literal(v) is None for v in values):
            return False
    return True


# -- internals -------------------------------------------------------------------------------

def _function_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower()
    if isinstance(node, exp.Func) and not isinstance(node, exp.Column):
        return node.sql_name().lower() if hasattr(node, "sql_name") else None
    return None


def _args(node: exp.Expression) -> list[exp.Expression]:
    return [v for k, v in node.args.items() if v not in (None, []) and k != "this"]


def _reading_select(node: exp.Expression) -> exp.Select | None:
    """The SELECT whose FROM or JOIN is ``node``."""
    parent = node.parent
    if isinstance(parent, exp.From | exp.Join) and isinstance(parent.parent, exp.Select):
        return parent.parent
    return None


def _sources(select: exp.Select) -> list[exp.Expression]:
    out = []
    source = select.args.get("from_") or select.args.get("from")  # the key's name varies by sqlglot version
    if source is not None:
        out.append(source.this)
    out.extend(j.this for j in select.args.get("joins") or [])
    return out


def _null_supplying(node: exp.Expression, select: exp.Select) -> bool:
    """Whether ``node`` (a source of ``select``) is the side of an outer join whose missing
    rows ClickHouse fills with defaults (``date`` 1970-01-01, ``sym`` ''): a predicate on
    it may then hold for a row only because the match is missing, so it must not prune."""
    joins = select.args.get("joins") or []
    parent = node.parent
    if isinstance(parent, exp.Join):
        return parent.side.upper() in ("LEFT", "FULL")
    return any(j.side.upper() in ("RIGHT", "FULL") for j in joins)


def _passed_through(select: exp.Select) -> set[str]:
    """Which of ``date``/``sym`` a sub-query hands on unchanged, row for row: none through
    a join or ARRAY JOIN (whose ``date`` the outer query sees is not one table's)."""
    if any(select.args.get(k) for k in ("group", "distinct", "having", "qualify", "offset")):
        return set()
    if select.args.get("limit") is not None and not is_fence(select):
        return set()  # a LIMIT keeps some rows; the entitlements' fence keeps them all
    if select.find(exp.Window) or any(select.find_all(exp.AggFunc)) or len(_sources(select)) != 1:
        return set()
    stars = [e for e in select.expressions if isinstance(e, exp.Star)]
    if any(any(v for k, v in star.args.items()) for star in stars):
        return set()  # * EXCEPT / REPLACE / RENAME (REPLACE can redefine date)
    if stars:
        return {"date", "sym"}
    return {e.name for e in select.expressions if isinstance(e, exp.Column)} & {"date", "sym"}


def _conjuncts(where: exp.Where | None) -> list[exp.Expression]:
    if where is None:
        return []
    out, stack = [], [where.this]
    while stack:
        node = stack.pop()
        if isinstance(node, exp.And):
            stack.extend([node.this, node.expression])
        elif isinstance(node, exp.Paren):
            stack.append(node.this)
        else:
            out.append(node)
    return out


def _column(node: exp.Expression, alias: str, sole: bool, visible: set[str]) -> str | None:
    """``date``/``sym`` if ``node`` is that column of the table under ``alias``."""
    if not isinstance(node, exp.Column) or node.name not in visible:
        return None
    qualifier = node.table
    if qualifier == alias or (not qualifier and sole):
        return node.name
    return None


def _date_value(node: exp.Expression) -> dt.date | None:
    if isinstance(node, exp.Add | exp.Sub) and isinstance(node.expression, exp.Literal) \
            and not node.expression.is_string:
        base = _date_value(node.this)
        try:
            days = int(node.expression.this)
        except ValueError:
            return None
        if base is None:
            return None
        return base + dt.timedelta(days=days if isinstance(node, exp.Add) else -days)
    if isinstance(node, exp.Literal) and node.is_string:
        try:
            return dt.date.fromisoformat(node.this)
        except ValueError:
            return None
    name = _function_name(node)
    if name in ("todate", "todate32", "date") or isinstance(node, exp.Cast | exp.TsOrDsToDate):
        inner = node.expressions[0] if isinstance(node, exp.Anonymous) and node.expressions else node.this
        return _date_value(inner) if isinstance(inner, exp.Expression) else None
    return None


def _plain_date(node: exp.Expression) -> dt.date | None:
    """``'YYYY-MM-DD'``, or ``toDate``/``toDate32`` of it, alone."""
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in ("todate", "todate32") \
            and len(node.expressions) == 1:
        node = node.expressions[0]
    if not (isinstance(node, exp.Literal) and node.is_string and _ISO_DAY.fullmatch(node.this)):
        return None
    return _date_value(node)


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _string_value(node: exp.Expression) -> str | None:
    return node.this if isinstance(node, exp.Literal) and node.is_string else None


_FLIP: dict[type[exp.Expr], type[exp.Expr]] = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ}


def _apply(pred: exp.Expression, alias: str, sole: bool, need: TableNeed, visible: set[str]) -> None:
    if isinstance(pred, exp.Between):
        if _column(pred.this, alias, sole, visible) == "date":
            lo, hi = _date_value(pred.args["low"]), _date_value(pred.args["high"])
            need.dates.tighten(lo=lo, hi=hi)
        return
    if isinstance(pred, exp.In) and not pred.args.get("query"):
        col = _column(pred.this, alias, sole, visible)
        values = pred.expressions
        if col == "date":
            days = [d for v in values if (d := _date_value(v)) is not None]
            if len(days) == len(values):  # every value a date
                need.dates.tighten(days=set(days))
        elif col == "sym":
            syms = [s for v in values if (s := _string_value(v)) is not None]
            if len(syms) == len(values):  # every value a string
                need.syms = set(syms) if need.syms is None else need.syms & set(syms)
        return
    kind: type[exp.Expr] = type(pred)
    if kind not in _FLIP:
        return
    left, right = pred.this, pred.expression
    col = _column(left, alias, sole, visible)
    if col is None:
        col, left, right, kind = _column(right, alias, sole, visible), right, left, _FLIP[kind]
    if col == "sym" and kind is exp.EQ:
        sym = _string_value(right)
        if sym is not None:
            need.syms = {sym} if need.syms is None else need.syms & {sym}
        return
    if col != "date":
        return
    day = _date_value(right)
    if day is None:
        return
    if kind is exp.EQ:
        need.dates.tighten(days={day})
    elif kind is exp.GTE:
        need.dates.tighten(lo=day)
    elif kind is exp.GT:
        need.dates.tighten(lo=day + dt.timedelta(days=1))
    elif kind is exp.LTE:
        need.dates.tighten(hi=day)
    elif kind is exp.LT:
        need.dates.tighten(hi=day - dt.timedelta(days=1))
