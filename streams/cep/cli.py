"""The CEP commands of ``tickplant``: ``cep run``.

``add_commands(sub, common)`` registers them on the CLI's subparsers (as
``sinks.cli`` does); ``python -m streams.cep.cli cep run ...`` runs the same
command without the main CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from tickplant.cliargs import add_host_flags, settings_from_args


def cmd_cep_run(args: argparse.Namespace) -> int:
    """Run one CEP worker in the foreground until Ctrl-C / SIGTERM."""
    from streams.cep.worker import run_worker

    settings = settings_from_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    args.id = args.id or settings.node_id("cep", args.port)
    print(f"CEP {args.id} (engine {args.engine}): {settings.node_url(args.port)}/cep/v1/status; "
          f"{args.bar_seconds:g}s bars; Ctrl-C stops it", flush=True)
    run_worker(settings, args.id, args.port, engine=args.engine, bar_seconds=args.bar_seconds,
               grace_seconds=args.grace_seconds, idle_seconds=args.idle_seconds)
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``cep run`` on the CLI's subparsers."""
    cep = sub.add_parser("cep", parents=[common], help="the real-time engines (analytics, bars)")
    ceps = cep.add_subparsers(dest="cep", required=True, metavar="ACTION")
    run = ceps.add_parser("run", parents=[common], help="run one CEP worker (Faust) in the foreground")
    run.add_argument("--id", help="node id, unique in the plant (default cep-<announced address>:<port>)")
    run.add_argument("--port", type=int, default=8721, help="HTTP port of the views (default 8721)")
    run.add_argument("--engine", default="main",
                     help="engine name: its consumer group, state and topics (default main: rte.bars, rte.analytics)")
    run.add_argument("--bar-seconds", type=_positive, default=60.0, help="bar width (default 60)")
    run.add_argument("--grace-seconds", type=_positive, default=1.0,
                     help="a bar closes when the watermark passes its end + this (default 1)")
    run.add_argument("--idle-seconds", type=_positive, default=None,
                     help="a partition quiet this long closes its due bars on the wall clock (default: grace)")
    add_host_flags(run)
    run.set_defaults(func=cmd_cep_run)
