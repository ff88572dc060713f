"""Scale-out of the RDB group: from the scaler's decision to the new node serving, on a 1M-row day.

An Auto Scaling group on moto's server (AWS's control APIs on loopback), one RDB
worker per instance, each a host of its own (its own data directory, nothing shared
but the broker). One node holds the whole day; the scaler is made to decide a
scale-out (its lag threshold below any lag) and sets the group's DesiredCapacity;
an instance runner starts a worker for the new instance, which joins, takes half the
partitions and rebuilds them from the log. The figure is the time from the decision
to the group serving every row again on two nodes (the EC2 boot an AWS instance
adds is not in it). Then the scaler scales in again, choosing a node, which hands its
partitions over before its instance is terminated: from the decision to the
termination. Baseline, in the same run: a worker started cold on an empty day, until
it serves (the fixed cost of any new node).

    python -m bench scale [--quick] [--rows N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.common import Report, Result, fresh, run_alone
from bench.rdb import BenchWorker, publish
from ingest.eod import open_first_day
from ingest.schemas import SchemaCatalog
from streams.client import RdbClientError
from tickplant.aws.cloudwatch import CloudWatchPublisher
from tickplant.aws.decide import Decision
from tickplant.aws.scaler import Scaler
from tickplant.config import Settings
from tickplant.kafka.broker import free_port

GROUP = "bench-rdb"


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """moto's server (``moto_server``, PyPI moto[server]) on a free loopback port: its URL.
    Sets dummy AWS credentials for this process (moto takes any)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer at {url}: see {log_path}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()  # moto keeps nothing worth a clean stop
        proc.wait(10)


def create_group(settings: Settings, name: str, max_size: int = 2) -> None:
    """A launch template and an Auto Scaling group of one instance, on the settings' endpoint."""
    from tickplant.aws.clients import aws_client

    aws_client(settings, "ec2").create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "m6i.large"})
    aws_client(settings, "autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=1, MaxSize=max_size, DesiredCapacity=1,
        AvailabilityZones=["us-east-1a"], LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"})


class BenchRunner(threading.Thread):
    """A worker per InService instance of the group (each its own data directory), stopped when
    its instance goes."""

    def __init__(self, scaler: Scaler, tmp: Path):
        super().__init__(name="instance-runner", daemon=True)
        self.scaler, self.tmp = scaler, tmp
        self.workers: dict[str, BenchWorker] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.1):
            live = {i["InstanceId"] for i in self.scaler.group()["Instances"] if i["LifecycleState"] == "InService"}
            for iid in sorted(live - set(self.workers)):
                settings = self.scaler.settings.replace(data_dir=self.tmp / iid, instance_id=iid)
                self.workers[iid] = BenchWorker(settings, f"rdb-{iid}")
                self.workers[iid].child.start()
            for iid in set(self.workers) - live:
                self.workers.pop(iid).stop()

    def serving(self, rows: int) -> bool:
        """Every live worker serving, and the group holding every row."""
        workers = list(self.workers.values())
        try:
            statuses = [w.client.status() for w in workers]
            return all(s["serving"] for s in statuses) and sum(workers[0].client.count("trade").values()) >= rows
        except (RdbClientError, IndexError):
            return False

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        for worker in self.workers.values():
            worker.stop()


def _wait(condition, timeout: float, what: str) -> float:
    began = time.perf_counter()
    while not condition():
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.perf_counter() - began


def bench_scale(base: Settings, catalog: SchemaCatalog, rows: int, tmp: Path, endpoint: str) -> list[Result]:
    settings = fresh(base).replace(
        internal_secret="bench-scale", aws_endpoint_url=endpoint, aws_region="us-east-1", plant_name="bench",
        cloudwatch_interval_s=1, scaler_group=GROUP, scaler_min=1, scaler_max=2, scaler_period_s=1,
        scaler_out_periods=1, scaler_in_periods=1, scaler_out_cooldown_s=0, scaler_in_cooldown_s=0,
        scaler_lag_high=-1, scaler_lag_low=-1, scaler_handover_timeout_s=600)
    empty = fresh(base).replace(internal_secret="bench-scale", data_dir=tmp / "cold")
    open_first_day(empty, catalog)
    cold = BenchWorker(empty, "rdb-cold")
    try:
        baseline = cold.start(serving=True)  # a node started on an empty day, until it serves
    finally:
        cold.stop()
    open_first_day(settings, catalog)
    publish(settings, catalog, "trade", rows, "batch")
    create_group(settings, GROUP)
    lines: list[str] = []
    scaler = Scaler(settings, say=lines.append)
    runner = BenchRunner(scaler, tmp)
    runner.start()
    try:
        _wait(lambda: runner.serving(rows), 900, "the first node holding the day")
        CloudWatchPublisher(settings).round()  # the figures the scaler reads exist
        group = scaler.group()
        decided = time.perf_counter()
        scaler._scale_out(Decision("out", 2, "bench: scale out now", time.time()), group)
        _wait(lambda: len(runner.workers) == 2 and runner.serving(rows), 900, "two nodes serving every row")
        out = time.perf_counter() - decided
        newest = list(runner.workers.values())[-1]  # the instance launched by the scale-out
        moved = newest.client.status()["tables"]["trade"]["partitions"]
        _, nodes = scaler.nodes()
        decided = time.perf_counter()
        decision = scaler._scale_in(Decision("in", 1, "bench: scale in now", time.time()), scaler.group(), nodes)
        scale_in = time.perf_counter() - decided
        if not decision.details.get("terminated"):
            raise RuntimeError(f"scale-in did not finish: {decision.reason}; {lines[-3:]}")
        _wait(lambda: len(runner.workers) == 1 and runner.serving(rows), 120, "the survivor serving every row")
    finally:
        runner.stop()
    note = f"{rows:,}-row day; the new node rebuilt {len(moved)} of {settings.partitions} partitions from the log"
    return [
        Result(f"RDB scale-out: decision to serving ({rows:,}-row day)", out, baseline, "-", None, "s",
               f"{note}; baseline: a node started cold on an empty day, until it serves"),
        Result(f"RDB scale-in: decision to terminated ({rows:,}-row day)", scale_in, baseline, "-", None, "s",
               f"leave, handover, new owners caught up, terminate ({decision.details.get('rows', 0):,} rows "
               "moved); same baseline"),
    ]


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="tpbench-scale-"))
    try:
        with moto_server(tmp / "moto.log") as endpoint:
            results = bench_scale(settings, SchemaCatalog.load(settings.schemas_dir), rows, tmp, endpoint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Report(results, ["scale: an Auto Scaling group on moto's server; one RDB worker per instance, each with "
                            "a disk of its own; EC2's own launch time is not in the figures."])


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.scale", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
