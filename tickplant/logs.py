"""How every role logs: text for a terminal, or one JSON object per line for a log shipper.

``log_format = "json"`` (``TICKPLANT_LOG_FORMAT=json``) makes each record a
JSON object: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
process's ``role`` and ``node`` (the same names as the metrics' labels and
``tickplant_node_info``), ``exception`` when there is one, and any ``extra``
fields a call passes (``log.info(..., extra={"table": "trade"})``), so that
CloudWatch Logs, Loki or Elasticsearch filter on the fields the dashboards use.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# attributes every LogRecord has: anything else on a record came from ``extra``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped)."""

    def __init__(self, role: str = "", node: str = ""):
        super().__init__()
        self.role = role
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "role": self.role,
            "node": self.node,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


def formatter(log_format: str, role: str = "", node: str = "") -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(role, node)
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, not {log_format!r}")


def setup_logging(log_format: str, role: str, node: str = "", level: int = logging.INFO) -> None:
    """The root logger writes to stderr in ``log_format``; a handler set up before (by
    ``basicConfig``, by Faust) is given the same formatter, so every line has one shape."""
    fmt = formatter(log_format, role, node)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(fmt)
    root.setLevel(level)
