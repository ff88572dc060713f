"""The ``tickplant archive`` commands: ``ls`` (archived days) and ``run`` (the archiver alone).

``add_commands(sub, common)`` registers them on the CLI's subparsers; each
command is a function of the parsed arguments returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from tickplant.cliargs import settings_from_args
from tickplant.textable import format_bytes, format_table


def cmd_archive_ls(args: argparse.Namespace) -> int:
    """List archived days: messages, files, size, offsets; ``--verify`` checks every file's SHA-256."""
    from sinks.archive_read import ArchiveSource
    from sinks.archive_store import ArchiveStore

    settings = settings_from_args(args, need_kafka=False)
    store = ArchiveStore.from_settings(settings)
    manifests = sorted(store.manifests(args.table), key=lambda m: (m.table, m.date))
    print(f"archive at {store.display_root}")
    if not manifests:
        print(f"no archived days{' of ' + args.table if args.table else ''}")
        return 0
    rows: list[list[Any]] = []
    damaged = 0
    for m in manifests:
        offsets = ", ".join(f"{p}:{a.first_offset}-{a.last_offset}" for p, a in sorted(m.partitions.items())
                            if a.messages)
        row = [m.table, m.date.isoformat(), len(m.partitions), m.messages, len(m.files), format_bytes(m.bytes),
               offsets, m.written_by]
        if args.verify:
            problems = ArchiveSource(store, m).verify()
            damaged += bool(problems)
            row.append("ok" if not problems else problems[0])
        rows.append(row)
    header = ["table", "date", "partitions", "messages", "files", "size", "offsets (partition:first-last)", "by"]
    print(format_table(header + (["check"] if args.verify else []), rows))
    print(f"{len(manifests)} day(s), {sum(m.messages for m in manifests):,} messages, "
          f"{format_bytes(sum(m.bytes for m in manifests))}")
    return 1 if damaged else 0


def cmd_archive_run(args: argparse.Namespace) -> int:
    """Archive closed days: ``--once`` those closed now, else in the foreground until Ctrl-C / SIGTERM."""
    from ingest.eod import read_day_state
    from ingest.schemas import SchemaCatalog
    from sinks.archive import ArchiveThread

    settings = settings_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    archiver = ArchiveThread.for_settings(settings, catalog, args.id)
    if archiver is None:
        print("the archive is off (archive_root = 'off'); nothing to do", file=sys.stderr)
        return 2
    where = archiver.archiver.store.display_root
    if args.once:
        archiver.archive_closed(read_day_state(settings).closed)
        for m in archiver.archived:
            print(f"{m.table} {m.date}: {m.messages:,} messages in {len(m.files)} file(s), {format_bytes(m.bytes)}, "
                  f"archived at {where}")
        for (table, date), (_, error) in sorted(archiver.failed.items()):
            print(f"{table} {date}: {error}", file=sys.stderr)
        if not archiver.archived and not archiver.failed:
            print(f"every closed day is archived at {where}")
        return 1 if archiver.failed else 0
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"archiver {args.id}: archiving each closed day to {where}; Ctrl-C stops it", flush=True)
    archiver.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        archiver.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``archive ls`` and ``archive run`` on the CLI's subparsers."""
    archive = sub.add_parser("archive", parents=[common], help="the log archived beyond Kafka's retention")
    actions = archive.add_subparsers(dest="archive", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", parents=[common], help="archived days with their messages and sizes")
    ls.add_argument("--table", help="only this table")
    ls.add_argument("--verify", action="store_true", help="read every file and check its SHA-256 (exit 1 if damaged)")
    ls.set_defaults(func=cmd_archive_ls)
    run = actions.add_parser("run", parents=[common], help="archive closed days (the PDB also does, in a thread)")
    run.add_argument("--once", action="store_true", help="archive the days closed now, then exit")
    run.add_argument("--id", default="archiver", help="who wrote the archive (in its manifests)")
    run.set_defaults(func=cmd_archive_run)
