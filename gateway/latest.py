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

Most of them, the named ``last`` first (``SELECT * ... ORDER BY sym, time DESC
LIMIT 1 BY sym``, kdb+'s ``select by sym``), ask for those rows as they are:
some of their columns, each ``argMax`` a column's value by another name. When
nothing in the statement but the day and the syms picks rows and one day alone
is read, that day's latest rows (the RDB's, or a history day's file of them)
are the answer (``as_fetched``, ``latest_answer``), in the names, types and
order the engine gives, and no statement goes through ClickHouse, whose fixed
cost per statement is most of such a small answer's time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from gateway.plan import exact_keys
from gateway.sql import function_name, is_fence
from ingest.seq import SEQ

_PLAIN_SELECT = {"expressions", "from_", "where", "group", "order", "limit"}

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


@dataclass(frozen=True)
class Fetched:
    """One column of an ``as_fetched`` answer: its name, the latest rows' column it is (or
    ``date``), and whether a string comes back as ClickHouse answers a low-cardinality
    column read as it is (a dictionary), or plain, as an aggregate's value is."""

    name: str
    column: str
    dictionary: bool = True


def as_fetched(ast: exp.Expression, source: str, columns: Sequence[str]) -> tuple[Fetched, ...] | None:
    """The answer's columns if a statement ``latest_only`` accepts answers with the latest
    rows as they are, else None: read straight from the table (not through an entitlement's
    fence: the user may read it whole), with a WHERE that ``exact_keys`` accepts, each output
    a column (``*`` is ``columns`` and ``date``; ``EXCEPT (seq)`` is allowed) or, grouped by
    sym, an aliased ``argMax`` or ``max(time)``, and ordered by sym (or in no order). Any
    clause or modifier past those (a qualified name, WITH ROLLUP, WITH FILL, WITH TIES, a
    LIMIT on groups) leaves the statement to run."""
    if not isinstance(ast, exp.Select) or _extra(ast, _PLAIN_SELECT):
        return None
    refs = [t for t in ast.find_all(exp.Table) if t.name == source]
    if len(refs) != 1 or refs[0].parent_select is not ast or not exact_keys(ast.args.get("where")):
        return None
    group, order, limit = ast.args.get("group"), ast.args.get("order"), ast.args.get("limit")
    order_items = order.expressions if order is not None else []
    if any(c.table for c in ast.find_all(exp.Column)) or (group is not None and _extra(group, {"expressions"})) \
            or (limit is not None and _extra(limit, {"expression", "expressions"})) \
            or any(_extra(o, {"this", "desc", "nulls_first"}) for o in order_items):
        return None
    known = {*columns, SEQ, "date"}
    if group is not None and limit is not None:  # some of the syms
        return None
    out = _grouped_outputs(ast, known) if group is not None else _row_outputs(ast, columns, known)
    if out is None or len({o.name for o in out}) != len(out):
        return None
    if any(o.name in known and o.name != o.column for o in out):  # an alias naming another column
        return None
    ordered = [(o.this.name if isinstance(o.this, exp.Column) else None, bool(o.args.get("desc")))
               for o in order_items]
    if group is not None:  # one day: by sym, or by date and sym, each a key
        keys = {k.name for k in group.expressions if isinstance(k, exp.Column)}
        by_sym = not ordered or ("sym", False) in ordered and {n for n, _ in ordered} <= keys
    else:  # LIMIT 1 BY sym's own order (``_limit_one_by_sym``), sym first
        by_sym = bool(ordered) and ordered[0] == ("sym", False)
    return tuple(out) if by_sym else None


def _extra(node: exp.Expression, allowed: set[str]) -> bool:
    return bool({k for k, v in node.args.items() if v} - allowed)


def _row_outputs(ast: exp.Select, columns: Sequence[str], known: set[str]) -> list[Fetched] | None:
    if not _limit_one_by_sym(ast):
        return None
    if len(ast.expressions) == 1 and isinstance(ast.expressions[0], exp.Star):
        star = ast.expressions[0]
        excluded = star.args.get("except_") or []
        if _extra(star, {"except_"}) or any(not isinstance(c, exp.Column) or c.name != SEQ for c in excluded):
            return None
        if not excluded and any(c.name == SEQ for c in ast.find_all(exp.Column)):
            return None  # ``*`` has ``seq`` then (gateway.engine.Engine.plan)
        return [*(Fetched(c, c) for c in columns), Fetched("date", "date")]
    out = []
    for item in ast.expressions:
        node = item.unalias()
        if not isinstance(node, exp.Column) or node.name not in known:
            return None
        out.append(Fetched(item.alias_or_name, node.name))
    return out


def _grouped_outputs(ast: exp.Select, known: set[str]) -> list[Fetched] | None:
    out = []
    for item in ast.expressions:
        node = item.unalias()
        if isinstance(node, exp.Column) and node.name in _KEYS:
            out.append(Fetched(item.alias_or_name, node.name))
            continue
        if not isinstance(item, exp.Alias) or not isinstance(node, exp.Func):  # a value needs its name
            return None
        args = list(node.iter_expressions())
        value = args[0] if args else None
        if len(args) != (1 if function_name(node) == "max" else 2) or not isinstance(value, exp.Column) \
                or value.name not in known:
            return None
        # a name that is a column's is read as this value wherever else the column is named
        if item.alias in known and sum(c.name == item.alias for c in ast.find_all(exp.Column)) > 1:
            return None
        out.append(Fetched(item.alias, value.name, dictionary=False))
    return out


def latest_answer(rows: pa.Table, day: dt.date, schema: pa.Schema, outputs: Sequence[Fetched],
                  syms: Collection[str] | None = None, dictionaries: bool = True) -> pa.Table | None:
    """An ``as_fetched`` statement's answer from one day's latest rows (of ``syms`` only, when
    given): each output typed as ClickHouse answers it, ordered by sym. ``dictionaries``:
    a low-cardinality string comes back as a dictionary (today's rows; the HDB's files are
    read as plain strings, sinks.hdb.FILE_STRINGS). None when an output's column is not
    among the rows (a day written before it existed), or when a sym comes twice (two copies
    of a partition read across a handover): the statement decides then."""
    if any(o.column != "date" and o.column not in rows.column_names for o in outputs):
        return None
    names = rows.column("sym").cast(pa.string())
    if syms is not None:
        keep = pc.is_in(names, pa.array(sorted(syms), pa.string()))
        rows, names = rows.filter(keep), names.filter(keep)
    if pc.count_distinct(names).as_py() != rows.num_rows:
        return None
    order = pc.sort_indices(names)
    arrays, fields = [], []
    for out in outputs:
        if out.column == "date":
            arrays.append(pa.repeat(pa.scalar(day, pa.date32()), rows.num_rows))
            fields.append(pa.field(out.name, pa.date32(), nullable=False))
            continue
        want = schema.field(out.column).with_name(out.name)
        column = rows.column(out.column).take(order)
        if pa.types.is_string(want.type) or pa.types.is_dictionary(column.type):
            column = column.cast(pa.string()).combine_chunks()
            if out.dictionary and dictionaries:
                column = column.dictionary_encode()
            want = want.with_type(column.type)
        arrays.append(column.cast(want.type))
        fields.append(want)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
