"""Statements that need only each sym's latest row of today: answered from the RDB's ``last``.

kdb+ keeps a ``latest`` table beside the RDB for ``select by sym from trade``;
the RDB here keeps each sym's last row the same way (``/rdb/v1/{table}/last``,
streams/shard.py). The named ``last`` query uses it; so do the SQL shapes
that mean the same thing, whatever their spelling:

- ``... ORDER BY sym, time DESC LIMIT 1 BY sym`` (no GROUP BY);
- ``GROUP BY sym`` (or ``date, sym``) with only ``argMax(x, time)`` and
  ``max(time)`` for aggregates;

each with a WHERE, if any, on ``date`` and ``sym`` only: a filter on other
columns could drop a sym's latest row and keep an earlier one, which the
latest rows alone cannot answer. Read through the entitlement fence, whose
row filter counts as part of the WHERE. History is read whole as ever; only
today's fetch is narrowed.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.sql import function_name, is_fence

_KEYS = {"sym", "date"}
_LATEST_AGGREGATES = {"argMax", "max"}


def latest_only(ast: exp.Expression, source: str) -> bool:
    """Whether the statement reading the placeholder ``source`` (its one plant table
    reference) needs only each sym's latest row of a real-time day."""
    refs = [t for t in ast.find_all(exp.Table) if t.name == source]
    if len(refs) != 1 or not isinstance(refs[0].parent, exp.From):
        return False
    select = refs[0].parent_select
    while select is not None and is_fence(select) and not select.args.get("group"):
        if not _on_keys(select.args.get("where")):
            return False
        wrapper = select.parent
        if not isinstance(wrapper, exp.Subquery) or not isinstance(wrapper.parent, exp.From):
            return False
        select = wrapper.parent_select
    if select is None or select.args.get("joins") or select.args.get("distinct") or \
            not _on_keys(select.args.get("where")) or select.args.get("having"):
        return False
    for part in [*select.expressions, *(select.args.get(a) for a in ("where", "group", "order", "limit"))]:
        if part is not None and part.find(exp.Window, exp.Select, exp.Subquery):
            return False
    group = select.args.get("group")
    if group is not None:
        return _latest_groups(select, group)
    return _limit_one_by_sym(select)


def _on_keys(where: exp.Expression | None) -> bool:
    return where is None or all(c.name in _KEYS and not c.table for c in where.find_all(exp.Column))


def _latest_groups(select: exp.Select, group: exp.Group) -> bool:
    keys = {k.name for k in group.expressions if isinstance(k, exp.Column)}
    if len(keys) != len(group.expressions) or "sym" not in keys or not keys <= _KEYS:
        return False
    for item in select.expressions:
        node = item.unalias()
        if isinstance(node, exp.Column) and node.name in keys:
            continue
        if not isinstance(node, exp.Func) or function_name(node) not in _LATEST_AGGREGATES:
            return False
        args = [a for a in node.iter_expressions()]
        by = args[-1] if args else None
        if not (isinstance(by, exp.Column) and by.name == "time") or \
                (function_name(node) == "max" and len(args) != 1):
            return False
        if any(not isinstance(c, exp.Column) for c in args):
            return False
    return True


def _limit_one_by_sym(select: exp.Select) -> bool:
    limit = select.args.get("limit")
    order = select.args.get("order")
    if not isinstance(limit, exp.Limit) or order is None or select.args.get("offset"):
        return False
    by = limit.args.get("expressions") or []
    if not (isinstance(limit.expression, exp.Literal) and limit.expression.this == "1"):
        return False
    if [b.name for b in by if isinstance(b, exp.Column)] != ["sym"] or len(by) != 1:
        return False
    ordered = order.expressions
    times = [o for o in ordered if isinstance(o.this, exp.Column) and o.this.name == "time"]
    return (len(times) == 1 and bool(times[0].args.get("desc"))
            and all(isinstance(o.this, exp.Column) and o.this.name in {"sym", "date", "time"} for o in ordered))
