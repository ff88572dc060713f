"""The log's archive (sinks/archive.py): archiving a closed day, and replaying it from the archive.

    python -m bench.archive [--quick]      (or all benchmarks: python -m bench)

A day of quotes in batch mode (blocks) and trades in zero-latency mode (a
message each) is published and closed; then, each beside its baseline in the
same run:

- archiving the day (read from Kafka, Avro container files written, hashed,
  manifest) against reading the same ranges from Kafka and doing nothing with
  them: what the archive adds to the read it cannot avoid;
- ``replay_arrow`` of the day from the archive (every file hashed, then
  decoded) against the same replay from the log.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Report, Result, fresh, run_alone
from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.logread import make_consumer, read_ranges
from ingest.publisher import Tickerplant
from ingest.replay import day_ranges, replay_arrow
from ingest.schemas import SchemaCatalog
from ingest.topics import TopicNames
from sinks.archive import DayArchiver
from sinks.archive_read import open_archive
from sinks.archive_store import ArchiveStore
from tickplant.clock import ManualClock
from tickplant.config import Settings

T0 = 1_795_444_200_000_000_000  # 2026-11-23 14:30 UTC


def _read_only(settings: Settings, table: str, ranges: dict[int, tuple[int, int]]) -> int:
    consumer = make_consumer(settings)
    try:
        topic = TopicNames(settings.topic_prefix).table(table)
        return sum(1 for p in sorted(ranges) for _ in read_ranges(consumer, topic, {p: ranges[p]}))
    finally:
        consumer.close()


def _best(repeat: int, run) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
    return best, out


def collect(settings: Settings, args: argparse.Namespace) -> Report:
    settings = fresh(settings)
    quotes_n = args.rows or (200_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 2)
    catalog = SchemaCatalog.load(settings.schemas_dir)
    report = Report()
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    trades, quotes = SyntheticMarket(syms=200, seed=3, clock=clock).events(quotes_n)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("quote", quotes)
        tp.flush()
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("trade", trades)
        tp.flush()
    clock.advance(86400)
    date = roll_day(settings, catalog, clock).date
    print(f"  {len(quotes):,} quotes (blocks) and {len(trades):,} trades (a message each) closed on {date}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        archived_settings = settings.replace(archive_root=str(Path(tmp) / "replay"))
        for table, what, rows_n in (("quote", "blocks", len(quotes)), ("trade", "a message each", len(trades))):
            ranges = day_ranges(settings, table, date)
            base, messages = _best(repeat, lambda t=table, r=ranges: _read_only(settings, t, r))

            def archive(t=table, r=ranges, d=date) -> object:
                store = ArchiveStore(str(Path(tmp) / f"a{time.perf_counter_ns()}"))
                return DayArchiver(settings, store).archive_day(t, d, r)[0]

            seconds, manifest = _best(repeat, archive)
            report.results.append(Result(f"archive a day of {table} ({what})", rows_n / seconds, rows_n / base,
                                         note=f"baseline: the same read from Kafka alone; {messages:,} messages, "
                                         f"{manifest.bytes / 1e6:.1f} MB archived"))
            DayArchiver(archived_settings).archive_day(table, date, ranges)
            log_s, from_log = _best(repeat, lambda t=table, d=date: replay_arrow(settings, t, d, catalog=catalog))

            def from_archive(t=table, d=date) -> object:
                origin = open_archive(archived_settings, t, d)
                return replay_arrow(settings, t, catalog=catalog, ranges=origin.ranges, origin=origin)

            arch_s, rows = _best(repeat, from_archive)
            assert rows.equals(from_log), f"{table}: the archive's replay differs from the log's"
            report.results.append(Result(f"replay {table} from the archive", rows.num_rows / arch_s,
                                         rows.num_rows / log_s, note="baseline: the same replay from the log"))
    return report


def main(argv: list[str] | None = None) -> int:
    return run_alone(collect, "python -m bench.archive", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
