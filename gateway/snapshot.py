"""The Query Manager's default snapshot: the RDB's last row per sym of a table, or the CEP
nodes' view of a real-time engine's output (each answers for the syms it holds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ingest.schemas import SchemaCatalog
from tickplant import httpclient
from tickplant.config import Settings

SnapshotFn = Callable[[str, list[str]], list[dict[str, Any]]]


def _arrow_rows(table: Any) -> list[dict[str, Any]]:
    """Arrow rows as the log's rows: timestamps as int ns."""

    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("ns", tz=column.type.tz)).cast(pa.int64())
        columns[name] = column
    return pa.table(columns).to_pylist() if columns else []


def _cep_rows(payload: Any) -> list[dict[str, Any]]:
    """Rows of a CEP view, tolerant of its shape: {"analytics": {sym: {...}}}, {"bars": [...]},
    {sym: {...}} or [...]; of bars, the latest closed one per sym (the topic carries closed bars)."""
    if isinstance(payload, dict):
        for wrapper in ("analytics", "bars", "rows", "data"):
            if isinstance(payload.get(wrapper), dict | list):
                payload = payload[wrapper]
                break
    if isinstance(payload, list):
        latest: dict[Any, dict[str, Any]] = {}
        for row in payload:
            if isinstance(row, dict) and not row.get("is_open"):
                if row.get("sym") not in latest or row.get("time", 0) >= latest[row.get("sym")].get("time", 0):
                    latest[row.get("sym")] = {k: v for k, v in row.items() if k != "is_open"}
        return list(latest.values())
    if isinstance(payload, dict):
        return [{"sym": sym, **row} if "sym" not in row else row
                for sym, row in payload.items() if isinstance(row, dict)]
    return []


def default_snapshot(settings: Settings, catalog: SchemaCatalog, timeout: float = 5.0) -> SnapshotFn:
    """Latest row per sym: an RDB worker's ``last`` view for a table (forwarded to the syms'
    owners by the worker); for the ``analytics`` and ``bars`` sources, every CEP node's view
    (each answers for the syms it holds); for other derived sources none (updates only)."""
    from ingest.metadata import read_metadata
    from streams.client import RdbClient

    def snapshot(source: str, syms: list[str]) -> list[dict[str, Any]]:
        nodes = read_metadata(settings)
        if source in catalog.tables:
            urls = [n.url for n in nodes.values() if n.kind == "rdb" and n.url]
            if not urls:
                return []
            return _arrow_rows(RdbClient(urls[0], timeout=timeout, settings=settings).last(source, syms or None))
        urls = [n.url for n in nodes.values() if n.kind == "cep" and n.url]
        if source not in ("analytics", "bars") or not urls:
            return []
        rows: list[dict[str, Any]] = []
        for url in urls:
            rows.extend(_cep_rows(httpclient.get_json(f"{url.rstrip('/')}/cep/v1/{source}",
                                                      params={"syms": ",".join(syms)}, settings=settings,
                                                      timeout=timeout)))
        return rows

    return snapshot
