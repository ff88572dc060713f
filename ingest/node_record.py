"""A node's record on the ``_tp.metadata`` topic, typed: one dataclass per kind of node.

Every node announces what it is and holds (ingest/metadata.py publishes and reads the
topic); the gateway routes by the RDB records, the CEP and RDB workers find their peers,
``tickplant status`` and the scaler read them all. The JSON is spelled here only:
``encode_node`` and ``decode_node``. A record written before versions existed reads as
version 1; a newer version or a malformed record is a ``RecordError`` (one line), which
the readers log and skip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ingest.records import RecordError, check_version, json_object

NODE_VERSION = 1


@dataclass(frozen=True)
class DayHeld:
    """One trading day of one table in an RDB node: rows, their time range (ns), its status."""

    rows: int = 0
    first: int | None = None
    last: int | None = None
    status: str = ""


@dataclass(frozen=True)
class TableHeld:
    """What an RDB node holds of one table: its partitions, days, and the last offset applied in each."""

    partitions: tuple[int, ...] = ()
    dates: dict[str, DayHeld] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class NodeRecord:
    """What every node says: who it is, when it last said so, where it answers."""

    kind: ClassVar[str] = ""
    node: str
    updated: float = 0.0  # Unix seconds, the node's clock
    version: int = NODE_VERSION
    url: str = ""
    pid: int = 0
    rss: int = 0
    stale: bool = False  # not written: set by the reader when ``updated`` is old


@dataclass(frozen=True, kw_only=True)
class RdbRecord(NodeRecord):
    kind: ClassVar[str] = "rdb"
    replica: str = "a"
    memory_budget: int = 0
    cpu_s: float | None = None
    instance_id: str = ""
    leaving: bool = False
    inflight_queries: float = 0.0
    queries: int = 0
    open_date: str | None = None
    serving: bool = False
    catching_up: tuple[str, ...] = ()  # "table[partition]" still replaying
    tables: dict[str, TableHeld] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # counters for people (status), not for routing


@dataclass(frozen=True, kw_only=True)
class CepRecord(NodeRecord):
    kind: ClassVar[str] = "cep"
    engine: str = ""
    partitions: tuple[int, ...] = ()
    serving: bool = False
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> topic
    inputs: tuple[str, ...] = ()
    bar_seconds: float = 0.0
    analytics: tuple[str, ...] = ()
    open_date: str | None = None
    live_listeners: int = 0
    applied: dict[str, dict[int, int]] = field(default_factory=dict)  # table -> partition -> offset
    unopened: dict[str, str] = field(default_factory=dict)  # partition -> why its open failed (tried again)


@dataclass(frozen=True, kw_only=True)
class PdbRecord(NodeRecord):
    kind: ClassVar[str] = "pdb"
    host: str = ""
    partitions: tuple[str, ...] = ()  # "topic[partition]" captured
    next: dict[str, int] = field(default_factory=dict)  # "table[partition]" -> next offset it captures
    rows_captured: int = 0
    writing: str | None = None
    queued: int = 0


@dataclass(frozen=True, kw_only=True)
class GatewayRecord(NodeRecord):
    kind: ClassVar[str] = "gateway"
    load: dict[str, float] = field(default_factory=dict)


KINDS: dict[str, type[NodeRecord]] = {k.kind: k for k in (RdbRecord, CepRecord, PdbRecord, GatewayRecord)}


def encode_node(record: NodeRecord) -> bytes:
    return json.dumps(node_fields(record)).encode()


def node_fields(record: NodeRecord) -> dict[str, Any]:
    """The record as the JSON object on the topic (also what a node's status page shows)."""
    out: dict[str, Any] = {"kind": record.kind}
    for f in fields(record):
        if f.name in ("stale", "figures", "inflight_queries", "queries"):
            continue
        out[f.name] = getattr(record, f.name)
    if isinstance(record, RdbRecord):
        out["load"] = {"inflight_queries": record.inflight_queries, "queries": record.queries}
        out["catching_up"] = list(record.catching_up)
        out["tables"] = {t: {"partitions": list(h.partitions),
                             "dates": {d: vars(day) for d, day in h.dates.items()},
                             "applied": {str(p): o for p, o in h.applied.items()}}
                         for t, h in record.tables.items()}
        out.update({k: v for k, v in record.figures.items() if k not in out})
    elif isinstance(record, CepRecord):
        out["applied"] = {t: {str(p): o for p, o in parts.items()} for t, parts in record.applied.items()}
    for name, value in out.items():
        if isinstance(value, tuple):
            out[name] = list(value)
    return out


def decode_node(node: str, value: bytes, where: str) -> NodeRecord:
    """The record in ``value`` (keyed ``node`` on the topic); RecordError naming ``where``."""
    return node_from_fields(node, json_object(value, f"{where}: node {node!r}: a record"), where)


def node_from_fields(node: str, raw: Mapping[str, Any], where: str) -> NodeRecord:
    """A record from its JSON object's fields (what ``decode_node`` parsed, or what a node
    assembled for its status page)."""
    version = check_version(raw, NODE_VERSION, f"{where}: node {node!r}")
    kind = raw.get("kind", "rdb")  # the first RDB records said no kind
    cls = KINDS.get(kind)
    if cls is None:
        raise RecordError(f"{where}: node {node!r}: unknown kind {kind!r} ({', '.join(KINDS)} expected)")
    try:
        common: dict[str, Any] = {"node": node, "version": version, "updated": float(raw.get("updated", 0)),
                                  "url": str(raw.get("url") or ""), "pid": int(raw.get("pid") or 0),
                                  "rss": int(raw.get("rss") or 0)}
        if cls is RdbRecord:
            return _rdb(raw, common)
        if cls is CepRecord:
            return CepRecord(
                **common, engine=str(raw.get("engine") or ""), partitions=tuple(int(p) for p in raw.get("partitions", [])),
                serving=bool(raw.get("serving")), outputs={str(k): str(v) for k, v in (raw.get("outputs") or {}).items()},
                inputs=tuple(raw.get("inputs", [])), bar_seconds=float(raw.get("bar_seconds") or 0),
                analytics=tuple(raw.get("analytics", [])), open_date=raw.get("open_date"),
                live_listeners=int(raw.get("live_listeners") or 0),
                applied={str(t): {int(p): int(o) for p, o in parts.items() if o is not None}
                         for t, parts in (raw.get("applied") or {}).items()},
                unopened={str(p): str(why) for p, why in (raw.get("unopened") or {}).items()})
        if cls is PdbRecord:
            return PdbRecord(
                **common, host=str(raw.get("host") or ""), partitions=tuple(str(p) for p in raw.get("partitions", [])),
                next={str(k): int(v or 0) for k, v in (raw.get("next") or {}).items()},
                rows_captured=int(raw.get("rows_captured") or 0), writing=raw.get("writing"),
                queued=int(raw.get("queued") or 0))
        return GatewayRecord(**common, load={str(k): float(v) for k, v in (raw.get("load") or {}).items()})
    except (TypeError, ValueError, AttributeError) as exc:
        raise RecordError(f"{where}: node {node!r}: a malformed {kind} record ({exc})") from None


_RDB_TYPED = {"kind", "node", "version", "updated", "url", "pid", "rss", "replica", "memory_budget", "cpu_s",
              "instance_id", "leaving", "load", "open_date", "serving", "catching_up", "tables"}


def _rdb(raw: Mapping[str, Any], common: dict[str, Any]) -> RdbRecord:
    load = raw.get("load") or {}
    if not isinstance(load, dict):  # the first records said the load as one number
        load = {"inflight_queries": load}
    tables = {}
    for table, held in (raw.get("tables") or {}).items():
        dates = {str(d): DayHeld(int(day.get("rows") or 0), day.get("first"), day.get("last"), str(day.get("status") or ""))
                 for d, day in (held.get("dates") or {}).items()}
        applied = {int(p): int(o) for p, o in (held.get("applied") or {}).items() if o is not None}
        tables[str(table)] = TableHeld(tuple(int(p) for p in held.get("partitions", [])), dates, applied)
    cpu = raw.get("cpu_s")
    return RdbRecord(
        **common, replica=str(raw.get("replica") or "a"), memory_budget=int(raw.get("memory_budget") or 0),
        cpu_s=None if cpu is None else float(cpu), instance_id=str(raw.get("instance_id") or ""),
        leaving=bool(raw.get("leaving")), inflight_queries=float(load.get("inflight_queries") or 0),
        queries=int(load.get("queries") or 0), open_date=raw.get("open_date"),
        serving=bool(raw.get("serving", True)), catching_up=tuple(str(c) for c in raw.get("catching_up", [])),
        tables=tables, figures={k: v for k, v in raw.items() if k not in _RDB_TYPED})
