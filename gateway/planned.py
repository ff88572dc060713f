"""A statement ready to run (``Plan``: its SQL with a placeholder per source, what each
source needs) and what running it gave (``Answer``): the gateway engine's records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from gateway.latest import Fetched
from gateway.plan import TableNeed
from gateway.pushdown import Split


@dataclass
class Answer:
    table: pa.Table
    elapsed: float
    touched: dict[str, Any] = field(default_factory=dict)  # table -> HDB days / RDB days and replica
    sql: str = ""  # what ClickHouse ran
    timing: dict[str, float] = field(default_factory=dict)  # seconds per stage (Server-Timing)
    tables: dict[str, pa.Table] = field(default_factory=dict)  # the RDB rows ``sql`` reads as Python(name), when kept
    external: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)  # ... or as a server's external data
    split: bool = False  # aggregated where the rows are, the gateway merging (gateway/pushdown.py)


@dataclass(frozen=True)
class PlannedRef:
    """One reference to a plant table in a plan: its placeholder in ``Plan.sql``, what it
    needs, and the key that shares one fetch between references needing the same."""

    placeholder: str
    need: TableNeed
    columns: list[str] | None
    key: tuple


@dataclass(frozen=True)
class Plan:
    """A statement ready to run: its ClickHouse SQL with a placeholder per source."""

    sql: str
    refs: tuple[PlannedRef, ...]
    query_log: tuple[str, ...] = ()  # placeholders of the query log's references
    split: Split | None = None  # the aggregate run where the rows are (gateway/pushdown.py)
    latest: bool = False  # only each sym's latest real-time row is needed (gateway/latest.py)
    as_fetched: tuple[Fetched, ...] | None = None  # ... and those rows, as they are, the answer's columns
