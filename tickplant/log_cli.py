"""The log's commands: feed it (CSV, synthetic), roll its day, replay it, subscribe to it,
read its dead letters (registered by tickplant/cli.py)."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import threading
import time
from typing import Any

from tickplant.cliargs import parse_date, settings_from_args
from tickplant.config import Settings
from tickplant.textable import format_ns, format_table

EXIT_REJECTS = 3  # a feed that published but rejected rows (they are in the dead-letter topic)


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


def cmd_deadletters(args: argparse.Namespace) -> int:
    from ingest.deadletter import read_deadletters

    letters = read_deadletters(settings_from_args(args))[-args.last:]
    print(format_table(
        ["time", "source", "table", "where", "reason"],
        [[dt.datetime.fromtimestamp(d["time"] / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
          d["source"], d["table"], d["where"], d["reason"][:100]] for d in letters],
    ))
    return 0

