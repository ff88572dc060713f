"""The RDB and CEP workers' metrics: ``GET /metrics`` on their views, and the figures read at
scrape time from what the workers already keep for their status and metadata."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import faust
from faust.web import View

from tickplant import metrics
from tickplant.metrics import PREFIX, Sample

if TYPE_CHECKING:
    from streams.cep.worker import CepWorker
    from streams.rdb import RdbWorker


def add_metrics_page(app: faust.App) -> None:
    """``GET /metrics`` on a worker's views (exempt from the plant secret: no rows in it)."""

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Any) -> Any:
            body, content_type = metrics.exposition()
            return self.bytes(body, content_type=content_type.split(";")[0])


class Timed:
    """``with Timed(histogram):`` observes the block's wall time, in seconds."""

    def __init__(self, histogram: Any):
        self.histogram = histogram

    def __enter__(self) -> Timed:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.histogram.observe(time.perf_counter() - self.started)


def rdb_samples(worker: RdbWorker) -> Iterator[Sample]:
    """An RDB worker's state: per assigned shard its lag, caught-up and size on disk; per day
    the rows it holds; its resident rows, queries in flight and whether it serves."""
    role = "rdb"
    # copies, not the reader's lock: it holds that while it applies a read (seconds when
    # catching up), and a scrape on the event loop must never wait for it (a set or dict is
    # copied in one step under the GIL, as the metadata record reads them)
    assigned = sorted(set(worker.assigned))
    shards = {key: worker.shards.get(key) for key in assigned}
    caught_up = set(worker.caught_up)
    positions = {}
    for (table, partition), shard in shards.items():
        if shard is not None:
            positions[(table, worker.names.table(table), partition)] = shard.applied + 1
    yield from worker.log_ends.lag(role, positions)
    for (table, partition), shard in shards.items():
        labels = {"role": role, "table": table, "partition": str(partition)}
        yield f"{PREFIX}caught_up", labels, int((table, partition) in caught_up and shard is not None)
        if shard is not None:
            yield f"{PREFIX}rocksdb_bytes", labels, metrics.dir_bytes(shard.path)
    serving = bool(assigned) and all(k in caught_up and shards[k] is not None for k in assigned)
    yield f"{PREFIX}serving", {"role": role}, int(serving)
    held: dict[tuple[str, str], int] = {}
    for (table, _), shard in shards.items():
        if shard is None:
            continue
        for date, _status in shard.day_statuses():
            if date:
                held[(table, date)] = held.get((table, date), 0) + sum(s.rows for s in shard.sym_stats(date).values())
    for (table, date), rows in sorted(held.items()):
        yield f"{PREFIX}rows_held", {"role": role, "table": table, "date": date}, rows
    yield f"{PREFIX}resident_bytes", {"role": role}, worker.resources.resident.used
    yield f"{PREFIX}queries_inflight", {"role": role}, worker.inflight
    yield f"{PREFIX}refused_messages", {"role": role}, worker.intake.refused_messages


def cep_samples(worker: CepWorker) -> Iterator[Sample]:
    """A CEP worker's state: lag per input partition, live listeners, whether it serves."""
    role = "cep"
    engines = dict(worker.engines)  # a copy, not the reader's lock (see rdb_samples)
    positions = {(table, worker.names.table(table), p): engine.store.offset(table) + 1
                 for p, engine in engines.items() for table in worker.tables}
    serving = bool(worker.assigned) and set(engines) == set(worker.assigned)
    yield from worker.log_ends.lag(role, positions)
    yield f"{PREFIX}serving", {"role": role}, int(serving)
    yield f"{PREFIX}live_subscribers", {"role": role}, worker.live.listener_count()
    yield f"{PREFIX}refused_messages", {"role": role}, worker.intake.refused_messages
