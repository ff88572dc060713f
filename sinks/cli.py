"""The PDB and HDB commands of ``tickplant``: ``hdb ls``, ``hdb backfill``, ``pdb run``.

``add_commands(sub, common)`` registers them on the CLI's subparsers (the
main parser in ``tickplant.cli`` calls it); each command is a function of
the parsed arguments returning an exit code.
"""

from __future__ import annotations

import argparse
from typing import Any

from tickplant.cliargs import parse_date, settings_from_args
from tickplant.textable import format_bytes, format_ns, format_table

_size = format_bytes


def cmd_hdb_ls(args: argparse.Namespace) -> int:
    """List published partitions: rows, files, size, syms, time range."""
    from sinks.store import HdbStore

    settings = settings_from_args(args, need_kafka=False)
    store = HdbStore.from_settings(settings)
    manifests = store.manifests(args.table)
    if args.table is None and not manifests:
        print(f"no partitions in {store.display_root}")
        return 0
    rows: list[list[Any]] = [[
        m.table, m.date.isoformat(), m.rows, len(m.files), _size(m.bytes), len(m.syms),
        format_ns(m.time_min)[:19] if m.time_min is not None else "", format_ns(m.time_max)[:19]
        if m.time_max is not None else "", "yes" if m.latest is not None else "no", m.written_by,
    ] for m in sorted(manifests, key=lambda m: (m.table, m.date))]
    print(f"HDB at {store.display_root}")
    if not rows:
        print(f"no partitions of {args.table}")
        return 0
    # latest: the day keeps each sym's latest row apart (sinks.latest); "no": written before that existed
    print(format_table(["table", "date", "rows", "files", "size", "syms", "first", "last", "latest", "by"], rows))
    total = sum(m.bytes for m in manifests)
    print(f"{len(manifests)} partition(s), {sum(m.rows for m in manifests):,} rows, {_size(total)}")
    return 0


def cmd_hdb_backfill(args: argparse.Namespace) -> int:
    """Write a past day's partition from the retained log and publish it."""
    from sinks.backfill import backfill

    settings = settings_from_args(args)
    manifest, written = backfill(settings, args.table, args.date, force=args.force, from_archive=args.from_archive)
    where = f"{manifest.table}/date={manifest.date.isoformat()}"
    if not written:
        print(f"{manifest.table} {manifest.date} is already in the HDB ({manifest.rows:,} rows, {where}); "
              "--force rewrites it")
        return 0
    print(f"{manifest.table} {manifest.date}: {manifest.rows:,} rows in {len(manifest.files)} file(s), "
          f"{_size(manifest.bytes)}, published at {where}")
    return 0


def cmd_pdb_run(args: argparse.Namespace) -> int:
    """Run the PDB in the foreground until Ctrl-C / SIGTERM."""
    from sinks.pdb import run_pdb
    from sinks.store import HdbStore
    from tickplant.observe import observe_role

    settings = settings_from_args(args)
    listener = observe_role(settings, "pdb", args.id, listen=True, port=args.metrics_port,
                            budget_bytes=settings.pdb_memory_mb << 20)
    where = f"; metrics at :{listener.port}/metrics" if listener else ""
    print(f"PDB {args.id}: capturing into {settings.data_dir}/pdb, writing to "
          f"{HdbStore.from_settings(settings).display_root}{where}; Ctrl-C stops it", flush=True)
    run_pdb(settings, args.id)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``hdb ls``, ``hdb backfill`` and ``pdb run`` on the CLI's subparsers."""
    hdb = sub.add_parser("hdb", parents=[common], help="the historical database (Parquet partitions)")
    hdbs = hdb.add_subparsers(dest="hdb", required=True, metavar="ACTION")
    ls = hdbs.add_parser("ls", parents=[common], help="published partitions with their rows and sizes")
    ls.add_argument("--table", help="only this table")
    ls.add_argument("--hdb-root", help="the HDB root (default: setting hdb_root, else <data_dir>/hdb)")
    ls.set_defaults(func=cmd_hdb_ls)
    bf = hdbs.add_parser("backfill", parents=[common], help="write a past day's partition from the log")
    bf.add_argument("--table", required=True)
    bf.add_argument("--date", required=True, type=parse_date, help="a closed day, YYYY-MM-DD")
    bf.add_argument("--force", action="store_true", help="rewrite the partition if it is already published")
    bf.add_argument("--from-archive", action="store_true",
                    help="read the day from the log's archive (setting archive_root), once Kafka has deleted it")
    bf.add_argument("--hdb-root", help="the HDB root (default: setting hdb_root, else <data_dir>/hdb)")
    bf.set_defaults(func=cmd_hdb_backfill)

    pdb = sub.add_parser("pdb", parents=[common], help="the persisting database (captures, writes down)")
    pdbs = pdb.add_subparsers(dest="pdb", required=True, metavar="ACTION")
    run = pdbs.add_parser("run", parents=[common], help="run the PDB in the foreground")
    run.add_argument("--id", default="pdb-1", help="node id (its static group membership)")
    run.add_argument("--metrics-port", type=int,
                     help="the Prometheus listener's port (default: setting metrics_port; 0: none)")
    run.set_defaults(func=cmd_pdb_run)
