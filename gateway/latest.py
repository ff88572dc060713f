"""Statements that need only each sym's latest row of a day: the RDB's ``last``, the HDB's latest file.

kdb+ keeps a ``latest`` table beside the RDB for ``select by sym from trade``;
the RDB here keeps each sym's last row the same way (``/rdb/v1/{table}/last``,
streams/shard.py). The named ``last`` query uses it; so do the SQL shapes
that mean the same thing, whatever their spelling:

- ``... ORDER BY sym, time DESC LIMIT 1 BY sym`` (no GROUP BY), or
  ``time DESC, seq DESC`` (kdb+'s order on equal times, ingest.seq);
- ``GROUP BY sym`` (or ``date, sym``) with only ``argMax(x, time)``,
  ``argMax(x, (time, seq))`` and ``max(time)`` for aggregates;

each with a WHERE, if any, on ``date`` and ``sym`` only: a filter on other
columns could drop a sym's latest row and keep an earlier one, which the
latest rows alone cannot answer. Read through the entitlement fence, whose
row filter counts as part of the WHERE, and through a column grant's
projection. Each of these is a function of each
(date, sym)'s latest row alone (the latest of several days is the latest of
each day's latest), so the gateway reads the RDB's latest rows for a
real-time day and, for a history day, the file of each sym's latest row the
write-down keeps beside the day (sinks.latest; a day written before it
existed is read whole).

With ``argMax(x, time)`` and rows sharing a sym's latest time, a whole read
takes any one of them; the latest rows give the last published, the answer
``argMax(x, (time, seq))`` gives either way.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.sql import function_name, is_fence
from ingest.seq import SEQ

_KEYS = {"sym", "date"}
_LATEST_AGGREGATES = {"argMax", "max"}


def latest_only(ast: exp.Expression, source: str) -> bool:
    """Whether the statement reading the placeholder ``source`` (its one plant table
    reference) needs only each sym's latest row of a real-time day."""
    refs = [t for t in ast.find_all(exp.Table) if t.name == source]
    if len(refs) != 1 or not isinstance(refs[0].parent, exp.From):
        return False
    select = refs[0].parent_select
    while select is not None and (is_fence(select) and not select.args.get("group") or _projection(select)):
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


def _projection(select: exp.Select) -> bool:
    """A sub-SELECT that only picks columns by name (a column grant's source, policy.py):
    every row as it is, so transparent to the latest-row question."""
    if any(select.args.get(a) for a in ("where", "group", "having", "order", "limit", "offset", "joins",
                                        "distinct", "prewhere", "qualify", "windows")):
        return False
    return bool(select.expressions) and all(isinstance(e, exp.Column) and not e.table for e in select.expressions)


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
        if not _latest_key(by) or (function_name(node) == "max" and
                                   (len(args) != 1 or not isinstance(by, exp.Column))):
            return False
        if any(not isinstance(c, exp.Column) for c in args[:-1]):
            return False
    return True


def _latest_key(by: exp.Expr | None) -> bool:
    """``time``, or ``(time, seq)``: kdb+'s order, the last published of a time (ingest.seq)."""
    if isinstance(by, exp.Paren):
        by = by.this
    if isinstance(by, exp.Tuple):
        names = [c.name if isinstance(c, exp.Column) and not c.table else None for c in by.expressions]
        return names == ["time", SEQ]
    return isinstance(by, exp.Column) and by.name == "time"


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
    if not all(isinstance(o.this, exp.Column) and o.this.name in {"sym", "date", "time", SEQ} for o in ordered):
        return False
    # by time descending, then (if at all) by seq descending: the last published of the latest time
    ranks = [o for o in ordered if o.this.name in {"time", SEQ}]
    return ([o.this.name for o in ranks] in (["time"], ["time", SEQ]) and all(o.args.get("desc") for o in ranks))
