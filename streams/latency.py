"""The workers' own latency figures: a ring buffer of latencies read as percentiles, the
RDB's stages of publish -> visible, and the scheduler's figures (CPU time, run-queue wait)
that tell CPU contention apart from slow code behind a latency tail."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def sched_ns(thread_id: int | None = None) -> dict[str, int]:
    """CPU time and time spent runnable but waiting for a CPU (ns), of a thread or the
    process (Linux schedstat): the evidence of CPU contention behind a latency tail."""
    tasks = Path("/proc/self/task")
    ids = [str(thread_id)] if thread_id else [t.name for t in tasks.iterdir()] if tasks.exists() else []
    cpu = wait = 0
    for tid in ids:
        try:
            run, queued, _ = (tasks / tid / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        cpu += int(run)
        wait += int(queued)
    return {"cpu": cpu, "runqueue_wait": wait, "at": time.time_ns()}


class LatencySample:
    """The latest ``size`` latencies (ns), as ms percentiles: a ring buffer, so adding a
    run's rows is one numpy copy and the window holds every row of a benchmark.

    Meaningful when rows are stamped with the wall clock at publish (the
    synthetic feed on the system clock): then it is publish -> queryable.
    """

    def __init__(self, size: int = 4096, scale: float = 1e6):
        self.values = np.zeros(size, np.int64)
        self.size = size
        self.scale = scale  # ns -> ms by default; 1 for counts
        self.count = 0  # ever added; the buffer holds the last min(count, size)

    def add(self, ns: int | np.ndarray) -> None:
        values = np.atleast_1d(np.asarray(ns, np.int64))[-self.size:]
        start = self.count % self.size
        first = min(len(values), self.size - start)
        self.values[start:start + first] = values[:first]
        self.values[:len(values) - first] = values[first:]
        self.count += len(values)

    def percentiles(self, recent: int | None = None) -> dict[str, float] | None:
        """p50/p90/p99/max in ms over what is held, or over the last ``recent`` values only."""
        held = self.values[:min(self.count, self.size)]
        if recent is not None and len(held) > recent:
            held = self.values[(self.count - recent + np.arange(recent)) % self.size]
        if not len(held):
            return None
        p50, p90, p99, top = (round(float(v), 3) for v in np.percentile(held, [50, 90, 99, 100]) / self.scale)
        return {"p50": p50, "p90": p90, "p99": p99, "max": top, "n": int(len(held))}

    def reset(self) -> None:
        self.count = 0


class Stages:
    """Where a row's publish -> visible time goes, measured by the worker itself.

    Per row (wall clock against the row's time stamp): ``fetched`` is publish ->
    the reader holds it (producer, broker, fetch); ``applied`` the reader holds it
    -> committed to the shard (queued behind other runs of the read, decoded,
    Arrow, RocksDB), ``visible`` the whole. Per read: the milliseconds spent
    decoding, building Arrow, writing RocksDB or the shard's tail, and the
    messages in it; ``flush`` a tail written to RocksDB (merges included).
    ``stall`` times the event-loop housekeeping that competes with the reader
    for the GIL.
    """

    NAMES = ("visible", "fetched", "applied", "read_decode", "read_arrow", "read_write", "read_total",
             "read_messages", "flush", "stall")

    def __init__(self) -> None:
        per_row = ("visible", "fetched", "applied")  # a benchmark's every row; the rest are per read
        self.samples = {name: LatencySample(1 << 17 if name in per_row else 1 << 14,
                                            scale=1 if name == "read_messages" else 1e6)
                        for name in self.NAMES}
        self.read_started = 0  # ns: when the current read's first message was in hand

    def report(self) -> dict[str, Any]:
        return {name: sample.percentiles() for name, sample in self.samples.items()}

    def reset(self) -> None:
        for sample in self.samples.values():
            sample.reset()
