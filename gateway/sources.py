"""The sources a plan's placeholders become: the FROM-able union of a table's HDB days and
its RDB rows, or a split's partials. Embedded chDB reads the RDB rows in place (``tables``:
its ``Python(name)`` table function); a ClickHouse server gets them as external data
(``external``: an Arrow stream per table, a temporary table on the server for that query).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Collection, Sequence
from typing import Any

import pyarrow as pa

from gateway import pushdown
from gateway.planned import PlannedRef
from gateway.pushdown import Split
from ingest.schemas import SchemaCatalog
from sinks.hdb import HdbQuery, clickhouse_structure
from streams.partial import typed_select, typed_source
from streams.query import batched, to_ipc

_ROW_TABLES = itertools.count()  # names of the RDB rows' in-memory tables (unique per process)


def merged_sources(ref: PlannedRef, split: Split, fetched: dict[tuple, Any], in_memory: bool,
                   merges: tuple[str, list[str]], catalog: SchemaCatalog, hdb: HdbQuery
                   ) -> tuple[str, dict[str, pa.Table], dict[str, tuple[bytes, str, str]]]:
    """The split's final SQL over the nodes' partials (read in place by embedded chDB,
    else sent to the server as external data) and the HDB days' partial."""
    parts, hdb_days, _ = fetched[ref.key]
    final, key_types = merges
    name = f"__tickplant_rows_{next(_ROW_TABLES)}"
    partials = pa.concat_tables([p for _, p in parts], promote_options="default")
    tables: dict[str, pa.Table] = {}
    external: dict[str, tuple[bytes, str, str]] = {}
    if in_memory:
        tables[name] = partials
        sources = [f"Python({name})"]
    else:
        structure = ", ".join([f"`{pushdown.KEY.format(i)}` {t}" for i, t in enumerate(key_types)] +
                              [f"`{pushdown.STATE.format(j)}` String" for j in range(split.aggregates)])
        external[name] = (bytes(to_ipc(partials)), "ArrowStream", structure)
        sources = [name]
    if hdb_days:
        cols = list(ref.columns) if ref.columns else catalog[ref.need.table].columns
        schema = catalog[ref.need.table].stored_schema
        history = typed_select(schema, cols, hdb.source_days(ref.need.table, hdb_days, cols))
        sources.insert(0, f"({split.partial.replace(ref.placeholder, f'({history})')})")
    union = pushdown.union_sql(sources, key_types, split.aggregates)
    return final.replace(split.partials, f"({union})"), tables, external


def table_source(catalog: SchemaCatalog, hdb_query: HdbQuery, table: str, columns: Sequence[str] | None,
                     hdb_days: list[dt.date], parts: list[tuple[dt.date, pa.Table]], tables: dict[str, pa.Table],
                 external: dict[str, tuple[bytes, str, str]], in_memory: bool,
                 latest_days: Collection[dt.date] = ()) -> str:
    """The FROM-able union of the HDB days and the RDB rows: read in place by embedded
    chDB (added to ``tables``), else sent to the server as external data (``external``).
    Of the HDB days in ``latest_days``, only each sym's latest row is read (sinks.latest)."""
    schema = catalog[table].stored_schema
    cols = list(columns) if columns else catalog[table].columns  # seq only when named
    hdb = hdb_query.source_days(table, hdb_days, cols, latest_days)
    if not parts:
        return hdb
    select = ", ".join(f"`{c}`" for c in cols)
    if in_memory:
        rdb = " UNION ALL ".join(typed_source(schema, cols, day, batched(rows.select(cols)), tables)
                                 for day, rows in parts)
    else:
        rows = pa.concat_tables([r.select(cols).append_column("date", pa.repeat(pa.scalar(d, pa.date32()), r.num_rows))
                                 for d, r in parts])
        name = f"__tickplant_rows_{next(_ROW_TABLES)}"
        structure = clickhouse_structure(pa.schema([schema.field(c) for c in cols])) + ", `date` Date"
        external[name] = (bytes(to_ipc(rows)), "ArrowStream", structure)
        rdb = f"SELECT {select}, date FROM {name}"
    if not hdb_days:
        return f"({rdb})"
    return f"(SELECT {select}, date FROM {hdb} UNION ALL {rdb})"
