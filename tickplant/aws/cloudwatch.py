"""``tickplant metrics cloudwatch``: the RDB nodes' figures to CloudWatch, where alarms and the scaler read them.

Each round reads every RDB node's metadata record (tickplant/aws/figures.py) and
sends, in namespace ``cloudwatch_namespace``:

- per node (dimensions Plant, Role, Node): RowsHeld, LagMessages, MemoryUsedBytes,
  MemoryBudgetBytes, MemoryUsedPercent, CaughtUp (1 or 0), PartitionsHeld and, from
  the second round on, CPUPercent (of one core);
- per replica group (dimensions Plant, Role): Nodes, ServingNodes, RowsHeld (the sum),
  and LagMessages, MemoryUsedPercent and CPUPercent of its busiest node, the
  figures the scaler decides on (one node over a threshold is a node short).

Rounds shorter than a minute are sent as high-resolution metrics, so the scaler
can look at periods as short as a second.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any

from tickplant.aws.clients import aws_client
from tickplant.aws.figures import FigureReader, NodeFigures
from tickplant.config import Settings

log = logging.getLogger("tickplant.cloudwatch")
BATCH = 500  # metric data per put_metric_data call (the API takes 1,000 and 1 MB)
GROUP_FIGURES = ("LagMessages", "MemoryUsedPercent", "CPUPercent")  # what the scaler reads


def _dims(plant: str, role: str, node: str | None = None) -> list[dict[str, str]]:
    dims = [{"Name": "Plant", "Value": plant}, {"Name": "Role", "Value": role}]
    return dims + ([{"Name": "Node", "Value": node}] if node else [])


def metric_data(settings: Settings, figures: Iterable[NodeFigures], when: dt.datetime) -> list[dict[str, Any]]:
    """The MetricData entries of one round."""
    resolution = 1 if settings.cloudwatch_interval_s < 60 else 60
    plant = settings.plant_name
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, unit: str, dims: list[dict[str, str]]) -> None:
        if value is not None:
            out.append({"MetricName": name, "Dimensions": dims, "Timestamp": when, "Value": float(value),
                         "Unit": unit, "StorageResolution": resolution})

    groups: dict[str, list[NodeFigures]] = {}
    for f in figures:
        groups.setdefault(f.role, []).append(f)
        dims = _dims(plant, f.role, f.node)
        add("RowsHeld", f.rows, "Count", dims)
        add("LagMessages", f.lag, "Count", dims)
        add("MemoryUsedBytes", f.memory_used, "Bytes", dims)
        add("MemoryBudgetBytes", f.memory_budget or None, "Bytes", dims)
        add("MemoryUsedPercent", f.memory_pct, "Percent", dims)
        add("CaughtUp", 1 if f.serving else 0, "None", dims)
        add("PartitionsHeld", len(f.partitions), "Count", dims)
        add("CPUPercent", f.cpu_pct, "Percent", dims)
    for role, nodes in sorted(groups.items()):
        dims = _dims(plant, role)
        add("Nodes", len(nodes), "Count", dims)
        add("ServingNodes", sum(n.serving for n in nodes), "Count", dims)
        add("RowsHeld", sum(n.rows for n in nodes), "Count", dims)
        add("LagMessages", max(n.lag for n in nodes), "Count", dims)
        memory = [n.memory_pct for n in nodes if n.memory_pct is not None]
        add("MemoryUsedPercent", max(memory) if memory else None, "Percent", dims)
        cpu = [n.cpu_pct for n in nodes if n.cpu_pct is not None]
        add("CPUPercent", max(cpu) if cpu else None, "Percent", dims)
    return out


class CloudWatchPublisher:
    """Reads the figures and puts them, in batches; one instance per plant is enough."""

    def __init__(self, settings: Settings, client: Any = None):
        self.settings = settings
        self.client = client or aws_client(settings, "cloudwatch")
        self.reader = FigureReader(settings)

    def round(self) -> tuple[list[NodeFigures], int]:
        """One round: the figures read and how many metric data were sent."""
        figures = self.reader.read()
        data = metric_data(self.settings, figures, dt.datetime.now(dt.UTC))
        for start in range(0, len(data), BATCH):
            self.client.put_metric_data(Namespace=self.settings.cloudwatch_namespace,
                                        MetricData=data[start:start + BATCH])
        return figures, len(data)

    def run(self, once: bool = False, rounds: int | None = None, stop: Any = None) -> None:
        """Every ``cloudwatch_interval_s`` until stopped; a failed round is logged and the next tried."""
        done = 0
        while True:
            began = time.monotonic()
            try:
                figures, sent = self.round()
                log.info("sent %d metric data for %d RDB nodes", sent, len(figures))
            except Exception as exc:  # noqa: BLE001 - the broker or AWS away: try again next round
                if once:
                    raise
                log.warning("CloudWatch round failed (%s: %s); next in %.0f s", type(exc).__name__, exc,
                            self.settings.cloudwatch_interval_s)
            done += 1
            if once or (rounds is not None and done >= rounds):
                return
            wait = max(0.0, self.settings.cloudwatch_interval_s - (time.monotonic() - began))
            if stop is not None:
                if stop.wait(wait):
                    return
            else:
                time.sleep(wait)
