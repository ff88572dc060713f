"""``tickplant soak --minutes N``: a plant under a steady feed for a long while, watched.

What a long run reveals that tests do not: memory that creeps up, lag that
builds. A throwaway plant (``<data_dir>/soak``, free ports) runs the synthetic
feed at ``rate`` events/s; every ``interval`` seconds each process's resident
memory (the plant with its feed, the broker, every RDB worker, the PDB, the
gateway), the RDB's lag in messages and the latency of one gateway query are
sampled and printed. At the end a table says, per process, whether memory was
flat or growing: the mean of the last third of the samples against the first
third (growing = up by more than 10 % and 32 MiB).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.client import Client, GatewayError
from tickplant.config import Settings
from tickplant.demo import scratch_settings
from tickplant.kafka.broker import EmbeddedKafka
from tickplant.plant import Plant
from tickplant.status import rdb_lag
from tickplant.textable import format_table

GROWTH_FRACTION, GROWTH_MIB = 0.10, 32.0


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a live process, from /proc (None if it is gone)."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Series:
    samples: list[float] = field(default_factory=list)

    def verdict(self) -> str:
        """After the warm-up (the first two samples: caches, ClickHouse starting), the
        mean of the last third against the first third."""
        steady = self.samples[2:]
        n = len(steady)
        if n < 6:
            return "too short"
        first = statistics.mean(steady[: n // 3])
        last = statistics.mean(steady[-(n // 3):])
        growing = last - first > max(GROWTH_MIB, first * GROWTH_FRACTION)
        return "GROWING" if growing else "flat"


def processes(plant: Plant) -> dict[str, int | None]:
    out: dict[str, int | None] = {"plant+feed": os.getpid()}
    if isinstance(plant.broker, EmbeddedKafka) and plant.broker.process:
        out["kafka"] = plant.broker.process.pid
    for child in plant.supervisor.children:
        out[child.name] = child.proc.pid if child.proc else None
    return out


def run_soak(settings: Settings, minutes: float, rate: float = 2000.0, interval: float = 10.0,
             rdb_workers: int = 1) -> int:
    soak = scratch_settings(settings, "soak", feed_rate=rate, rdb_workers=rdb_workers)
    plant = Plant(soak, feed=True)
    memory: dict[str, Series] = {}
    lags: list[int] = []
    latencies: list[float] = []
    print(f"tickplant soak: {minutes:g} min at {rate:,.0f} events/s on a plant in {soak.data_dir}; "
          f"a sample every {interval:g} s", flush=True)
    try:
        plant.start()
        client = Client(f"http://{soak.gateway_host}:{soak.gateway_port}", timeout=60)
        end = time.monotonic() + minutes * 60
        header_every = 20
        sample = 0
        while time.monotonic() < end:
            time.sleep(interval)
            for line in plant.watch():
                print(f"  {line}", flush=True)
            pids = processes(plant)
            row = {}
            for name, pid in pids.items():
                mib = rss_mib(pid)
                if mib is not None:
                    memory.setdefault(name, Series()).samples.append(mib)
                    row[name] = mib
            lag = rdb_lag(soak)
            lags.append(lag)
            t0 = time.monotonic()
            try:
                client.sql("SELECT count() FROM trade WHERE date = today()")
                latencies.append((time.monotonic() - t0) * 1e3)
                query = f"{latencies[-1]:.0f} ms"
            except GatewayError as exc:
                query = f"failed: {exc}"[:40]
            if sample % header_every == 0:
                print("  " + "  ".join(["elapsed", *(f"{n:>10}" for n in row), "RDB lag", "query"]), flush=True)
            elapsed = minutes * 60 - (end - time.monotonic())
            print("  " + "  ".join([f"{elapsed:6.0f}s", *(f"{v:8.0f}MB" for v in row.values()),
                                    f"{lag:7d}", query]), flush=True)
            sample += 1
        delivered = sum(plant.tp.stats.delivered.values()) if plant.tp else 0
        print(f"\n{delivered:,} rows published in {minutes:g} min")
        budgets = {name: soak.rdb_memory_mb for name in memory if name.startswith("rdb-")}
        rows = [[name, f"{s.samples[0]:.0f}", f"{s.samples[-1]:.0f}", f"{max(s.samples):.0f}",
                 budgets.get(name, "-"), s.verdict()] for name, s in memory.items()]
        print(format_table(["process", "RSS first MiB", "last", "max", "budget", "memory"], rows))
        print("(an RDB worker grows with the day it holds, up to its budget: rows beyond stay on disk)")
        lag_series = Series([float(v) for v in lags])
        print(f"RDB lag: first {lags[0] if lags else '-'}, last {lags[-1] if lags else '-'}, "
              f"max {max(lags) if lags else '-'} messages ({lag_series.verdict()}); "
              f"gateway query p50 {statistics.median(latencies) if latencies else float('nan'):.0f} ms")
        growing = [r[0] for r in rows if r[-1] == "GROWING" and not (r[0] in budgets and float(r[3]) < budgets[r[0]])]
        return 1 if growing else 0
    except KeyboardInterrupt:
        return 130
    finally:
        plant.stop()
