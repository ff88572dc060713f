"""What an RDB worker says about itself: the metadata record the gateway routes by (which
partitions, which days with how many rows, serving or still catching up, its load) and,
for the status view, where its latency goes."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from streams.latency import sched_ns

if TYPE_CHECKING:
    from streams.rdb import RdbWorker


def tables_held(worker: RdbWorker) -> dict[str, Any]:
    """Per table: the partitions assigned, the offset applied in each, and per day its rows,
    time range and status ("open" | "closed")."""
    tables: dict[str, Any] = {}
    for (table, partition) in sorted(worker.assigned):
        shard = worker.shards.get((table, partition))
        entry = tables.setdefault(table, {"partitions": [], "dates": {}})
        entry["partitions"].append(partition)
        if shard is None:
            continue
        entry.setdefault("applied", {})[str(partition)] = shard.applied
        for date, status in shard.day_statuses():
            if not date:
                continue
            stats = shard.sym_stats(date).values()
            day = entry["dates"].setdefault(date, {"rows": 0, "first": None, "last": None, "status": status})
            day["rows"] += sum(s.rows for s in stats)
            firsts = [s.first for s in stats if s.rows]
            lasts = [s.last for s in stats if s.rows]
            if firsts:
                day["first"] = min([f for f in (day["first"], *firsts) if f is not None])
                day["last"] = max([v for v in (day["last"], *lasts) if v is not None])
    return tables


def record(worker: RdbWorker, detail: bool = False) -> dict[str, Any]:
    """The metadata record; ``detail`` adds the latency stages and scheduler figures (the
    status view: percentiles over every row are not free)."""
    w = worker
    reader = w.reader_id
    return {
        **w.identity(), "replica": w.replica, "memory_budget": w.memory_budget, "cpu_s": time.process_time(),
        "instance_id": w.instance_id, "leaving": w.leaving,
        "load": {"inflight_queries": w.inflight, "queries": w.queries},
        "serving": bool(w.assigned) and all(key in w.shards and key in w.caught_up for key in w.assigned),
        "catching_up": [f"{t}[{p}]" for t, p in sorted(w.assigned - w.caught_up)],
        "rows_applied": w.rows_applied, "messages": w.messages, "batches": w.batches,
        "refused": {"messages": w.intake.refused_messages, "rows": w.intake.refused_rows},
        "tables": tables_held(w),
        "visible_latency_ms": w.latency.percentiles(None if detail else 4096),
        **({"stages_ms": w.stages.report(),
            "sched_ns": {"process": sched_ns(), "reader": sched_ns(reader) if reader else None},
            "loadavg": os.getloadavg()} if detail else {}),
    }
