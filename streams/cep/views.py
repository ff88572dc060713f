"""A CEP worker's HTTP views: the analytics and bars of the syms it holds, its live feed.

Only the syms of this worker's partitions are answered; the others are named with
the URL of the worker that holds them (``elsewhere``, from the metadata topic), so a
client or the gateway asks there, never a copy that may be behind.

  GET /cep/v1/analytics?syms=A,B  -> {"analytics": {sym: record}, "elsewhere": {sym: owner url|null},
                                      "unknown": [syms of this worker's partitions with no ticks yet]}
  GET /cep/v1/bars?syms=A&start=NS&end=NS&date=D
      -> {"bars": [closed bars with start <= time < end, then the open one with "is_open": true]}
  GET /cep/v1/live?output=analytics|bars&syms=A,B
      -> newline-delimited JSON: each read's changes as soon as they are in the store (``live``)
  GET /cep/v1/status              -> partitions, offsets, watermarks, late trades, latency
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import faust
from faust.web import View

from ingest.node_record import CepRecord
from ingest.topics import partition_for
from streams.cep.live import LiveFeedError

if TYPE_CHECKING:
    from streams.cep.worker import CepWorker


class CepError(ValueError):
    """A request or a setting the engine cannot take; the message says which and why."""


class CepViews:
    """The queries of one worker, over its partitions' engines."""

    def __init__(self, worker: CepWorker):
        self.worker = worker

    def status(self) -> dict[str, Any]:
        """The metadata record and, per partition, what its engine and committer have done."""
        w = self.worker
        with w.lock:
            parts = {}
            for p, engine in sorted(w.engines.items()):
                c = engine.counters
                publisher = w.publishers[p]
                parts[str(p)] = {
                    # offsets whose outputs are committed to Kafka; applied_offsets: in the state
                    "offsets": dict(publisher.offsets), "applied_offsets": dict(engine.store.offsets),
                    "pending_outputs": publisher.pending(), "conflated_syms": len(engine.store.dirty),
                    "days": dict(engine.store.days),
                    "watermark": engine.book.wm, "open_bars": len(engine.book.open), "syms": len(engine.store.syms),
                    "late_trades": dict(engine.book.late), "rows": c.rows, "messages": c.messages,
                    "bars_closed": c.bars, "analytics_published": c.analytics, "fences": c.fences,
                    "next_seq": engine.store.next_seq, "transactions": publisher.commits,
                    "commit_ms_avg": round(1000 * publisher.commit_seconds / max(1, publisher.commits), 2),
                }
        return {"node": w.node_id, **w.holdings(), "reads": w.reads, "commits": w.commits,
                "messages_read": w.messages_read,
                "refused": {"messages": w.intake.refused_messages, "rows": w.intake.refused_rows},
                "apply_ms_avg": round(1000 * w.apply_seconds / max(1, w.reads), 2),
                "apply_cpu_ms_avg": round(1000 * w.apply_cpu_seconds / max(1, w.reads), 3),
                "apply_cpu_us_per_message": round(1e6 * w.apply_cpu_seconds / max(1, w.messages_read), 2),
                "republished_after_restart": w.republished,
                "live": {"listeners": w.live.listener_count(), "rows_pushed": w.live.pushed_rows,
                         "dropped": w.live.dropped},
                "rows": sum(v["rows"] for v in parts.values()), "partition_state": parts,
                "visible_latency_ms": w.latency_ms()}

    def _syms(self, request: Any) -> tuple[dict[int, list[str]], dict[str, str | None]]:
        """The asked syms by local partition, and those held elsewhere (owner URL or None)."""
        w = self.worker
        raw = request.query.get("syms", "")
        syms = [s for s in raw.split(",") if s]
        local: dict[int, list[str]] = {}
        elsewhere: dict[str, str | None] = {}
        if not syms:
            with w.lock:
                for p, engine in w.engines.items():
                    local[p] = sorted(engine.store.syms)
            return local, elsewhere
        for sym in syms:
            p = partition_for(sym, w.partitions)
            if p in w.engines:
                local.setdefault(p, []).append(sym)
            else:
                elsewhere[sym] = next((r.url for r in w.peers.values()
                                       if isinstance(r, CepRecord) and r.engine == w.engine_name
                                       and p in r.partitions), None)
        return local, elsewhere

    def analytics(self, request: Any) -> dict[str, Any]:
        w = self.worker
        local, elsewhere = self._syms(request)
        out: dict[str, Any] = {}
        unknown: list[str] = []
        with w.lock:
            for p, syms in local.items():
                engine = w.engines.get(p)
                for sym in syms:
                    record = engine.snapshot(sym) if engine else None
                    if record is None:
                        unknown.append(sym)
                    else:
                        out[sym] = record
        return {"engine": w.engine_name, "analytics": out, "elsewhere": elsewhere, "unknown": sorted(unknown)}

    def bars(self, request: Any) -> dict[str, Any]:
        w = self.worker
        q = request.query
        bounds: dict[str, int | None] = {}
        for name in ("start", "end"):
            try:
                bounds[name] = int(q[name]) if q.get(name) else None
            except ValueError:
                raise CepError(f"{name}={q[name]!r} is not an integer (ns since the epoch)") from None
        start, end = bounds["start"], bounds["end"]
        date = q.get("date") or None
        if date:
            try:
                dt.date.fromisoformat(date)
            except ValueError:
                raise CepError(f"date={date!r} is not YYYY-MM-DD") from None
        local, elsewhere = self._syms(request)
        bars: list[dict[str, Any]] = []
        with w.lock:
            for p, syms in sorted(local.items()):
                engine = w.engines.get(p)
                if engine is None:
                    continue
                day = date or engine.store.days.get("trade", "")
                for sym in sorted(syms):
                    bars.extend({**b, "is_open": False} for b in engine.store.closed_bars(day, sym, start, end))
                    bar = engine.book.open_bar(sym, day) if day == engine.store.days.get("trade", "") else None
                    if bar is not None and (start is None or bar["time"] >= start) \
                            and (end is None or bar["time"] < end):
                        bars.append({**bar, "is_open": True})
        return {"engine": w.engine_name, "bar_seconds": w.width_ns / 1e9, "bars": bars, "elsewhere": elsewhere}

    def routes(self, app: faust.App) -> None:
        views = self
        worker = self.worker

        @app.page("/cep/v1/analytics")
        class Analytics(View):
            async def get(self, request: Any) -> Any:
                return self.json(views.analytics(request))

        @app.page("/cep/v1/bars")
        class Bars(View):
            async def get(self, request: Any) -> Any:
                try:
                    return self.json(views.bars(request))
                except CepError as exc:
                    return self.error(400, str(exc))

        @app.page("/cep/v1/live")
        class Live(View):
            async def get(self, request: Any) -> Any:
                try:
                    output, syms = worker.live.parse(request.query)
                except LiveFeedError as exc:
                    return self.error(400, str(exc))
                hello = {"node": worker.node_id, "engine": worker.engine_name, "topic": worker.topics.outputs[output]}
                return await worker.live.stream(request, output, syms, hello)

        @app.page("/cep/v1/status")
        class Status(View):
            async def get(self, request: Any) -> Any:
                return self.json(views.status())
