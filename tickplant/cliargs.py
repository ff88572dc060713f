"""What every command line of the plant shares: its settings from the flags, a date, a host.

Below the commands: ``tickplant/cli.py`` and each role's own commands
(gateway/cli.py, sinks/cli.py, streams/cep/cli.py, ...) import these, and
nothing here imports a command back.
"""

from __future__ import annotations

import argparse
import datetime as dt

from tickplant.config import Settings, load_settings
from tickplant.kafka.admin import check_reachable


def add_host_flags(parser: argparse.ArgumentParser) -> None:
    """``--host``/``--advertise`` of a worker whose views other hosts reach."""
    parser.add_argument("--host", dest="node_host",
                        help="address the views listen on (default: setting node_host, 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--advertise", dest="advertise_host",
                        help="address announced to the gateway and peers (default: setting advertise_host, "
                             "else the --host address, else this host's name)")


def settings_from_args(args: argparse.Namespace, need_kafka: bool = True) -> Settings:
    """The settings a command runs with; by default also checks that Kafka answers."""
    overrides = {"data_dir": args.data_dir}
    for name in ("kafka_port", "feed_rate", "feed_syms", "publish_mode", "rdb_workers", "rdb_replicas", "hdb_root",
                 "gateway_port", "node_host", "advertise_host", "kafka_brokers"):
        if hasattr(args, name):
            overrides[name] = getattr(args, name)
    settings = load_settings(args.config, **overrides)
    if need_kafka:
        check_reachable(settings)
    return settings


def parse_date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"date {text!r} is not YYYY-MM-DD") from None
