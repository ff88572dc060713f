"""What each role does first: its log format, who it is in the metrics, and (when it has no
HTTP server of its own) the metrics listener on ``metrics_port``."""

from __future__ import annotations

import logging

from tickplant import metrics
from tickplant.config import Settings
from tickplant.logs import setup_logging


def observe_role(settings: Settings, role: str, node: str, *, listen: bool = False, port: int | None = None,
                 budget_bytes: int = 0, replica: str = "", level: int = logging.INFO) -> metrics.MetricsServer | None:
    """Set up logging (``log_format``), the role's identity and memory figures, and with
    ``listen`` the listener on ``port`` (default: the ``metrics_port`` setting; 0: none)."""
    setup_logging(settings.log_format, role, node, level)
    metrics.add_source(metrics.process_source(role, node, replica, budget_bytes))
    if not listen:
        return None
    return metrics.serve(settings.metrics_port if port is None else port, settings.node_host or "0.0.0.0")
