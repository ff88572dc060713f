"""The batch loader's commands: ``tickplant ingest load | watch | ls``.

``add_commands(sub, common)`` registers them on the CLI's subparsers (the
main parser in ``tickplant.cli`` calls it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import sys
import threading
from typing import Any

from tickplant.cliargs import settings_from_args
from tickplant.textable import format_table

EXIT_REJECTS = 3  # as tickplant feed csv: some rows were rejected (all are on the dead-letter topic)


def _interrupt(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ns else ""


def _say(result: Any, show: int) -> None:
    r = result.record
    if result.already:
        print(f"{r.url}: already loaded ({r.rows:,} rows into {r.table}, {r.rejected:,} rejected, "
              f"{_when(r.updated_ns)} UTC): nothing published")
        return
    for bad in result.rejected[:show]:
        print(f"{bad.where}: {bad.reason}")
    if r.rejected > show:
        print(f"... {r.rejected - min(show, len(result.rejected)):,} more rejected rows (all on the dead-letter topic)")
    resumed = f", resumed after chunk {result.resumed_at}" if result.resumed_at else ""
    print(f"{r.url}: {r.rows:,} rows into {r.table}, {r.rejected:,} rejected{resumed} (sha256 {r.checksum[:16]}...)")


def cmd_ingest_load(args: argparse.Namespace) -> int:
    from ingest.batchload import BatchLoader

    settings = settings_from_args(args)
    loader = BatchLoader(settings)

    def progress(record: Any) -> None:
        print(f"\r{record.url}: chunk {record.chunks}, {record.rows:,} rows, {record.rejected:,} rejected",
              end="", file=sys.stderr, flush=True)

    rejected = 0
    for target in args.objects:
        result = loader.load(target, table=args.table, version=args.version or "", progress=progress)
        print("", file=sys.stderr)
        _say(result, args.show_errors)
        rejected += 0 if result.already else len(result.rejected)
    return EXIT_REJECTS if rejected else 0


def cmd_ingest_watch(args: argparse.Namespace) -> int:
    from ingest.batchload import BatchLoader
    from ingest.batchwatch import watch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from_args(args)
    loader = BatchLoader(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: an open chunk's transaction is aborted

    def on_result(ref: Any, result: Any) -> None:
        if isinstance(result, Exception):
            print(f"{ref.url}: not loaded: {result}", flush=True)
        else:
            _say(result, args.show_errors)
            sys.stdout.flush()

    how = f"SQS queue {args.sqs}" if args.sqs else f"every {loader.options.poll_seconds:g}s"
    print(f"watching {args.source} ({how}); Ctrl-C stops", flush=True)
    watch(loader, args.source, stop, on_result, sqs_url=args.sqs or "", sqs_endpoint=args.sqs_endpoint or "")
    return 0


def cmd_ingest_ls(args: argparse.Namespace) -> int:
    from ingest.loadlog import read_loads

    records = read_loads(settings_from_args(args))
    if args.table:
        records = [r for r in records if r.table == args.table]
    if not records:
        print("no objects loaded" + (f" into {args.table}" if args.table else ""))
        return 0
    print(format_table(
        ["object", "version", "table", "state", "rows", "rejected", "sha256", "loaded (UTC)"],
        [[r.url, (r.version or r.etag)[:16] or "file", r.table, r.state if r.done else f"{r.state} ({r.chunks} chunks)",
          r.rows, r.rejected, r.checksum[:16], _when(r.updated_ns)] for r in records[-args.last:]],
    ))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    ingest = sub.add_parser("ingest", parents=[common], help="batch loads of CSV and Parquet files and S3 objects")
    cmds = ingest.add_subparsers(dest="ingest_command", required=True, metavar="COMMAND")
    load = cmds.add_parser("load", parents=[common], help="load objects (paths or s3://bucket/key) exactly once")
    load.add_argument("objects", nargs="+", metavar="OBJECT")
    load.add_argument("--table", help="the table, for objects no [ingest.sources] entry matches")
    load.add_argument("--version", help="an S3 object's version id (default: the latest)")
    load.add_argument("--show-errors", type=int, default=20, help="rejected rows printed (all are dead-lettered)")
    load.set_defaults(func=cmd_ingest_load)
    wat = cmds.add_parser("watch", parents=[common], help="load what lands in a directory or s3://bucket/prefix")
    wat.add_argument("source", metavar="SOURCE")
    wat.add_argument("--sqs", help="an SQS queue URL receiving the bucket's S3 event notifications")
    wat.add_argument("--sqs-endpoint", help="a non-AWS SQS endpoint (http://host:port)")
    wat.add_argument("--show-errors", type=int, default=5)
    wat.set_defaults(func=cmd_ingest_watch)
    ls = cmds.add_parser("ls", parents=[common], help="objects loaded: rows, rejected, checksum, when")
    ls.add_argument("--table")
    ls.add_argument("--last", type=int, default=100)
    ls.set_defaults(func=cmd_ingest_ls)
