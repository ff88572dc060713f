"""The RDB scaler against AWS's APIs (moto's server on loopback, a real HTTP endpoint): the
Auto Scaling group's instances become RDB workers on hosts of their own (a loopback address
and a data directory each), started and stopped by a small instance runner as the group
launches and terminates them. Fed faster than the thresholds allow, the scaler scales out
and the new node joins and catches up; fed nothing, it scales in, choosing the node, which
hands its partitions over before its instance is terminated. Every answer through the
gateway meanwhile is whole or a 503; afterwards every row is there once. The decision rule
and the safety rules are also tested on their own."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from procs import BackgroundFeed, SymCounts, Worker, plant_env, wait_until
from prometheus_client import REGISTRY

from gateway.app import create_app
from ingest.eod import open_first_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.node_record import RdbRecord, node_from_fields
from ingest.publisher import Tickerplant
from tickplant.aws.cloudwatch import CloudWatchPublisher
from tickplant.aws.decide import Situation, Thresholds, decide
from tickplant.aws.figures import NodeFigures, node_figures
from tickplant.aws.lease import Lease
from tickplant.aws.safety import at_risk, choose_leaver, handover_pending
from tickplant.aws.scaler import Scaler
from tickplant.clock import ManualClock
from tickplant.ec2 import instance_id
from tickplant.kafka.broker import free_port

T0 = int(dt.datetime(2026, 11, 24, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)

# -- the decision rule and the safety rules, on their own ---------------------------------

RULE = Thresholds(lag_high=1000, lag_low=10, memory_high_pct=75, memory_low_pct=40, cpu_high_pct=70,
                  cpu_low_pct=25, out_periods=3, in_periods=4, out_cooldown_s=300, in_cooldown_s=600,
                  min_size=1, max_size=3)


def _window(lag, memory=(20, 20, 20, 20), cpu=(5, 5, 5, 5)):
    return {"LagMessages": list(lag), "MemoryUsedPercent": list(memory), "CPUPercent": list(cpu)}


def test_scale_out_only_when_a_figure_stays_over_for_every_period():
    busy = decide(RULE, Situation(_window([10, 5000, 5000, 5000]), desired=1, now=1000))
    assert busy.action == "out" and busy.desired == 2 and "LagMessages" in busy.reason
    blip = decide(RULE, Situation(_window([5000, 5000, 20, 5000]), desired=1, now=1000))
    assert blip.action == "hold"
    gap = decide(RULE, Situation(_window([5000, 5000, None, 5000]), desired=1, now=1000))
    assert gap.action == "hold"  # a period with no data is not a period over
    memory = decide(RULE, Situation(_window([0] * 4, memory=[80, 80, 90, 76]), desired=2, now=1000))
    assert memory.action == "out" and "MemoryUsedPercent" in memory.reason


def test_bounds_cooldowns_and_settling_hold_a_decision():
    busy = _window([5000] * 4)
    at_max = decide(RULE, Situation(busy, desired=3, now=1000))
    assert at_max.action == "hold" and "scaler_max" in at_max.reason
    cooling = decide(RULE, Situation(busy, desired=1, now=1000, last_out=900))
    assert cooling.action == "hold" and "cooldown" in cooling.reason
    assert decide(RULE, Situation(busy, desired=1, now=1000, last_out=600)).action == "out"
    settling = decide(RULE, Situation(busy, desired=1, now=1000, settling="i-1 has no RDB node yet"))
    assert settling.action == "hold" and "i-1 has no RDB node yet" in settling.reason
    below = decide(RULE, Situation(_window([0] * 4), desired=0, now=1000))
    assert (below.action, below.desired) == ("out", 1)


def test_scale_in_only_when_every_figure_stays_under_and_one_fewer_fits():
    quiet = _window([0, 0, 0, 0])
    assert decide(RULE, Situation(quiet, desired=2, now=1000)).action == "in"
    assert decide(RULE, Situation(quiet, desired=1, now=1000)).action == "hold"  # at min
    busy_once = decide(RULE, Situation(_window([0, 50, 0, 0]), desired=2, now=1000))
    assert busy_once.action == "hold" and "LagMessages" in busy_once.reason
    tight = decide(RULE, Situation(_window([0] * 4, memory=[39] * 4), desired=2, now=1000))
    assert tight.action == "hold" and "one node fewer" in tight.reason  # 39% on 2 is 78% on 1
    assert decide(RULE, Situation(quiet, desired=2, now=1000, last_in=700)).action == "hold"
    no_lag = decide(RULE, Situation({"MemoryUsedPercent": [1] * 4}, desired=2, now=1000))
    assert no_lag.action == "hold"  # lag never measured: never a scale-in
    no_cpu = decide(RULE, Situation({"LagMessages": [0] * 4, "MemoryUsedPercent": [1] * 4}, desired=2, now=1000))
    assert no_cpu.action == "in"  # CPU not known yet does not hold a scale-in back
    with pytest.raises(ValueError, match="scaler_min"):
        Thresholds(**{**RULE.__dict__, "min_size": 4}).check()


def _node(name, replica="a", partitions=(0, 1), rows=100, serving=True, catching_up=(), date="2026-11-24"):
    days = tuple(("trade", p, date, "open", rows) for p in partitions) if rows else ()
    return NodeFigures(node=name, replica=replica, instance_id=f"i-{name}", url="", serving=serving,
                       leaving=False, rows=rows, partitions=tuple(partitions), catching_up=tuple(catching_up),
                       lag=0, memory_used=1, memory_budget=2, cpu_s=0.0, updated=0.0, days=days)


def test_a_node_is_protected_while_it_alone_holds_an_unpublished_day():
    a1, a2 = _node("a1", partitions=(0, 1)), _node("a2", partitions=(2, 3))
    assert at_risk(a1, [a1, a2], {}) == [("trade", 0, "2026-11-24"), ("trade", 1, "2026-11-24")]
    b1 = _node("b1", replica="b", partitions=(0, 1, 2, 3))  # another replica, caught up
    assert at_risk(a1, [a1, a2, b1], {}) == []
    behind = _node("b1", replica="b", partitions=(0, 1, 2, 3), serving=False, catching_up=("trade[1]",))
    assert at_risk(a1, [a1, a2, behind], {}) == [("trade", 1, "2026-11-24")]
    assert at_risk(a1, [a1, a2], {"trade": {"2026-11-24"}}) == []  # the HDB has the day
    assert at_risk(_node("empty", rows=0), [a1], {}) == []
    assert choose_leaver([a1, _node("small", rows=5), a2]).node == "small"


def test_a_handover_is_over_only_once_new_owners_serve():
    leaver = _node("a1", partitions=(0, 1))
    assert handover_pending(leaver, [leaver, _node("a2", partitions=(2, 3))])  # still in the group
    catching = _node("a2", partitions=(0, 1, 2, 3), serving=False, catching_up=("trade[1]",))
    assert "partition 1" in " ".join(handover_pending(leaver, [catching]))
    assert handover_pending(leaver, [_node("a2", partitions=(0, 1, 2, 3))]) == []


def test_a_node_record_gives_its_lag_rows_and_cpu():
    record = {"node": "rdb-x", "replica": "a", "instance_id": "i-0abc", "serving": True, "rss": 256 << 20,
              "memory_budget": 1024 << 20, "cpu_s": 12.0, "updated": 100.0, "catching_up": [],
              "tables": {"trade": {"partitions": [0, 2], "applied": {"0": 99, "2": 40},
                                   "dates": {"2026-11-24": {"rows": 700, "status": "open"}}}}}
    ends = {("trade", 0): 100, ("trade", 2): 51}  # partition 0 read to its end, 2 ten behind
    def rdb(fields: dict) -> RdbRecord:
        decoded = node_from_fields("rdb-x", fields, "test")
        assert isinstance(decoded, RdbRecord)
        return decoded

    first = node_figures(rdb(record), ends)
    assert (first.lag, first.rows, first.partitions, first.memory_pct, first.cpu_pct) == (10, 700, (0, 2), 25.0, None)
    later = node_figures(rdb({**record, "cpu_s": 13.5, "updated": 103.0}), ends, previous=first)
    assert later.cpu_pct == pytest.approx(50.0)  # 1.5 CPU seconds in 3 s: half a core
    assert node_figures(rdb({**record, "cpu_s": 0.5, "updated": 103.0}), ends, first).cpu_pct is None  # restarted


def test_the_instance_id_is_configured_or_the_instance_says_it(tmp_path):
    assert instance_id("i-0123456789abcdef0", dmi=tmp_path) == "i-0123456789abcdef0"
    assert instance_id("", dmi=tmp_path) == ""  # not on EC2: nothing asked of the network
    (tmp_path / "board_asset_tag").write_text("i-0fedcba9876543210\n")  # a Nitro instance's DMI
    assert instance_id("", dmi=tmp_path) == "i-0fedcba9876543210"
    (tmp_path / "board_asset_tag").write_text("Default string\n")
    (tmp_path / "sys_vendor").write_text("Dell Inc.\n")
    assert instance_id("", dmi=tmp_path) == ""


# -- moto's server, the instance runner --------------------------------------------------

def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url + "/moto-api/"), 30, "moto's server", lambda: str(proc.poll()))
        yield url
    finally:
        proc.kill()  # moto keeps nothing worth a clean stop
        proc.wait(10)
        log.close()


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


class InstanceWorker(Worker):
    """The RDB worker an EC2 instance of the group would run: its instance id in the environment."""

    def __init__(self, settings, instance_id: str, log_dir: Path, host: str):
        super().__init__(settings, f"rdb-{instance_id}", log_dir, host=host)
        self.instance_id = instance_id

    def start(self) -> InstanceWorker:
        env = {**plant_env(self.settings), "TICKPLANT_INSTANCE_ID": self.instance_id}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tickplant", *self.argv()], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self


class InstanceRunner:
    """An RDB worker per InService instance of the group, each a host of its own; stopped when
    its instance goes. Notes, for each instance that went, whether its worker had already
    left (stopped by itself) and whether the group still called it protected."""

    def __init__(self, settings, asg, tmp: Path):
        self.settings, self.asg, self.tmp = settings, asg, tmp
        self.workers: dict[str, InstanceWorker] = {}
        self.gone: dict[str, dict[str, bool]] = {}
        self.protected: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="instance-runner")

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            group = self.asg.describe_auto_scaling_groups(
                AutoScalingGroupNames=[self.settings.scaler_group])["AutoScalingGroups"][0]
            live = {i["InstanceId"]: i for i in group["Instances"] if i["LifecycleState"] == "InService"}
            for iid, instance in live.items():
                self.protected[iid] = instance["ProtectedFromScaleIn"]
                if iid not in self.workers:
                    host = f"127.0.0.{len(self.workers) + 2}"
                    self.workers[iid] = InstanceWorker(self.settings.replace(data_dir=self.tmp / iid), iid,
                                                       self.tmp, host).start()
            for iid, worker in self.workers.items():
                if iid not in live and iid not in self.gone:
                    self.gone[iid] = {"left_first": worker.proc.poll() is not None,
                                      "protected": self.protected.get(iid, False)}
                    worker.stop()

    def serving(self) -> list[InstanceWorker]:
        out = []
        for iid, worker in list(self.workers.items()):  # a copy: the runner's thread adds to it
            if iid in self.gone or worker.proc.poll() is not None:
                continue
            try:
                if worker.client.status()["serving"]:
                    out.append(worker)
            except Exception:  # noqa: BLE001 - still starting
                pass
        return out

    def __enter__(self) -> InstanceRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for worker in self.workers.values():  # the end of the test: nothing to keep
            if worker.proc and worker.proc.poll() is None:
                worker.kill9()


def _group(settings) -> str:
    """The test's Auto Scaling group: one per test on the module's moto server."""
    return f"rdb-{settings.topic_prefix}".rstrip(".")


def _asg_with_one_instance(settings) -> tuple:
    kw = {"endpoint_url": settings.aws_endpoint_url, "region_name": "us-east-1"}
    group = _group(settings)
    ec2, asg = boto3.client("ec2", **kw), boto3.client("autoscaling", **kw)
    ec2.create_launch_template(LaunchTemplateName=group,
                               LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "m6i.large"})
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group, MinSize=1, MaxSize=2, DesiredCapacity=1, AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateName": group, "Version": "$Latest"})
    return asg, boto3.client("cloudwatch", **kw)


def _desired(asg, name: str) -> tuple[int, int]:
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return group["DesiredCapacity"], len(group["Instances"])


@pytest.mark.timeout(300)
def test_the_scaler_scales_out_under_load_and_in_safely(settings, catalog, tmp_path, moto_endpoint, aws_env):
    shared = settings.replace(
        internal_secret="one-plant-secret-scaler", gateway_timeout_s=10, aws_endpoint_url=moto_endpoint,
        aws_region="us-east-1", plant_name=f"test-{settings.topic_prefix}".rstrip("."), cloudwatch_interval_s=1,
        scaler_group=_group(settings), scaler_min=1, scaler_max=2, scaler_period_s=1, scaler_out_periods=2,
        scaler_in_periods=3, scaler_out_cooldown_s=2, scaler_in_cooldown_s=2, scaler_lag_high=5,
        scaler_lag_low=5, scaler_memory_high_pct=1000, scaler_memory_low_pct=1000, scaler_cpu_high_pct=10_000,
        scaler_cpu_low_pct=10_000, scaler_handover_timeout_s=90, rdb_memory_mb=512)
    lines: list[str] = [f"{time.time():.1f} TEST start"]
    clock = ManualClock(T0)
    open_first_day(shared, catalog, clock)
    asg, cloudwatch = _asg_with_one_instance(shared)
    halt = threading.Event()
    lease = Lease(shared, "scaler-1")
    scaler = Scaler(shared, lease=lease, say=lines.append)
    publisher = CloudWatchPublisher(shared)
    loops = [threading.Thread(target=publisher.run, kwargs={"stop": halt}, name="cloudwatch"),
             threading.Thread(target=scaler.run, kwargs={"stop": halt}, name="scaler")]
    try:
        with InstanceRunner(shared, asg, tmp_path) as runner, \
                TestClient(create_app(shared.replace(data_dir=tmp_path / "host-gw"))) as http:
            wait_until(lambda: len(runner.serving()) == 1, 60, "the first instance's RDB worker")
            lines.append(f"{time.time():.1f} TEST first worker serving")
            assert lease.wait(30), "the only scaler did not get the lease"
            for loop in loops:
                loop.start()

            asking = SymCounts(http, pause=0.2)
            asking.start()
            market = SyntheticMarket(syms=16, seed=5, clock=clock)
            with Tickerplant(shared, catalog, mode="batch") as tp, BackgroundFeed(tp, market, events=50) as feed:
                wait_until(lambda: _desired(asg, shared.scaler_group) == (2, 2), 60, "a scale-out", lambda: "\n".join(lines[-5:]))
                lines.append(f"{time.time():.1f} TEST scaled out")
                wait_until(lambda: len(runner.serving()) == 2 and all(
                    w.client.status()["tables"].get("trade") for w in runner.serving()), 90,
                    "the new node to join and catch up", lambda: "\n".join(lines[-5:]))
                # both hold live rows only they keep: both protected from AWS's own scale-in
                wait_until(lambda: sum(runner.protected.values()) == 2, 30, "both instances protected",
                           lambda: f"{runner.protected}\n" + "\n".join(lines[-5:]))
                lines.append(f"{time.time():.1f} TEST both serving and protected; feed stops")
            want = dict(Counter(r["sym"] for r in feed.published["trade"]))
            wait_until(lambda: _desired(asg, shared.scaler_group) == (1, 1), 90, "a safe scale-in", lambda: "\n".join(lines[-8:]))
            wait_until(lambda: bool(runner.gone), 30, "the runner to see the instance go")
            lines.append(f"{time.time():.1f} TEST scaled in")
            wait_until(lambda: asking.last_is(want), 60, "the survivor exact",
                       lambda: f"{asking.answers[-1:]} != {want}; refused {asking.refused[-2:]}")
            lines.append(f"{time.time():.1f} TEST exact")
            halt.set()
            asking.stop()
            for loop in loops:
                loop.join(60)

            assert not asking.wrong, asking.wrong[:3]  # every answer whole or a 503
            assert not asking.partial(), asking.partial()[:3]
            assert asking.answers, "no answer at all through the gateway"
            assert len(runner.workers) == 2, f"instances launched: {list(runner.workers)}"
            [(gone, how)] = list(runner.gone.items())
            assert how["left_first"], f"{gone} was terminated before its node had left"
            [survivor] = [w for iid, w in list(runner.workers.items()) if iid not in runner.gone]
            assert survivor.proc.poll() is None, survivor.log_tail()
            rows = survivor.client.rows("trade", columns=["sym", "time", "seq"]).to_pylist()
            assert len(rows) == len(feed.published["trade"]) == len({(r["sym"], r["seq"]) for r in rows})
            actions = [d.action for d in scaler.decisions]
            assert "out" in actions and "in" in actions, lines[-10:]
            for action in ("out", "in"):  # the decisions as Prometheus sees them as well
                counted = REGISTRY.get_sample_value("tickplant_scaler_decisions_total", {"action": action})
                assert counted == actions.count(action), (action, counted, actions)
            scale_in = next(d for d in scaler.decisions if d.action == "in")
            assert scale_in.details["instance"] == gone and scale_in.details["terminated"], scale_in
            assert any("scale-out done" in line for line in lines), lines
            metrics = cloudwatch.list_metrics(Namespace="Tickplant")["Metrics"]
            nodes = {d["Value"] for m in metrics for d in m["Dimensions"] if d["Name"] == "Node"}
            assert {f"rdb-{iid}" for iid in list(runner.workers)} <= nodes, (nodes, lines)
    finally:
        halt.set()
        lease.close()


def test_one_scaler_holds_the_lease_and_another_takes_it_when_it_stops(settings):
    first = Lease(settings, "scaler-first")
    second = None
    try:
        assert first.wait(30), "a lone scaler did not get the lease"
        second = Lease(settings, "scaler-second")
        time.sleep(2)  # a second member joining: the group rebalances, the lease stays where it is
        assert first.held and not second.held
        first.close()  # the active scaler stops (or dies: its session times out)
        assert second.wait(30), "the waiting scaler did not take the lease over"
    finally:
        first.close()
        if second is not None:
            second.close()


def test_the_commands_print_what_they_send_and_would_do(settings, catalog, moto_endpoint, aws_env, monkeypatch,
                                                        capsys):
    from ingest.topics import ensure_topics
    from tickplant.cli import main

    ensure_topics(settings, catalog)
    shared = settings.replace(aws_endpoint_url=moto_endpoint, aws_region="us-east-1")
    for name, value in plant_env(shared).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TICKPLANT_AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("TICKPLANT_PLANT_NAME", "cli-test")
    assert main(["scaler", "--dry-run", "--once"]) == 2
    assert "scaler_group" in capsys.readouterr().err  # not said which group: one line naming the setting
    monkeypatch.setenv("TICKPLANT_SCALER_GROUP", "no-such-group")
    assert main(["scaler", "--dry-run", "--once"]) == 2
    assert "'no-such-group' (setting scaler_group) does not exist" in capsys.readouterr().err
    _asg_with_one_instance(shared)
    monkeypatch.setenv("TICKPLANT_SCALER_GROUP", _group(shared))
    assert main(["metrics", "cloudwatch", "--once"]) == 0
    assert "metric data sent to CloudWatch namespace Tickplant (plant cli-test)" in capsys.readouterr().out
    assert main(["scaler", "--dry-run", "--once"]) == 0
    said = capsys.readouterr().out
    assert "dry run: out (1 -> 1)" not in said and "dry run: hold (at 1)" in said, said
    assert "has no RDB node yet" in said or "not under" in said, said
