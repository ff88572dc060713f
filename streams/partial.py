"""The RDB's rows as ClickHouse reads them in place, and a statement's partial run over them.

The gateway splits an aggregate over today's rows (gateway/pushdown.py): each
RDB node runs the partial (the statement's FROM, WHERE and GROUP BY, with
aggregate states for results) over the rows of the partitions the gateway
routed to it, in its own embedded chDB, and answers with the states, a few
rows per group, instead of every row. The rows are typed exactly as the
gateway types them for its own engine and as the HDB's files are read, so a
state made here merges with one made over the HDB.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import pyarrow as pa

from sinks.hdb import clickhouse_structure, pool, quote
from streams.query import batched

_ROW_TABLES = itertools.count()  # names of in-memory row tables (unique per process)
# states are bytes: as Arrow binary, never read as (maybe invalid) UTF-8 text
PARTIAL_SETTINGS = {"output_format_arrow_string_as_string": 0}


def typed_source(schema: pa.Schema, cols: list[str], day: dt.date, rows: pa.Table,
                 tables: dict[str, pa.Table]) -> str:
    """One day's rows as chDB reads them in place (``Python(name)``, the table added to
    ``tables``), typed as the HDB's files are (strings low-cardinality, as a file's
    structure would say), with ``date`` a constant: no column to build or copy."""
    name = f"__tickplant_rows_{next(_ROW_TABLES)}"
    tables[name] = rows
    typed = []
    for c in cols:
        want = schema.field(c)
        got = rows.schema.field(c)
        ch_type = clickhouse_structure(pa.schema([want])).split(" ", 1)[1]
        if pa.types.is_string(want.type) or got.type != want.type or got.nullable != want.nullable:
            typed.append(f"CAST(`{c}`, {quote(ch_type)}) AS `{c}`")
        else:
            typed.append(f"`{c}`")
    return f"SELECT {', '.join(typed)}, toDate({quote(day.isoformat())}) AS date FROM Python({name})"


def typed_select(schema: pa.Schema, cols: list[str], source: str) -> str:
    """``source`` (the HDB's, whose column types follow its files: a column added since
    reads as Nullable) with every column cast as ``typed_source`` types the RDB's rows, so
    the aggregate states made over the two are alike, byte for byte."""
    typed = [f"CAST(`{c}`, {quote(clickhouse_structure(pa.schema([schema.field(c)])).split(' ', 1)[1])}) AS `{c}`"
             for c in cols]
    return f"SELECT {', '.join(typed)}, date FROM {source}"


@dataclass(frozen=True)
class FinalLimits:
    """The limits of a statement answered whole on the node (the gateway's for its own
    engine): at most ``max_rows`` rows and ``max_bytes`` bytes are kept, the gateway
    refuses an answer that reaches either."""

    max_rows: int
    max_bytes: int


def run_partial(sql: str, inputs: list[tuple[str, pa.Table, pa.Schema]], day: dt.date,
                deadline: float | None, max_memory_mb: int, final: FinalLimits | None = None) -> pa.Table:
    """``sql`` (a partial, reading each input's placeholder once) over each input's rows
    (placeholder, rows, the table's schema) of ``day``. With ``final``, ``sql`` is the whole
    statement, answered as the gateway's engine answers it (this node holds every row it
    reads: the gateway has nothing to merge)."""
    tables: dict[str, pa.Table] = {}
    for placeholder, rows, schema in inputs:
        if sql.count(placeholder) != 1:
            raise ValueError("the partial statement must read each of its sources exactly once")
        # one batch, not one per stored chunk: chDB's Python() pays per batch it reads
        sql = sql.replace(placeholder, f"({typed_source(schema, rows.schema.names, day, batched(rows), tables)})")
    settings: dict[str, int | str] = {"max_memory_usage": max_memory_mb << 20}
    if final is None:
        settings.update(PARTIAL_SETTINGS)
    else:
        settings.update(max_result_rows=final.max_rows, max_result_bytes=final.max_bytes,
                        result_overflow_mode="break")
    return pool("chdb://").run(sql, settings, tables=tables, deadline=deadline)
