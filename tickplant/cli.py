"""``tickplant``: run the plant and talk to its log from a terminal.

Every command takes ``--config PATH`` and ``--data-dir DIR``; settings are
described in ``tickplant.config``. Errors print one line saying what went
wrong and exit non-zero; ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from tickplant.cliargs import add_host_flags, settings_from_args
from tickplant.config import ConfigError
from tickplant.log_cli import (
    cmd_deadletters,
    cmd_eod,
    cmd_feed_csv,
    cmd_feed_synthetic,
    cmd_replay,
    cmd_subscribe,
)
from tickplant.plant_cli import cmd_down, cmd_status, cmd_topics, cmd_up


def cmd_install(args: argparse.Namespace) -> int:
    from tickplant.kafka.jars import ensure_jars, java_binary

    java_binary()
    libs = ensure_jars(quiet=not args.verbose)
    print(f"Kafka jars ready in {libs}")
    if args.questdb:
        from tickplant.peer.questdb import ensure_jar

        print(f"QuestDB jar ready: {ensure_jar(quiet=not args.verbose)}")
    if args.console:
        from gateway.console_cli import install_console

        print(install_console())
    if args.schema_registry:
        from tickplant.kafka.registry_server import ensure_registry

        print(f"schema registry (Apicurio) ready: {ensure_registry(quiet=not args.verbose)}")
    return 0


def cmd_rdb_worker(args: argparse.Namespace) -> int:
    from streams.rdb import run_worker

    settings = settings_from_args(args)
    node = args.id or settings.node_id("rdb", args.port)
    run_worker(settings, node, args.port, memory_budget=int(args.memory_mb) << 20, replica=args.replica)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A compressed trading day, its end of day, and example queries through the gateway."""
    from tickplant.demo import run_demo

    settings = settings_from_args(args, need_kafka=False)
    return run_demo(settings, day_seconds=args.day_seconds, rate=args.rate, syms=args.syms, keep=args.keep)


def cmd_soak(args: argparse.Namespace) -> int:
    """A plant under a steady feed for a long while: memory and lag per process, flat or growing."""
    from tickplant.soak import run_soak

    settings = settings_from_args(args, need_kafka=False)
    return run_soak(settings, args.minutes, rate=args.rate, interval=args.interval, rdb_workers=args.rdb_workers)


# -- the parser: every command registered here (implementations: plant_cli, log_cli, the roles' cli modules)

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file (default ./tickplant.toml)")
    common.add_argument("--data-dir", help="where the embedded plant keeps its state (default ./.tickplant)")
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")

    common.add_argument("--kafka-port", type=int, help="embedded broker port (default 9092)")
    parser = argparse.ArgumentParser(
        prog="tickplant", description="kdb+tick's tick plant on Kafka: run it, feed it, replay its log.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common], help="start the plant (embedded Kafka, feed, end of day)")
    up.add_argument("-d", "--detach", action="store_true", help="run in the background; return once ready")
    up.add_argument("--no-feed", action="store_true", help="do not start the synthetic feed")
    up.add_argument("--rate", dest="feed_rate", type=float, help="synthetic quote events per second")
    up.add_argument("--syms", dest="feed_syms", type=int, help="number of synthetic syms")
    up.add_argument("--mode", dest="publish_mode", choices=["batch", "zero"], help="publish mode")
    up.add_argument("--rdb-workers", type=int, help="RDB worker processes (default 1; 0: none)")
    up.add_argument("--brokers", dest="kafka_brokers", type=int,
                    help="embedded Kafka brokers: 1, or a KRaft cluster of 3 as MSK gives (topics replicated "
                         "3 ways, 2 in sync); ports kafka_port, +2, +4")
    up.add_argument("--rdb-replicas", type=int, help="hot-hot copies of the RDB, each of --rdb-workers (default 1)")
    up.add_argument("--gateway-port", type=int, help="the gateway's port (default 8700)")
    up.set_defaults(func=cmd_up)

    sub.add_parser("down", parents=[common], help="stop the plant and its broker").set_defaults(func=cmd_down)

    demo = sub.add_parser("demo", parents=[common],
                          help="a compressed trading day on a throwaway plant, then example queries")
    demo.add_argument("--day-seconds", type=float, default=30.0, help="real seconds per trading session")
    demo.add_argument("--rate", type=float, default=2000.0, help="synthetic quote events per second")
    demo.add_argument("--syms", type=int, default=20, help="synthetic syms")
    demo.add_argument("--keep", action="store_true", help="keep the demo plant running after the examples")
    demo.set_defaults(func=cmd_demo)

    soak = sub.add_parser("soak", parents=[common],
                          help="a throwaway plant under load for N minutes: memory and lag, flat or growing")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--rate", type=float, default=2000.0, help="synthetic quote events per second")
    soak.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    soak.add_argument("--rdb-workers", type=int, default=1)
    soak.set_defaults(func=cmd_soak)
    sub.add_parser("status", parents=[common], help="what runs, the open day, rows per table").set_defaults(
        func=cmd_status)
    sub.add_parser("topics", parents=[common], help="the log's topics and offsets").set_defaults(func=cmd_topics)
    install = sub.add_parser("install", parents=[common], help="fetch the Kafka broker jars (Maven)")
    install.add_argument("--questdb", action="store_true",
                         help="also QuestDB's server jar, for the side-by-side benchmark (python -m bench peer)")
    install.add_argument("--console", action="store_true",
                         help="also rebuild the web console's browser libraries (npm ci in console/)")
    install.add_argument("--schema-registry", action="store_true",
                         help="also build a Confluent-compatible schema registry (Apicurio; tickplant registry run)")
    install.set_defaults(func=cmd_install)
    eod = sub.add_parser("eod", parents=[common], help="roll the open day over now")
    eod.add_argument("--schedule", action="store_true",
                     help="instead, run the end-of-day timer in the foreground (topics, first day, a roll at eod_time)")
    eod.set_defaults(func=cmd_eod)

    feed = sub.add_parser("feed", parents=[common], help="publish rows into the log")
    feeds = feed.add_subparsers(dest="feed", required=True, metavar="FEED")
    fcsv = feeds.add_parser("csv", parents=[common], help="publish a CSV file's rows into a table")
    fcsv.add_argument("table")
    fcsv.add_argument("file")
    fcsv.add_argument("--mode", choices=["batch", "zero"], default="batch")
    fcsv.add_argument("--show-errors", type=int, default=20, help="rejected lines to print (default 20)")
    fcsv.set_defaults(func=cmd_feed_csv)
    fsyn = feeds.add_parser("synthetic", parents=[common], help="publish a synthetic market for a while")
    fsyn.add_argument("--rate", type=float, default=10_000, help="quote events per second")
    fsyn.add_argument("--syms", type=int, default=50)
    fsyn.add_argument("--seed", type=int, default=1)
    fsyn.add_argument("--seconds", type=float, default=10, help="how long (0: until stopped)")
    fsyn.add_argument("--mode", choices=["batch", "zero"], default="batch")
    fsyn.set_defaults(func=cmd_feed_synthetic)

    rep = sub.add_parser("replay", parents=[common], help="read back a day or offset range of a table (-11!)")
    rep.add_argument("table")
    rep.add_argument("--date", help="a closed day YYYY-MM-DD (default: the open day so far)")
    rep.add_argument("--partition", type=int)
    rep.add_argument("--from-offset", type=int)
    rep.add_argument("--to-offset", type=int, help="exclusive")
    rep.add_argument("--format", choices=["table", "csv", "json", "arrow"], default="table")
    rep.add_argument("--out", help="write to a file instead of the terminal")
    rep.add_argument("--limit", type=int, default=0, help="at most this many rows (0: all)")
    rep.add_argument("--seq", action="store_true",
                     help="add each row's seq: its place in the log, as the RDB and HDB keep it (offset << 20 | index)")
    rep.add_argument("--from-archive", action="store_true",
                     help="read the day from the log's archive (setting archive_root), once Kafka has deleted it")
    rep.set_defaults(func=cmd_replay)

    subs = sub.add_parser("subscribe", parents=[common], help="stream a table's rows for some syms (.u.sub)")
    subs.add_argument("table")
    subs.add_argument("syms", nargs="*")
    subs.add_argument("--since", choices=["now", "sod"], default="now", help="from now or the start of day")
    subs.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    subs.set_defaults(func=cmd_subscribe)

    rdb = sub.add_parser("rdb", parents=[common], help="the real-time database")
    rdbs = rdb.add_subparsers(dest="rdb", required=True, metavar="ACTION")
    rworker = rdbs.add_parser("worker", parents=[common], help="run one RDB worker (Faust) in the foreground")
    rworker.add_argument("--id", help="node id, unique in the plant (default rdb-<announced address>:<port>)")
    rworker.add_argument("--port", type=int, default=8711, help="HTTP query port")
    rworker.add_argument("--memory-mb", type=int, default=1024, help="memory budget")
    rworker.add_argument("--replica", default="a",
                         help="replica group (hot-hot: each group holds every partition; default a)")
    add_host_flags(rworker)
    rworker.set_defaults(func=cmd_rdb_worker)

    from sinks.cli import add_commands as add_sink_commands

    add_sink_commands(sub, common)

    from sinks.archive_cli import add_commands as add_archive_commands

    add_archive_commands(sub, common)

    from streams.cep.cli import add_commands as add_cep_commands

    add_cep_commands(sub, common)

    from gateway.cli import add_commands as add_gateway_commands

    add_gateway_commands(sub, common)

    from gateway.watch import add_commands as add_watch_commands

    add_watch_commands(sub, common)

    from gateway.sqlconsole import add_commands as add_sql_commands

    add_sql_commands(sub, common)

    from tickplant.aws.cli import add_commands as add_aws_commands

    add_aws_commands(sub, common)
    from tickplant.ingest_cli import add_commands as add_ingest_commands

    add_ingest_commands(sub, common)

    from tickplant.aws.package_cli import add_commands as add_package_commands

    add_package_commands(sub, common)
    from tickplant.registry_cli import add_commands as add_registry_commands

    add_registry_commands(sub, common)

    dlq = sub.add_parser("deadletters", parents=[common], help="rejected input and why")
    dlq.add_argument("--last", type=int, default=50)
    dlq.set_defaults(func=cmd_deadletters)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, ValueError, RuntimeError, OSError, argparse.ArgumentTypeError) as exc:
        if args.verbose:
            raise
        print(f"tickplant {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a KafkaException and the like: still one clear line
        if args.verbose:
            raise
        print(f"tickplant {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
