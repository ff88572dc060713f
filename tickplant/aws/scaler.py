"""``tickplant scaler``: the RDB group's capacity follows the day's volume, and no live data is lost.

One control loop (one active scaler: lease.py) looks every ``scaler_period_s``:
it reads the group's figures back from CloudWatch (what ``tickplant metrics
cloudwatch`` sent), decides (decide.py) and acts on the Auto Scaling group
``scaler_group`` with boto3:

- scale out: ``set_desired_capacity`` one up; AWS launches an instance, whose RDB
  worker joins the group, takes partitions and catches up;
- scale in: the scaler, not AWS, picks the node (safety.py), asks it to leave
  (``POST /rdb/v1/leave``), waits until every partition it held is served by a
  caught-up new owner, then ``terminate_instance_in_auto_scaling_group`` with
  ``ShouldDecrementDesiredCapacity``;
- every look: instances whose node holds data nothing else keeps are protected from
  scale-in (``set_instance_protection``), the others not.

Every decision is printed and logged with its reason, kept in ``decisions``, and
sent to CloudWatch as ``ScalingDecision`` (1 out, -1 in, 0 hold).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ingest.eod import read_day_state
from streams.client import RdbClient, RdbClientError
from tickplant import metrics
from tickplant.aws.clients import aws_client
from tickplant.aws.decide import FIGURES, Decision, Situation, Thresholds, decide
from tickplant.aws.figures import FigureReader, NodeFigures, role_of
from tickplant.aws.lease import Lease
from tickplant.aws.safety import at_risk, choose_leaver, handover_pending
from tickplant.config import Settings

log = logging.getLogger("tickplant.scaler")
ACTION_VALUE = {"out": 1.0, "in": -1.0, "hold": 0.0}


class ScalerError(RuntimeError):
    """The Auto Scaling group is missing or an AWS call failed; the message says which."""


class Scaler:
    def __init__(self, settings: Settings, dry_run: bool = False, lease: Lease | None = None,
                 say: Callable[[str], None] = print):
        if not settings.scaler_group:
            raise ScalerError("setting scaler_group (TICKPLANT_SCALER_GROUP) is empty: name the RDB "
                              "workers' Auto Scaling group")
        self.settings = settings
        self.dry_run = dry_run
        self.lease = lease
        self.say = say
        self.thresholds = Thresholds.from_settings(settings)
        self.role = role_of(settings.scaler_replica)
        self.period = max(1, int(round(settings.scaler_period_s)))
        self.asg = aws_client(settings, "autoscaling")
        self.cloudwatch = aws_client(settings, "cloudwatch")
        self.reader = FigureReader(settings)
        self.decisions: deque[Decision] = deque(maxlen=1000)
        self.last_out: float | None = None
        self.last_in: float | None = None
        self.launches: list[dict[str, Any]] = []  # scale-outs: when decided, which instance, when serving
        self.departing: dict[str, NodeFigures] = {}  # instance id -> its node as it was when asked to leave
        self._pending: dict[str, list[str]] = {}  # what each departure last waited for

    # -- reading ----------------------------------------------------------------

    def group(self) -> dict[str, Any]:
        name = self.settings.scaler_group
        groups = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        if not groups:
            raise ScalerError(f"Auto Scaling group {name!r} (setting scaler_group) does not exist")
        return groups[0]

    def window(self, now: float, since: float | None = None) -> dict[str, list[float | None]]:
        """Each figure's value in each of the last complete periods, oldest first. Periods begun
        before ``since`` (the last change of capacity) are left empty: they describe a group that
        no longer exists (a lag built up while a partition moved is not a reason to scale again)."""
        periods = max(self.thresholds.out_periods, self.thresholds.in_periods)
        end = math.floor(now / self.period) * self.period
        start = end - periods * self.period
        dims = [{"Name": "Plant", "Value": self.settings.plant_name}, {"Name": "Role", "Value": self.role}]
        queries = [{"Id": f"m{i}", "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": self.settings.cloudwatch_namespace, "MetricName": name, "Dimensions": dims},
            "Period": self.period, "Stat": "Maximum"}} for i, name in enumerate(FIGURES)]
        answer = self.cloudwatch.get_metric_data(
            MetricDataQueries=queries, StartTime=dt.datetime.fromtimestamp(start, dt.UTC),
            EndTime=dt.datetime.fromtimestamp(end, dt.UTC), ScanBy="TimestampAscending")
        window: dict[str, list[float | None]] = {name: [None] * periods for name in FIGURES}
        for result in answer["MetricDataResults"]:
            name = FIGURES[int(result["Id"][1:])]
            for stamp, value in zip(result["Timestamps"], result["Values"], strict=True):
                slot = int((stamp.timestamp() - start) // self.period)
                if 0 <= slot < periods and (since is None or start + slot * self.period >= since):
                    window[name][slot] = value
        return window

    def nodes(self) -> tuple[list[NodeFigures], list[NodeFigures]]:
        """Every RDB node, and those of this scaler's replica."""
        figures = self.reader.read()
        return figures, [f for f in figures if f.replica == self.settings.scaler_replica]

    # -- safety -------------------------------------------------------------------

    def protect(self, group: dict[str, Any], figures: list[NodeFigures]) -> dict[str, bool]:
        """Protect from scale-in the instances whose node holds data nothing else keeps; unprotect
        the rest (an instance with no node yet is left as it is: a group may launch its
        instances protected). Returns instance id -> protected, as it now stands."""
        published = {t: {d.isoformat() for d in days} for t, days in read_day_state(self.settings).published.items()}
        by_instance = {f.instance_id: f for f in figures if f.instance_id}
        state = {}
        for instance in group["Instances"]:
            iid, protected = instance["InstanceId"], instance.get("ProtectedFromScaleIn", False)
            node = by_instance.get(iid)
            state[iid] = protected
            if node is None and iid not in self.departing:
                continue  # launching, or its worker not up: unknown, left as the group set it
            risky = at_risk(node, figures, published) if node else []
            want = bool(risky)
            if want == protected:
                continue
            if node is None:
                why = "its node has left and its partitions are served elsewhere"
            elif risky:
                why = (f"node {node.node} alone holds {len(risky)} shard-days, e.g. {risky[0][0]}[{risky[0][1]}] "
                       f"{risky[0][2]}")
            else:
                why = f"node {node.node} holds no data only it keeps"
            if self.dry_run:
                self.say(f"dry run: would {'protect' if want else 'unprotect'} {iid}: {why}")
                continue
            if not self._active("set instance protection"):
                continue
            self.asg.set_instance_protection(AutoScalingGroupName=self.settings.scaler_group,
                                             InstanceIds=[iid], ProtectedFromScaleIn=want)
            state[iid] = want
            self.say(f"{'protected' if want else 'unprotected'} {iid} from scale-in: {why}")
        return state

    def settling(self, group: dict[str, Any], nodes: list[NodeFigures]) -> str:
        """Why the group is not settled (empty: it is): decisions wait for it."""
        by_instance = {n.instance_id: n for n in nodes if n.instance_id}
        reasons = []
        for instance in group["Instances"]:
            iid = instance["InstanceId"]
            if iid in self.departing:
                reasons.append(f"{iid} is leaving")
            elif instance["LifecycleState"] != "InService":
                reasons.append(f"{iid} is {instance['LifecycleState']}")
            elif iid not in by_instance:
                reasons.append(f"{iid} has no RDB node yet")
            elif not by_instance[iid].serving:
                reasons.append(f"{iid} ({by_instance[iid].node}) not serving yet")
        if len(group["Instances"]) != group["DesiredCapacity"]:
            reasons.append(f"{len(group['Instances'])} instances for a desired {group['DesiredCapacity']}")
        return "; ".join(reasons)

    def _active(self, what: str) -> bool:
        if self.lease is None or self.lease.held:
            return True
        self.say(f"not the active scaler any more: did not {what}")
        return False

    # -- acting -------------------------------------------------------------------

    def tick(self) -> Decision:
        """One look: protect, finish leaves under way, decide, act."""
        now = time.time()
        group = self.group()
        figures, nodes = self.nodes()
        self._note_launches(group, nodes)
        self.protect(group, figures)
        if self.departing:
            self._finish_departures(group)
            group = self.group()
        changed = max([t for t in (self.last_out, self.last_in) if t is not None], default=None)
        situation = Situation(self.window(now, changed), group["DesiredCapacity"], now, self.last_out, self.last_in,
                              self.settling(group, nodes))
        decision = decide(self.thresholds, situation)
        if decision.action == "out":
            decision = self._scale_out(decision, group)
        elif decision.action == "in":
            decision = self._scale_in(decision, group, nodes)
        self._record(decision, group["DesiredCapacity"])
        return decision

    def _record(self, decision: Decision, before: int) -> None:
        self.decisions.append(decision)
        metrics.SCALER_DECISIONS.labels(decision.action).inc()
        metrics.SCALER_DESIRED.set(decision.desired)
        moved = f"{before} -> {decision.desired}" if decision.action != "hold" else f"at {before}"
        self.say(f"{dt.datetime.fromtimestamp(decision.at, dt.UTC):%Y-%m-%dT%H:%M:%SZ} "
                 f"{'dry run: ' if self.dry_run else ''}{decision.action} ({moved}): {decision.reason}"
                 + (f" {json.dumps(decision.details)}" if decision.details else ""))
        log.info("scaler decision %s", json.dumps(decision.as_dict()))
        try:
            self.cloudwatch.put_metric_data(Namespace=self.settings.cloudwatch_namespace, MetricData=[
                {"MetricName": name, "Value": value, "Unit": "Count", "Dimensions": [
                    {"Name": "Plant", "Value": self.settings.plant_name}, {"Name": "Role", "Value": self.role}]}
                for name, value in (("ScalingDecision", ACTION_VALUE[decision.action]),
                                    ("DesiredCapacity", float(decision.desired)))])
        except Exception as exc:  # noqa: BLE001 - the decision stands; its metric is only a record
            log.warning("could not send the decision to CloudWatch: %s", exc)

    def _scale_out(self, decision: Decision, group: dict[str, Any]) -> Decision:
        if self.dry_run:
            return decision
        if not self._active("scale out"):
            return Decision("hold", group["DesiredCapacity"], f"lease lost before: {decision.reason}", decision.at)
        self.asg.set_desired_capacity(AutoScalingGroupName=self.settings.scaler_group,
                                      DesiredCapacity=decision.desired, HonorCooldown=False)
        self.last_out = time.time()
        self.launches.append({"decided": self.last_out, "before": [i["InstanceId"] for i in group["Instances"]],
                              "instance": None, "node": None, "serving": None})
        return decision

    def _note_launches(self, group: dict[str, Any], nodes: list[NodeFigures]) -> None:
        """Scale-outs whose new instance now serves: how long from the decision to serving."""
        by_instance = {n.instance_id: n for n in nodes if n.instance_id}
        for launch in [x for x in self.launches if x["serving"] is None]:
            new = [i["InstanceId"] for i in group["Instances"] if i["InstanceId"] not in launch["before"]]
            launch["instance"] = launch["instance"] or (new[0] if new else None)
            node = by_instance.get(launch["instance"] or "")
            if node is not None and node.serving:
                launch.update(node=node.node, serving=time.time())
                self.say(f"scale-out done: {launch['instance']} serves as {node.node}, "
                         f"{launch['serving'] - launch['decided']:.1f} s after the decision")

    def _scale_in(self, decision: Decision, group: dict[str, Any], nodes: list[NodeFigures]) -> Decision:
        in_service = {i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"}
        leaver = choose_leaver(n for n in nodes if n.instance_id in in_service)
        if leaver is None:
            return Decision("hold", group["DesiredCapacity"], f"{decision.reason}, but no RDB node of the "
                            "group says its instance id (setting instance_id)", decision.at)
        details = {"node": leaver.node, "instance": leaver.instance_id, "rows": leaver.rows,
                   "partitions": list(leaver.partitions)}
        if self.dry_run:
            return Decision("in", decision.desired, f"{decision.reason}; would ask {leaver.node} "
                            f"({leaver.instance_id}, {leaver.rows} rows) to leave, then terminate it",
                            decision.at, details)
        if not self._active("scale in"):
            return Decision("hold", group["DesiredCapacity"], f"lease lost before: {decision.reason}", decision.at)
        try:
            RdbClient(leaver.url, timeout=10, settings=self.settings).leave()
        except RdbClientError as exc:
            return Decision("hold", group["DesiredCapacity"], f"{decision.reason}, but {leaver.node} did not "
                            f"take the leave: {exc}", decision.at, details)
        self.departing[leaver.instance_id] = leaver
        self.say(f"asked {leaver.node} ({leaver.instance_id}) to leave: {decision.reason}")
        finished = self._finish_departures(group, wait=self.settings.scaler_handover_timeout_s)
        details["terminated"] = leaver.instance_id in finished
        if not details["terminated"]:
            return Decision("hold", group["DesiredCapacity"], f"{leaver.node} left, but the handover is not "
                            "over: its instance is kept until it is", decision.at, details)
        self.last_in = time.time()
        details["handover_s"] = round(self.last_in - decision.at, 1)
        return Decision("in", decision.desired, decision.reason, decision.at, details)

    def _finish_departures(self, group: dict[str, Any], wait: float = 0.0) -> set[str]:
        """Terminate the instances whose node has left and whose partitions are served elsewhere;
        ``wait``: up to that many seconds for it. Returns those terminated."""
        deadline = time.monotonic() + wait
        done: set[str] = set()
        while self.departing:
            figures, nodes = self.nodes()
            for iid, leaver in list(self.departing.items()):
                pending = handover_pending(leaver, nodes)
                if pending:
                    if pending != self._pending.get(iid):
                        self.say(f"handover of {leaver.node}: {'; '.join(pending)}")
                        self._pending[iid] = pending
                    continue
                state = self.protect(self.group(), figures)  # the leaver holds nothing now
                if state.get(iid):
                    self.say(f"not terminating {iid}: still protected from scale-in")
                    continue
                if not self._active(f"terminate {iid}"):
                    return done
                self.asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=True)
                self.say(f"terminated {iid} ({leaver.node}): its partitions are served by their new owners")
                del self.departing[iid]
                self._pending.pop(iid, None)
                done.add(iid)
            if not self.departing or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        for iid, leaver in self.departing.items():
            if time.monotonic() >= deadline and wait:
                self.say(f"handover of {leaver.node} ({iid}) not over after {wait:g} s: "
                         f"{'; '.join(handover_pending(leaver, self.nodes()[1]))}")
        return done

    def run(self, once: bool = False, stop: Any = None) -> None:
        """Look every ``scaler_period_s`` (only while holding the lease) until stopped."""
        while True:
            began = time.monotonic()
            if self.lease is None or self.lease.held:
                try:
                    self.tick()
                except ScalerError:
                    raise
                except Exception as exc:  # noqa: BLE001 - AWS or the broker away: the next look tries again
                    if once:
                        raise
                    self.say(f"look failed ({type(exc).__name__}: {exc}); again in {self.period} s")
            if once:
                return
            wait = max(0.2, self.period - (time.monotonic() - began))
            if stop is not None and stop.wait(wait):
                return
            if stop is None:
                time.sleep(wait)
