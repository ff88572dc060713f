"""``tickplant``: run the plant and talk to its log from a terminal.

Every command takes ``--config PATH`` and ``--data-dir DIR``; settings are
described in ``tickplant.config``. Errors print one line saying what went
wrong and exit non-zero; ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import threading
import time
from typing import Any

from tickplant.cliargs import add_host_flags, parse_date, settings_from_args
from tickplant.config import ConfigError, Settings
from tickplant.textable import format_ns, format_table

EXIT_REJECTS = 3


# -- up / down / status -------------------------------------------------------

def cmd_up(args: argparse.Namespace) -> int:
    from tickplant.plant import Plant, install_signal_handlers, running_plant, start_detached

    settings = settings_from_args(args, need_kafka=False)
    if args.detach:
        if running_plant(settings):
            print(f"a plant is already running from {settings.data_dir}")
            return 1
        argv = [a for a in sys.argv[1:] if a not in ("--detach", "-d")]
        pid = start_detached(argv, settings)
        print(f"tickplant is up (pid {pid}); Kafka at {settings.bootstrap}; data in {settings.data_dir}")
        print(_where(settings))
        print("'tickplant status' shows it, 'tickplant down' stops it")
        return 0
    install_signal_handlers()
    from tickplant.observe import observe_role

    # this process runs the feed, the tickerplant and the end-of-day timer: their metrics here
    observe_role(settings, "plant", "plant", listen=True)
    plant = Plant(settings, feed=not args.no_feed)
    try:
        plant.start()
        where = "embedded broker" if settings.embedded else "configured cluster"
        print(f"tickplant is up: Kafka at {settings.bootstrap} ({where}); Ctrl-C stops it")
        print(_where(settings), flush=True)
        _status_loop(plant)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping...", flush=True)
        plant.stop()
        print("stopped")
    return 0


def _where(settings: Settings) -> str:
    """Where a user reaches the plant's parts."""
    workers = settings.rdb_workers * settings.rdb_replicas
    rdb = ", ".join(settings.node_url(settings.rdb_port + i) for i in range(workers)) or "none"
    hdb = settings.hdb_root or f"{settings.data_dir}/hdb"
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    return (f"gateway: {gateway} (docs at {gateway}/docs; `tickplant query \"SELECT ...\"`)\n"
            f"RDB workers: {rdb} (GET /rdb/v1/status); HDB partitions: {hdb} ('tickplant hdb ls')")


def _status_loop(plant: Any) -> None:
    tty = sys.stdout.isatty()
    last: dict[str, int] = {}
    last_t = time.monotonic()
    ticks = 0
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        delivered = dict(plant.tp.stats.delivered) if plant.tp else {}
        parts = []
        for table in sorted(delivered):
            rate = (delivered[table] - last.get(table, 0)) / (now - last_t)
            parts.append(f"{table} {rate:,.0f} rows/s ({delivered[table]:,})")
        last, last_t = delivered, now
        day = ""
        if plant.scheduler and plant.scheduler.rolled:
            day = f" | last EOD {plant.scheduler.rolled[-1].date}"
        if plant.scheduler and plant.scheduler.error:
            day += f" | EOD FAILED: {plant.scheduler.error}"
        line = " | ".join(parts) + day
        for event in plant.watch():
            print(("\n" if tty else "") + event, flush=True)
        ticks += 1
        if tty:
            print("\r" + line.ljust(100), end="", flush=True)
        elif ticks % 10 == 0:
            print(line, flush=True)


def cmd_down(args: argparse.Namespace) -> int:
    from tickplant.plant import stop_plant
    from tickplant.supervisor import stop_leftovers

    settings = settings_from_args(args, need_kafka=False)
    stopped = stop_plant(settings)
    stopped += stop_leftovers(settings)  # what no pid file names: found by the directory it holds
    print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ingest.eod import read_day_state
    from tickplant import status
    from tickplant.plant import running_plant

    settings = settings_from_args(args, need_kafka=False)
    plant = running_plant(settings)
    if plant:
        up = time.time() - plant.get("started", time.time())
        print(f"plant: running (pid {plant['pid']}, up {up:,.0f}s, ready={plant.get('ready')})")
        if plant.get("eod_error"):
            print(f"  end of day FAILED: {plant['eod_error']}")
    else:
        print(f"plant: not running from {settings.data_dir}")
    from tickplant.kafka.admin import check_reachable

    check_reachable(settings)
    logs, ends = status.table_logs(settings)
    state = read_day_state(settings)
    print(f"Kafka: {settings.bootstrap}; open day {state.open_date}; closed days {len(state.closed)}")
    delivered = (plant or {}).get("delivered", {})
    print(format_table(
        ["table", "partitions", "messages today", "log end", "published by plant"],
        [[t.table, t.partitions, t.messages_today, t.log_end, delivered.get(t.table, 0)] for t in logs],
    ))

    def live(line: Any) -> str:
        return "live" if line.live else "STALE"

    def parts(values: list[Any]) -> str:
        return ",".join(map(str, values))

    if workers := status.rdb_lines(settings, ends):
        print()
        print(format_table(["RDB worker", "state", "url", "table", "partitions", "rows today", "lag", "caught up",
                            "RSS MiB"],
                           [[w.node, live(w), w.url, w.table, parts(w.partitions), w.rows_today, w.lag,
                             f"no: {parts(w.behind)}" if w.behind else "yes", w.rss_mib] for w in workers]))
    if engines := status.cep_lines(settings, ends):
        print()
        print(format_table(["CEP worker", "state", "url", "engine", "partitions", "lag", "serving",
                            "live listeners", "RSS MiB"],
                           [[c.node, live(c), c.url, c.engine, parts(c.partitions), c.lag, c.serving,
                             c.live_listeners, c.rss_mib] for c in engines]))
    if pdbs := status.pdb_lines(settings, ends):
        print()
        print(format_table(["PDB", "state", "host", "partitions", "lag", "rows captured", "writing", "queued"],
                           [[p.node, live(p), p.host, parts(p.partitions), p.lag, p.rows_captured,
                             p.writing or "-", p.queued] for p in pdbs]))
    if gateways := status.gateway_lines(settings):
        print()
        print(format_table(["gateway", "state", "url", "pid"], [[g.node, live(g), g.url, g.pid] for g in gateways]))
    print()
    print(_gateway_line(settings))
    return 0


def _gateway_line(settings: Settings) -> str:
    from tickplant import httpclient

    url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:  # the plant's own tool (its secret): the details
        health = httpclient.get_json(f"{url}/v1/health", settings=settings, timeout=3)
    except (httpclient.HttpError, ValueError) as exc:
        return f"gateway: not answering at {url} ({exc})"
    replicas = sorted({n["replica"] for n in health.get("rdb_nodes", [])})
    return (f"gateway: {url} ok, open day {health.get('open_date')}, {len(health.get('rdb_nodes', []))} RDB "
            f"node(s) in replica(s) {','.join(replicas) or '-'}, {len(health.get('cep_nodes', []))} CEP node(s)")


def cmd_topics(args: argparse.Namespace) -> int:
    from ingest.logread import make_consumer, watermarks
    from tickplant.kafka.admin import admin_client

    settings = settings_from_args(args)
    meta = admin_client(settings).list_topics(timeout=10)
    consumer = make_consumer(settings)
    rows = []
    try:
        for name in sorted(meta.topics):
            if name.startswith("__"):
                continue
            parts = meta.topics[name].partitions
            low = high = 0
            for p in parts:
                lo, hi = watermarks(consumer, name, p)
                low, high = low + lo, high + hi
            rows.append([name, len(parts), low, high])
    finally:
        consumer.close()
    print(format_table(["topic", "partitions", "start offsets", "end offsets"], rows))
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from tickplant.kafka.jars import ensure_jars, java_binary

    java_binary()
    libs = ensure_jars(quiet=not args.verbose)
    print(f"Kafka jars ready in {libs}")
    if args.questdb:
        from tickplant.peer.questdb import ensure_jar

        print(f"QuestDB jar ready: {ensure_jar(quiet=not args.verbose)}")
    return 0


# -- feed / eod / replay / subscribe -------------------------------------------

def cmd_feed_csv(args: argparse.Namespace) -> int:
    from ingest.feeds.csvfeed import feed_csv
    from ingest.publisher import Tickerplant

    settings = settings_from_args(args)
    started = time.monotonic()

    def progress(report: Any) -> None:
        rate = report.published / max(1e-9, time.monotonic() - started)
        print(f"\r{report.published:,} rows published ({rate:,.0f} rows/s), {report.rejected:,} rejected",
              end="", file=sys.stderr, flush=True)

    with Tickerplant(settings, mode=args.mode, source=f"csv:{args.file}") as tp:
        report = feed_csv(tp.publish_rows, tp.deadletters, tp.catalog[args.table], args.file, progress=progress,
                          publish_frame=tp.publish_frame)
        tp.flush()
    print("", file=sys.stderr)
    for line, reason in report.errors[: args.show_errors]:
        print(f"{args.file}:{line}: {reason}")
    if report.rejected > args.show_errors:
        print(f"... {report.rejected - args.show_errors:,} more rejected rows (all on the dead-letter topic)")
    print(f"{report.table}: {report.published:,} rows published, {report.rejected:,} rejected "
          f"(dead-letter topic {tp.deadletters.topic})")
    return EXIT_REJECTS if report.rejected else 0


def cmd_feed_synthetic(args: argparse.Namespace) -> int:
    from ingest.feeds.synthetic import SyntheticMarket, run_feed
    from ingest.publisher import Tickerplant
    from tickplant.observe import observe_role
    from tickplant.plant import install_signal_handlers

    settings = settings_from_args(args)
    observe_role(settings, "feed", "synthetic-feed", listen=True)
    market = SyntheticMarket(args.syms, args.seed)
    install_signal_handlers()  # SIGTERM (a container stopped) ends the feed like Ctrl-C: flushed, counted
    started = time.monotonic()
    stop = threading.Event()
    with Tickerplant(settings, mode=args.mode, source="synthetic-feed") as tp:
        try:
            events = run_feed(market, tp.publish_rows, args.rate, stop, duration=args.seconds or None,
                              publish_frame=tp.publish_frame)
        except KeyboardInterrupt:
            events = -1
        tp.flush()
    print(format_table(["table", "rows published"], sorted(tp.stats.delivered.items())))
    if events >= 0:
        print(f"{events:,} quote events in {time.monotonic() - started:.1f}s")
    return 0


def cmd_eod(args: argparse.Namespace) -> int:
    from ingest.eod import roll_day
    from ingest.schemas import SchemaCatalog

    settings = settings_from_args(args)
    if args.schedule:
        return _eod_schedule(settings, SchemaCatalog.load(settings.schemas_dir))
    marker = roll_day(settings, SchemaCatalog.load(settings.schemas_dir))
    assert marker is not None
    print(f"closed {marker.date}; open day is now {marker.next}")
    rows = [
        [table, part, start, end, max(0, end - start)]
        for table, parts in sorted(marker.tables.items())
        for part, (start, end) in sorted(parts.items())
    ]
    print(format_table(["table", "partition", "first offset", "fence offset", "offsets in day"], rows))
    return 0


def _eod_schedule(settings: Settings, catalog: Any) -> int:
    """The tickerplant's end-of-day timer as a role of its own (a host, a container): the
    topics, the first day, then each day rolled at eod_time, until stopped."""
    from ingest.eod import EodScheduler
    from ingest.topics import ensure_topics
    from tickplant.observe import observe_role
    from tickplant.plant import install_signal_handlers

    observe_role(settings, "eod", "eod", listen=True)
    install_signal_handlers()
    ensure_topics(settings, catalog)
    scheduler = EodScheduler(settings, catalog, on_roll=lambda m: print(f"closed {m.date}; open day is now "
                                                                          f"{m.next}", flush=True))
    scheduler.start()
    print(f"end of day at {settings.eod_time} {settings.eod_timezone}; Ctrl-C stops the timer", flush=True)
    try:
        while scheduler.is_alive():
            scheduler.join(1.0)
    except KeyboardInterrupt:
        scheduler.stop()
        return 0
    raise SystemExit(f"the end-of-day timer stopped: {scheduler.error}")


def _write_rows(rows: list[dict[str, Any]], fmt: str, out: Any, columns: list[str]) -> None:
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    else:
        cells = [[format_ns(r[c]) if c == "time" else r.get(c) for c in columns] for r in rows]
        print(format_table(columns, cells), file=out)


def cmd_replay(args: argparse.Namespace) -> int:
    from ingest.replay import day_ranges, replay_arrow, replay_rows
    from ingest.schemas import SchemaCatalog

    settings = settings_from_args(args)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    table = catalog[args.table]
    origin = None
    if args.from_archive:
        from sinks.archive_read import open_archive

        origin = open_archive(settings, table.name, parse_date(args.date))
        ranges = origin.ranges
    else:
        ranges = day_ranges(settings, table.name, parse_date(args.date))
    if args.partition is not None:
        if args.partition not in ranges:
            raise ValueError(f"table {table.name} has no partition {args.partition} (has {sorted(ranges)})")
        ranges = {args.partition: ranges[args.partition]}
    if args.from_offset is not None or args.to_offset is not None:
        ranges = {
            p: (max(s, args.from_offset or 0), min(e, args.to_offset if args.to_offset is not None else e))
            for p, (s, e) in ranges.items()
        }
    if args.format == "arrow":
        import pyarrow as pa

        if not args.out:
            raise ValueError("--format arrow needs --out FILE")
        arrow = replay_arrow(settings, table.name, ranges=ranges, catalog=catalog, seq=args.seq, origin=origin)
        with pa.OSFile(args.out, "wb") as sink, pa.ipc.new_stream(sink, arrow.schema) as writer:
            writer.write_table(arrow)
        print(f"{arrow.num_rows:,} rows written to {args.out}", file=sys.stderr)
        return 0
    rows = []
    for row in replay_rows(settings, table.name, ranges=ranges, catalog=catalog, seq=args.seq, origin=origin):
        rows.append(row)
        if args.limit and len(rows) >= args.limit:
            break
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        _write_rows(rows, args.format, out, table.stored_columns if args.seq else table.columns)
    finally:
        if args.out:
            out.close()
    print(f"{len(rows):,} rows", file=sys.stderr)
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    from ingest.subscribe import Subscription

    settings = settings_from_args(args)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    count = 0
    with Subscription(settings, args.table, args.syms or None, since=args.since) as sub:
        columns = sub.catalog[sub.table].columns
        while deadline is None or time.monotonic() < deadline:
            for row in sub.poll(0.5):
                print(json.dumps({c: row.get(c) for c in columns}), flush=True)
                count += 1
    print(f"{count:,} rows", file=sys.stderr)
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


def cmd_deadletters(args: argparse.Namespace) -> int:
    from ingest.deadletter import read_deadletters

    letters = read_deadletters(settings_from_args(args))[-args.last:]
    print(format_table(
        ["time", "source", "table", "where", "reason"],
        [[dt.datetime.fromtimestamp(d["time"] / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
          d["source"], d["table"], d["where"], d["reason"][:100]] for d in letters],
    ))
    return 0


# -- the parser ----------------------------------------------------------------

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

    from tickplant.aws.cli import add_commands as add_aws_commands

    add_aws_commands(sub, common)
    from tickplant.ingest_cli import add_commands as add_ingest_commands

    add_ingest_commands(sub, common)

    from tickplant.aws.package_cli import add_commands as add_package_commands

    add_package_commands(sub, common)

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
