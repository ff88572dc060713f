"""The batch loader streaming a large CSV and Parquet file, under a memory limit, against pyarrow.

A trade file is generated (``--rows``, default 3,000,000; ``--quick`` 400,000)
as CSV and as Parquet. Each figure runs in a child process of its own so that
its peak RSS is its own:

- ``tickplant ingest load`` of the file (parse, type, check, encode, publish to
  the log in one Kafka transaction per chunk, rows acknowledged), in a child
  whose resident memory is capped at ``--limit-mb`` (256) for the whole process
  (Python, pyarrow, librdkafka and all), as a container's memory limit counts
  it: a watchdog reads the child's RSS every few milliseconds and kills it past
  the cap, and the kernel's exact high-water mark (VmHWM) is checked at the
  end. An address-space cap (RLIMIT_AS, RLIMIT_DATA) cannot stand in: the
  allocators of pyarrow and librdkafka reserve over 1 GB of address space they
  never touch;
- the baseline: pyarrow reading the same file by itself in the same run,
  streaming (``pyarrow.csv.open_csv`` / ``ParquetFile.iter_batches``: the
  ceiling for a reader that keeps nothing) and whole (``read_csv`` /
  ``read_table``: what reading it into memory at once costs), uncapped.

A control: pyarrow's whole read under the same cap must fail (else the cap is
not biting and the loader's figure under it proves nothing).
``python -m bench.load --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Report, Result, add_arguments, embedded_broker, format_table, fresh
from tickplant.config import Settings

DEFAULT_ROWS, QUICK_ROWS = 3_000_000, 400_000
LIMIT_MB = 256
WATCH_SECONDS = 0.005
GEN_BATCH = 500_000


def generate(directory: Path, rows: int) -> tuple[Path, Path]:
    """A trade file of ``rows`` rows as CSV and Parquet, written a batch at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    csv_path, pq_path = directory / "trades.csv", directory / "trades.parquet"
    rng = np.random.default_rng(7)
    syms = np.array([f"S{i:03d}" for i in range(200)])
    start = int(time.time() // 86400 * 86400) * 10**9
    csv_writer = pq_writer = None
    for lo in range(0, rows, GEN_BATCH):
        n = min(GEN_BATCH, rows - lo)
        batch = pa.table({
            "time": pa.array(start + np.arange(lo, lo + n, dtype=np.int64) * 1000),
            "sym": pa.array(syms[rng.integers(0, len(syms), n)]),
            "price": pa.array(np.round(rng.uniform(10, 500, n), 2)),
            "size": pa.array(rng.integers(1, 10_000, n)),
            "exchange": pa.array(np.array(["N", "Q", "A", "P"])[rng.integers(0, 4, n)]),
        })
        if csv_writer is None:
            csv_writer = pacsv.CSVWriter(str(csv_path), batch.schema)
            pq_writer = pq.ParquetWriter(str(pq_path), batch.schema, compression="zstd")
        csv_writer.write_table(batch)
        pq_writer.write_table(batch, row_group_size=128 * 1024)
    csv_writer.close()
    pq_writer.close()
    return csv_path, pq_path


def _status_kb(field: str, pid: int | str = "self") -> int:
    """A figure of /proc/<pid>/status: VmRSS, or VmHWM (peak RSS of the process alone: getrusage's
    ru_maxrss carries the forking parent's peak across exec)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(kind: str, path: str) -> dict[str, Any]:
    """Run one figure in this process; its rows, seconds and peak RSS."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    loader = None
    if kind == "loader":
        from ingest.batchload import BatchLoader
        from tickplant.config import load_settings

        loader = BatchLoader(load_settings())
    csv = path.endswith(".csv")
    started = time.perf_counter()
    rows = 0
    try:
        if kind == "loader":
            rows = loader.load(path, table="trade").record.rows
        elif kind == "stream":
            batches = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=4 << 20)) if csv \
                else pq.ParquetFile(path).iter_batches(batch_size=65_536)
            rows = sum(b.num_rows for b in batches)
        else:
            rows = (pacsv.read_csv(path) if csv else pq.read_table(path)).num_rows
    except (MemoryError, pa.ArrowMemoryError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:100]}"}
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": _status_kb("VmHWM") / 1024}


def run_child(settings: Settings, kind: str, path: Path, limit_mb: int) -> dict[str, Any]:
    """One figure in a child process; past ``limit_mb`` of RSS (0: no cap) it is killed."""
    env = {**os.environ, **settings.child_env()}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.load", "--child", kind, str(path)],
                                env=env, stdout=out, stderr=err, text=True)
        killed = 0.0
        while proc.poll() is None:
            rss = _status_kb("VmRSS", proc.pid) / 1024
            if limit_mb and rss > limit_mb:
                proc.kill()
                killed = rss
            time.sleep(WATCH_SECONDS)
        proc.wait()
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        if killed:
            return {"error": f"killed at {killed:,.0f} MB RSS, over the {limit_mb} MB cap"}
        if proc.returncode or not lines:
            tail = (err.read().strip().splitlines() or ["no output"])[-1]
            return {"error": f"exit {proc.returncode}: {tail[:160]}"}
    got = json.loads(lines[-1])
    if limit_mb and got.get("peak_rss_mb", 0) > limit_mb:
        return {"error": f"peak RSS {got['peak_rss_mb']:,.0f} MB, over the {limit_mb} MB cap (between two looks)"}
    return got


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    limit = getattr(args, "limit_mb", None) or LIMIT_MB
    tmp = Path(tempfile.mkdtemp(prefix="tpbench-load-"))
    report = Report()
    try:
        csv_path, pq_path = generate(tmp, rows)
        (tmp / "quarter").mkdir()
        quarter = dict(zip(("CSV", "Parquet"), generate(tmp / "quarter", rows // 4), strict=True))
        for label, path in (("CSV", csv_path), ("Parquet", pq_path)):
            size_mb = path.stat().st_size / 1e6
            settings_now = fresh(settings)
            loaded = run_child(settings_now, "loader", path, limit)
            fits = "error" not in loaded
            if not fits:  # over the cap: its figures uncapped, beside the verdict
                capped_error = loaded["error"]
                loaded = run_child(fresh(settings), "loader", path, 0)
            stream = run_child(settings_now, "stream", path, 0)
            whole = run_child(settings_now, "whole", path, 0)
            capped = run_child(settings_now, "whole", path, limit)
            got = []
            if "error" in loaded:
                got.append(Result(f"load {label} ({size_mb:,.0f} MB) FAILED", 0, passed=False, unit="",
                                  note=loaded["error"]))
            else:
                base = stream.get("rows", 0) / stream["seconds"] if "seconds" in stream else None
                got.append(Result(f"load {label} {rows:,} rows ({size_mb:,.0f} MB)",
                                  loaded["rows"] / loaded["seconds"], base, passed=loaded["rows"] == rows,
                                  note="baseline: pyarrow streaming read of the same file, nothing kept"))
                got.append(Result(f"  peak RSS of the load, {label}", loaded["peak_rss_mb"],
                                  whole.get("peak_rss_mb"), unit="MB",
                                  note="baseline: pyarrow reading the whole file, uncapped"))
            small = run_child(fresh(settings), "loader", quarter[label], 0)
            if "peak_rss_mb" in loaded and "peak_rss_mb" in small:
                got.append(Result(f"  peak RSS of the load, {label}, 4x the rows", loaded["peak_rss_mb"],
                                  small["peak_rss_mb"], unit="MB",
                                  note=f"baseline: the same load of {rows // 4:,} rows (streamed: ratio ~1)"))
            got.append(Result(f"  the load under a {limit} MB RSS cap, {label}", 1 if fits else 0, passed=fits,
                              unit="fits" if fits else "killed", note="" if fits else capped_error[:100]))
            bites = "error" in capped
            got.append(Result(f"  control: pyarrow whole read of {label} under the cap", 0 if bites else 1,
                              passed=True if bites else None, unit="failed" if bites else "fits",
                              note=capped["error"][:100] if bites else "the whole file fits under the cap: "
                              "a larger --rows makes the cap bite"))
            report.results.extend(got)
            print(format_table(got), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.notes.append(
        f"load: the loader in a child process killed past {limit} MB of RSS (the whole process; its peak is the "
        "kernel's VmHWM); a 2 GB file: --rows 45000000. rows/s from the first read to the last transaction "
        "committed (every row acknowledged), against pyarrow's own read of the same file in the same run.")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--limit-mb", type=int, default=LIMIT_MB, help="the loader's memory cap (default 256)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1])))
        return 0
    with embedded_broker() as settings:
        report = collect(settings, args)
    print(format_table(report.results))
    print("\n".join(report.notes))
    return 0 if all(r.passed is not False for r in report.results) else 1


if __name__ == "__main__":
    sys.exit(main())
