"""The AWS commands of ``tickplant``: ``metrics cloudwatch`` and ``scaler``.

``add_commands(sub, common)`` registers them on the CLI's subparsers, as gateway/cli.py does.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tickplant.cliargs import settings_from_args
from tickplant.textable import format_table


def _mb(n: int) -> int:
    return round(n / 2**20)


def cmd_cloudwatch(args: argparse.Namespace) -> int:
    from tickplant.aws.cloudwatch import CloudWatchPublisher

    settings = settings_from_args(args)
    if args.interval is not None:
        if args.interval <= 0:
            raise ValueError(f"--interval must be positive, not {args.interval}")
        settings = settings.replace(cloudwatch_interval_s=args.interval)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    publisher = CloudWatchPublisher(settings)
    if not args.once:
        publisher.run()
        return 0
    figures, sent = publisher.round()
    print(format_table(
        ["node", "role", "instance", "rows", "lag", "memory MB", "budget MB", "caught up", "cpu %"],
        [[f.node, f.role, f.instance_id or "-", f"{f.rows:,}", f"{f.lag:,}", _mb(f.memory_used),
          _mb(f.memory_budget), "yes" if f.serving else "no",
          "-" if f.cpu_pct is None else f"{f.cpu_pct:.0f}"] for f in figures]))
    print(f"{sent} metric data sent to CloudWatch namespace {settings.cloudwatch_namespace} "
          f"(plant {settings.plant_name})")
    return 0


def cmd_scaler(args: argparse.Namespace) -> int:
    from tickplant.aws.lease import Lease
    from tickplant.aws.scaler import Scaler
    from tickplant.observe import observe_role

    settings = settings_from_args(args)
    # its decisions as metrics too, on metrics_port (tickplant_scaler_decisions_total, ..._desired_capacity)
    observe_role(settings, "scaler", f"scaler-{settings.advertised_host}", listen=True, level=logging.WARNING)
    lease = None
    if not args.dry_run:  # a dry run changes nothing: it needs no lease
        lease = Lease(settings)
        print(f"waiting for the scaler lease (group {settings.topic_prefix}tickplant-scaler)", flush=True)
        lease.wait()
    scaler = Scaler(settings, dry_run=args.dry_run, lease=lease, say=lambda line: print(line, flush=True))
    try:
        scaler.run(once=args.once)
    finally:
        if lease is not None:
            lease.close()
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    metrics = sub.add_parser("metrics", parents=[common], help="the plant's figures to a monitoring service")
    targets = metrics.add_subparsers(dest="metrics", required=True, metavar="TARGET")
    cw = targets.add_parser("cloudwatch", parents=[common],
                            help="send the RDB nodes' figures to CloudWatch (put_metric_data)")
    cw.add_argument("--interval", type=float, help="seconds between rounds (default: cloudwatch_interval_s, 60)")
    cw.add_argument("--once", action="store_true", help="one round, print the figures sent, exit")
    cw.set_defaults(func=cmd_cloudwatch)

    scaler = sub.add_parser("scaler", parents=[common],
                            help="set the RDB Auto Scaling group's capacity from its CloudWatch figures")
    scaler.add_argument("--dry-run", action="store_true", help="print what it would do; change nothing")
    scaler.add_argument("--once", action="store_true", help="one look, then exit")
    scaler.set_defaults(func=cmd_scaler)
