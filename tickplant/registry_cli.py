"""The schema registry's command: ``tickplant registry run``.

Runs the Confluent-compatible registry the registry mode's tests use (Apicurio,
in memory: ``tickplant.kafka.registry_server``) in the foreground, to try the
mode on one machine: point ``schema_registry_url`` at the URL it prints. Its
schemas live as long as the process: a plant on it must be started anew after a
restart (a production plant uses its Kafka's registry, persistent).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from tickplant.cliargs import settings_from_args


def cmd_registry_run(args: argparse.Namespace) -> int:
    from tickplant.kafka.registry_server import RegistryServer

    log = settings_from_args(args, need_kafka=False).data_dir / "logs" / "schema-registry.log"
    server = RegistryServer(args.port, log, host=args.host)
    print(f"starting the schema registry (Apicurio, in memory); log in {log}", file=sys.stderr)
    server.start()
    print(f"schema registry at {server.url}: set schema_registry_url (TICKPLANT_SCHEMA_REGISTRY_URL) to it")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return server.process.wait() if server.process is not None else 1
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        server.stop()


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    registry = sub.add_parser("registry", parents=[common], help="a local Confluent-compatible schema registry")
    cmds = registry.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    run = cmds.add_parser("run", parents=[common], help="run one in the foreground (Apicurio, in memory)")
    run.add_argument("--port", type=int, default=8081)
    run.add_argument("--host", default="127.0.0.1")
    run.set_defaults(func=cmd_registry_run)
