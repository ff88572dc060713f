"""Aggregates computed where the rows are: each RDB node aggregates its part, the gateway merges.

A kdb+ gateway map-reduces an aggregate over its RDBs and HDBs; ClickHouse's
Distributed table sends each shard the query with aggregate *states* in place
of results and merges the states. Moving a day's raw rows from the RDB nodes
into the gateway to count them was most of the time of today's queries, so a
statement whose reading SELECT aggregates one plant table is split the same
way:

- the *partial*: the reading SELECT's FROM and WHERE, its GROUP BY keys, and
  ``CAST(<f>State(args) AS String)`` for each aggregate ``f(args)``, run by
  every RDB node over its own rows of the day and by the engine over the HDB
  days; states cross as bytes (Arrow has no aggregate-state type);
- the *final*: the statement with that SELECT reading the partials instead,
  each aggregate replaced by ``<f>Merge(CAST(state, <its type>))``, its keys
  by the partials' key columns, GROUP BY the keys, HAVING, ORDER BY and
  LIMIT as written.

Only what is certain to mean the same splits; anything else (a join, a
window, DISTINCT, a sub-query outside FROM, an alias the WHERE uses, a bare
column that is not a key, ...) runs as before, over the rows. The split is
of the parsed tree, after the entitlement rewrite: a row filter is inside the
FROM item (the fenced sub-query), so it runs on the nodes with the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp

from gateway.functions import catalog as function_catalog
from gateway.sql import DIALECT, function_name, is_fence, render

KEY = "__tickplant_k{}"
STATE = "__tickplant_a{}"
MERGED = "__tickplant_m{}"
_SELECT_ARGS = {"expressions", "from", "from_", "where", "group", "having", "order", "limit", "offset"}
_STATE_TYPE = re.compile(r"^AggregateFunction\((\w+)(\([^()]*\))?[,)]")


@dataclass(frozen=True)
class Split:
    """A statement split into its partial (per part of the data) and its final (merge).

    ``partial`` reads ``sources`` (the placeholders of the plant table references: one,
    or two joined on ``sym``, co-located since a sym's rows of every table are in the
    same partition number);
    ``final`` reads ``partials`` (a placeholder for the union of every part's partial)
    and holds ``MERGED`` placeholders for the merges, filled once the state types are
    known (``merge_sql``). ``probe`` and ``names`` run once on an empty source: the
    states' types, and the reading SELECT's output column names (kept in the final)."""

    sources: tuple[str, ...]  # the placeholders of the plant table references, in plan order
    partials: str
    partial: str
    final: str
    probe: str
    names: str
    aggregates: int
    keys: int
    unnamed: tuple[int, ...]  # positions of select items without an alias


def union_sql(sources: list[str], key_types: list[str], aggregates: int) -> str:
    """The partials of every part as one table, each key cast to its type as the engine
    makes it from the table's typed rows (an Arrow round trip may change a key's type:
    a date, a low-cardinality string; unlike types would not group together)."""
    cols = [f"CAST(`{KEY.format(i)}`, {_literal(t)}) AS `{KEY.format(i)}`" for i, t in enumerate(key_types)] + \
           [f"`{STATE.format(j)}`" for j in range(aggregates)]
    return " UNION ALL ".join(f"SELECT {', '.join(cols)} FROM {source}" for source in sources)


def merge_sql(final: str, state_types: list[str], names: list[str], unnamed: tuple[int, ...]) -> str:
    """The final SQL with each merge written for its state's type, and each unaliased
    select item named as the unsplit statement names it."""
    for j, state_type in enumerate(state_types):
        match = _STATE_TYPE.match(state_type)
        if match is None:
            raise ValueError(f"unexpected aggregate state type {state_type!r}")
        name, params = match.group(1), match.group(2) or ""
        final = final.replace(MERGED.format(j), f"{name}Merge{params}(CAST(`{STATE.format(j)}`, {_literal(state_type)}))")
    for i in unnamed:
        final = final.replace(f"__tickplant_name_{i}__", "`" + names[i].replace("`", "\\`") + "`")
    return final


def split(ast: exp.Expression, sources: list[str], partials: str, columns: set[str]) -> Split | None:
    """The split of ``ast`` (a planned statement whose plant table references are the
    placeholders ``sources``; ``columns``: the names their rows have), or None when it
    does not split. Two references split only when one SELECT joins them on ``sym``: each
    node joins its own partitions of both, as a kdb+ gateway runs an ``aj`` per sym."""
    if not 1 <= len(sources) <= 2 or len(set(sources)) != len(sources):
        return None
    refs = [t for t in ast.find_all(exp.Table) if t.name in sources]
    if len(refs) != len(sources):
        return None
    selects = [_reading_select(r) for r in refs]
    select = selects[0]
    if select is None or any(s is not select for s in selects) or not _plain(select, len(sources)):
        return None
    tree = ast.copy()
    select = _reading_select(next(t for t in tree.find_all(exp.Table) if t.name in sources))
    assert select is not None
    aliases = {e.alias: e.this for e in select.expressions if isinstance(e, exp.Alias)}
    keys = _keys(select, aliases, columns)
    if keys is None:
        return None
    aggregates = _aggregates(select)
    if aggregates is None or not (aggregates or select.args.get("group")):
        return None
    if not _aliases_safe(select, aliases, columns, aggregates):
        return None

    # the partial: FROM and WHERE as written, the keys, a state per aggregate
    partial = select.copy()
    for arg in ("having", "order", "limit", "offset"):
        partial.set(arg, None)
    states = [_state(a) for a in aggregates]
    partial.set("expressions", [exp.alias_(k.copy(), KEY.format(i), quoted=True) for i, k in enumerate(keys)] +
                [exp.alias_(exp.Var(this=f"CAST({s.this} AS String)"), STATE.format(j), quoted=True)
                 for j, s in enumerate(states)])
    partial.set("group", exp.Group(expressions=[k.copy() for k in keys]) if keys else None)

    probe = select.copy()
    for arg in ("where", "group", "having", "order", "limit", "offset"):
        probe.set(arg, None)
    probe.set("expressions", [exp.alias_(exp.Anonymous(this="toTypeName", expressions=[s.copy()]), f"t{j}")
                              for j, s in enumerate(states)] +
              [exp.alias_(exp.Anonymous(this="toTypeName", expressions=[
                  exp.Anonymous(this="any", expressions=[k.copy()])]), f"k{i}") for i, k in enumerate(keys)]
              or [exp.Literal.number(1)])
    names = select.copy()
    names.set("limit", exp.Limit(expression=exp.Literal.number(0)))
    names.set("offset", None)

    # the final: the same SELECT over the partials, merging
    for j, agg in enumerate(aggregates):
        agg.replace(exp.column(MERGED.format(j)))
    unnamed = []
    for i, item in enumerate(list(select.expressions)):
        target = item.this if isinstance(item, exp.Alias) else item
        replaced = _replace_keys(target, keys)
        if isinstance(item, exp.Alias):
            item.set("this", replaced)
        else:
            unnamed.append(i)
            select.expressions[i] = exp.alias_(replaced, f"__tickplant_name_{i}__")
    for arg in ("having", "order", "limit"):  # LIMIT n BY keys too
        node = select.args.get(arg)
        if node is not None:
            select.set(arg, _replace_keys(node, keys))
    outputs = {e.alias for e in select.expressions if isinstance(e, exp.Alias)}
    for part in [*select.expressions, *(select.args.get(a) for a in ("having", "order", "limit"))]:
        for col in (part.find_all(exp.Column) if part is not None else ()):
            if col.name.startswith("__tickplant_"):
                continue
            if col.table or col.name not in outputs:
                return None  # a bare column that is not a key: the unsplit statement decides
    select.set("where", None)
    select.set("joins", None)
    select.set("from_" if "from_" in select.args else "from", exp.From(this=exp.Table(this=exp.to_identifier(partials))))
    select.set("group", exp.Group(expressions=[exp.column(KEY.format(i), quoted=True) for i in range(len(keys))])
               if keys else None)
    return Split(tuple(sources), partials, render(partial), render(tree), render(probe), render(names),
                 len(aggregates), len(keys), tuple(unnamed))


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _reading_select(table: exp.Table) -> exp.Select | None:
    """The SELECT whose FROM (or JOIN) reads ``table``, looking through sub-queries that
    pass its rows through (the entitlement fence, ``(SELECT cols FROM t WHERE ...)``): they
    stay in the FROM item, which the partial runs as written."""
    item: exp.Expression = table
    select = table.parent_select
    while select is not None and _passes_through(select):
        wrapper = select.parent
        if not isinstance(wrapper, exp.Subquery):
            return None
        item, select = wrapper, wrapper.parent_select
    if select is None or not isinstance(item.parent, exp.From | exp.Join):
        return None
    return select


def _passes_through(select: exp.Select) -> bool:
    """Only picks (or computes) columns of each row of its one source and filters rows."""
    if any(v for k, v in select.args.items()
           if k not in ("expressions", "from", "from_", "where", "limit") and v):
        return False
    if select.args.get("limit") is not None and not is_fence(select):
        return False
    return not _has_aggregate(select) and not any(e.find(exp.Window, exp.Select) for e in select.expressions)


def _plain(select: exp.Select, sources: int) -> bool:
    """No clause the split does not know, nothing read but the plant tables, and a join
    only of the two on equal syms."""
    joins = select.args.get("joins") or []
    if any(v for k, v in select.args.items() if k not in _SELECT_ARGS and k != "joins" and v):
        return False
    if len(joins) != sources - 1 or (joins and not _on_syms(select, joins[0])):
        return False
    group = select.args.get("group")
    if group is not None and any(v for k, v in group.args.items() if k != "expressions" and v):
        return False  # ROLLUP, CUBE, GROUPING SETS, WITH TOTALS
    for part in [*select.expressions, select.args.get("where"), select.args.get("having"),
                 select.args.get("order"), group]:
        if part is not None and (part.find(exp.Select, exp.Subquery, exp.Window)
                                 or isinstance(part, exp.Star)):
            return False
    return True


def _on_syms(select: exp.Select, join: exp.Join) -> bool:
    """Whether the join's ON has ``a.sym = b.sym`` as a conjunct, ``a`` and ``b`` the two
    sides: then no row of one partition meets a row of another."""
    source = select.args.get("from_") or select.args.get("from")
    sides = {source.this.alias_or_name if source is not None else None, join.this.alias_or_name}
    if join.args.get("using") or None in sides or len(sides) != 2:
        return False
    on = join.args.get("on")
    conjuncts = list(on.flatten()) if isinstance(on, exp.And) else [on] if on is not None else []
    for c in conjuncts:
        if isinstance(c, exp.EQ) and all(isinstance(x, exp.Column) and x.name == "sym" for x in (c.this, c.expression)):
            if {c.this.table, c.expression.table} == sides:
                return True
    return False


def _is_aggregate(node: exp.Expression) -> bool:
    if not isinstance(node, exp.Func):
        return False
    name = function_name(node)
    found = function_catalog().resolve(name) if name else None
    return found is not None and found.kind == "aggregate"


def _has_aggregate(select: exp.Select) -> bool:
    return any(_is_aggregate(n) for e in select.expressions for n in e.walk())


def _aggregates(select: exp.Select) -> list[exp.Expression] | None:
    """The outermost aggregate calls of the SELECT list, HAVING and ORDER BY; None if one
    cannot be split (DISTINCT, a state or merge of the user's own, one inside another)."""
    found: list[exp.Expression] = []
    for part in [*select.expressions, select.args.get("having"), select.args.get("order")]:
        if part is None:
            continue
        for node in part.walk():
            if not _is_aggregate(node):
                continue
            if any(_is_aggregate(a) for a in node.walk() if a is not node):
                return None
            if node.find(exp.Distinct) or re.search(r"(State|Merge)\w*$", function_name(node) or ""):
                return None
            found.append(node)
    where = select.args.get("where")
    if where is not None and any(_is_aggregate(n) for n in where.walk()):
        return None
    return found


def _keys(select: exp.Select, aliases: dict[str, exp.Expression], columns: set[str]) -> list[exp.Expression] | None:
    """GROUP BY's expressions, positions and aliases resolved to what they stand for."""
    group = select.args.get("group")
    keys = []
    for key in (group.expressions if group is not None else []):
        if isinstance(key, exp.Literal) and not key.is_string:
            index = int(key.this) - 1
            if not 0 <= index < len(select.expressions):
                return None
            key = select.expressions[index].unalias()
        elif isinstance(key, exp.Column) and not key.table and key.name in aliases:
            key = aliases[key.name]  # ClickHouse prefers an alias to a column of the same name
        if any(_is_aggregate(n) for n in key.walk()):
            return None
        keys.append(key.copy())
    return keys


def _aliases_safe(select: exp.Select, aliases: dict[str, exp.Expression], columns: set[str],
                  aggregates: list[exp.Expression]) -> bool:
    """ClickHouse lets an alias stand for its expression anywhere in the SELECT; the partial
    keeps no alias, so none may be used where the partial runs (WHERE, the keys, an
    aggregate's arguments) unless it is a column's own name used in its own definition."""
    used = [select.args.get("where"), select.args.get("group"), *aggregates]
    for part in used:
        for col in (part.find_all(exp.Column) if part is not None else ()):
            if col.table or col.name not in aliases:
                continue
            if part is select.args.get("group") and col.parent is part:
                continue  # GROUP BY <alias>: resolved by _keys
            if col.name not in columns:
                return False
            owner = aliases[col.name]
            if not any(col is n for n in owner.walk()):
                return False  # a shadowing alias used outside its own definition
    return True


def _state(aggregate: exp.Expression) -> exp.Expression:
    """``f(args)`` as ``fState(args)`` (``f(params)(args)`` as ``fState(params)(args)``)."""
    text = aggregate.sql(dialect=DIALECT)
    name = function_name(aggregate) or ""
    if not text.startswith(name + "("):
        raise ValueError(f"cannot form the state of {text!r}")
    return exp.Var(this=f"{name}State{text[len(name):]}")  # SQL the gateway wrote, put in as it is


def _replace_keys(node: exp.Expression, keys: list[exp.Expression]) -> exp.Expression:
    """``node`` with every sub-expression equal to a key replaced by that key's column."""
    texts = {_key_text(k): i for i, k in enumerate(keys)}

    def swap(n: exp.Expression) -> exp.Expression:
        i = texts.get(_key_text(n))
        return exp.column(KEY.format(i), quoted=True) if i is not None else n

    return node.transform(swap, copy=False)


def _key_text(node: exp.Expression) -> str:
    if isinstance(node, exp.Column):
        return f"{node.table}.{node.name}"  # t.sym and q.sym are not one key (an outer join)
    return node.sql(dialect=DIALECT)
