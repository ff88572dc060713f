"""``tickplant up``, ``down``, ``status`` and ``topics``: the local plant started and stopped,
and the whole plant as its log and its nodes' records say it is (registered by tickplant/cli.py)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from tickplant.cliargs import settings_from_args
from tickplant.config import Settings
from tickplant.textable import format_table


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
