"""The gateway's commands of ``tickplant``: ``gateway run`` and ``query``.

``add_commands(sub, common)`` registers them on the CLI's subparsers, as
sinks/cli.py does for the PDB and HDB.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pyarrow as pa

from tickplant.cliargs import settings_from_args
from tickplant.textable import format_table


def cmd_gateway_run(args: argparse.Namespace) -> int:
    """Serve the gateway in the foreground until Ctrl-C / SIGTERM."""
    import uvicorn

    from gateway.app import create_app

    settings = settings_from_args(args)
    host = args.host or settings.gateway_host
    port = args.port or settings.gateway_port
    from gateway.announce import Announcer
    from tickplant.observe import observe_role

    url = settings.replace(node_host=host).node_url(port)  # announced: advertise_host, else where it listens
    node = args.id or f"gateway-{url.split('://', 1)[1]}"
    observe_role(settings, "gateway", node)  # its metrics: GET /metrics on its own port
    app = create_app(settings)
    announcer = Announcer(settings, node, url)
    announcer.start()
    ch_port = args.clickhouse_port if args.clickhouse_port is not None else settings.clickhouse_http_port
    ch = f"; ClickHouse HTTP interface on http://{host}:{ch_port}" if ch_port else ""
    print(f"gateway {node}: {url} (docs at /docs){ch}; Ctrl-C stops it", flush=True)
    try:
        if ch_port:
            from gateway.chserve import serve_both

            serve_both(app, host, port, ch_port)
        else:
            # log_config None: uvicorn's records go to our handler, in log_format, not its own
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, log_config=None)
    finally:
        announcer.stop()
    return 0


def _cell(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return text.replace("+00:00", "Z")
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def print_answer(table: pa.Table, fmt: str, max_rows: int = 50) -> None:
    """A table as the terminal shows it: aligned columns, the first rows, a count."""
    if fmt == "csv":
        import pyarrow.csv as pacsv

        from gateway.output import plain

        for batch in table.to_batches():
            pacsv.write_csv(plain(batch), sys.stdout.buffer)
        return
    if fmt == "json":
        import json

        from gateway.output import json_default, plain

        for batch in table.to_batches():
            for row in plain(batch).to_pylist():
                print(json.dumps(row, default=json_default))
        return
    shown = table.slice(0, max_rows).to_pylist()
    rows = [[_cell(row[c]) for c in table.column_names] for row in shown]
    print(format_table(table.column_names, rows))
    more = f" (first {max_rows} shown)" if table.num_rows > max_rows else ""
    print(f"{table.num_rows:,} row(s){more}")


def cmd_query(args: argparse.Namespace) -> int:
    """Run one SQL statement through the gateway and print the answer."""
    from gateway.client import Client, GatewayError

    settings = settings_from_args(args, need_kafka=False)
    url = (args.url or os.environ.get("TICKPLANT_GATEWAY_URL")
           or f"http://{settings.gateway_host}:{settings.gateway_port}")
    key = args.key or os.environ.get("TICKPLANT_API_KEY")
    wait = (args.timeout or settings.gateway_timeout_s) + 5.0  # the gateway's 408 comes first
    with Client(url, api_key=key, timeout=wait) as client:
        try:
            table = client.sql(args.sql, limit=args.limit or None, timeout=args.timeout or None)
        except GatewayError as exc:
            hint = " (is the plant up? `tickplant up --detach`)" if exc.status == 503 and "unreachable" in exc.reason else ""
            print(f"tickplant query: {exc.status} {exc.reason}{hint}", file=sys.stderr)
            return 1
    print_answer(table, args.format, args.rows)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``gateway run`` and ``query`` on the CLI's subparsers."""
    gw = sub.add_parser("gateway", parents=[common], help="the SQL/REST gateway")
    gws = gw.add_subparsers(dest="gateway", required=True, metavar="ACTION")
    run = gws.add_parser("run", parents=[common], help="run the gateway in the foreground")
    run.add_argument("--id", help="node id (default gateway-<announced address>:<port>)")
    run.add_argument("--host", help="listen address (default: setting gateway_host)")
    run.add_argument("--port", type=int, help="listen port (default: setting gateway_port)")
    run.add_argument("--clickhouse-port", type=int, help="port of the ClickHouse HTTP interface, 0: none "
                                                          "(default: setting clickhouse_http_port)")
    run.set_defaults(func=cmd_gateway_run)

    q = sub.add_parser("query", parents=[common], help="run a SQL SELECT through the gateway, print a table")
    q.add_argument("sql", help="ClickHouse SELECT; `trade` means today and history, with a date column")
    q.add_argument("--url", help="the gateway, or several comma-separated (failed over in turn); "
                                 "default: $TICKPLANT_GATEWAY_URL, else http://<gateway_host>:<gateway_port>")
    q.add_argument("--key", help="API key or token (default: $TICKPLANT_API_KEY)")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--rows", type=int, default=50, help="rows to print in table format")
    q.add_argument("--limit", type=int, default=0, help="row limit for the query (0: the gateway's)")
    q.add_argument("--timeout", type=float, default=0, help="seconds for the query (0: the gateway's)")
    q.set_defaults(func=cmd_query)
