"""The log archived beyond Kafka's retention (issue 16 part 3): a day archived at EOD, deleted by
the broker's retention, then rebuilt from the archive exactly as it was written from the log.

A broker of its own, which checks retention every half second (the session broker checks every
five minutes, and that setting cannot be changed while it runs); the day's topics get a retention
of a second once the day is archived. The archive is on S3 (SeaweedFS), the HDB in a directory.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from procs import wait_until
from s3server import s3  # noqa: F401 - the SeaweedFS fixture
from test_pdb import running_pdb

from ingest.deadletter import read_deadletters
from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.logread import make_consumer, watermarks
from ingest.publisher import Tickerplant
from ingest.replay import LogSource, replay_arrow
from ingest.topics import TopicNames, admin_client
from sinks.archive import DayArchiver
from sinks.archive_read import open_archive
from sinks.archive_store import ArchiveStore
from sinks.backfill import BackfillError, backfill
from sinks.store import HdbStore
from tickplant.cli import main as cli
from tickplant.clock import ManualClock
from tickplant.config import Settings
from tickplant.kafka.broker import EmbeddedKafka, free_port_pair

T0 = int(dt.datetime(2026, 11, 23, 14, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY, DAY2 = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
TABLES = ("trade", "quote")


class RetentionKafka(EmbeddedKafka):
    """A broker that applies retention within a second of it being due."""

    def _properties(self) -> str:
        return super()._properties() + "log.retention.check.interval.ms=500\n"


@pytest.fixture(scope="module")
def plant(tmp_path_factory, s3):  # noqa: F811 - the fixture imported above
    base = tmp_path_factory.mktemp("archive")
    kafka = RetentionKafka(Settings(data_dir=base / "kafka", kafka_port=free_port_pair(), kafka_heap="384m"))
    kafka.start()
    settings = kafka.settings.replace(
        data_dir=base / "plant", topic_prefix=f"a{uuid.uuid4().hex[:8]}.", hdb_root=str(base / "hdb"),
        archive_root=f"s3://{s3.bucket}/archive-{uuid.uuid4().hex[:6]}", s3_endpoint=s3.endpoint,
        batch_interval_ms=50,
    )
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.child_env().items():  # the CLI, run here, reads its settings from these
            mp.setenv(key, value)
        mp.delenv("TICKPLANT_CONFIG", raising=False)
        try:
            yield settings, base
        finally:
            kafka.stop()


def _publish_day(settings, catalog) -> None:
    """A day of trades in blocks (batch mode) and quotes a message each (zero-latency), plus a
    message no reader accepts (refused and dead-lettered the same from the log or the archive)."""
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    trades, quotes = SyntheticMarket(syms=12, seed=5, clock=clock).events(2500)
    with Tickerplant(settings, catalog, mode="batch") as tp:
        tp.publish_rows("trade", trades)
        tp.flush()
    with Tickerplant(settings, catalog, mode="zero") as tp:
        tp.publish_rows("quote", quotes[:600])
        tp.flush()
    raw = Producer(settings.kafka_config())
    raw.produce(TopicNames(settings.topic_prefix).table("trade"), key=b"AAPL", value=b"\xc3\x01 not avro",
                partition=0, headers=[("origin", b"test")])
    assert raw.flush(30) == 0
    clock.advance(86400)
    roll_day(settings, catalog, clock)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _archiver(settings: Settings, env_extra: dict[str, str], log: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.child_env(), **env_extra}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tickplant", "archive", "run", "--once"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def _delete_by_retention(settings: Settings, archived) -> None:
    """Give the day's topics a second of retention; wait until the broker deleted every archived offset."""
    names = TopicNames(settings.topic_prefix)
    resources = [ConfigResource(ResourceType.TOPIC, names.table(t), incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)]) for t in TABLES]
    admin = admin_client(settings)  # held: the futures fail if it is collected first
    for future in admin.incremental_alter_configs(resources).values():
        future.result()
    consumer = make_consumer(settings)
    try:
        def gone() -> bool:
            return all(watermarks(consumer, names.table(m.table), p)[0] > a.last_offset
                       for m in archived for p, a in m.partitions.items() if a.messages)
        wait_until(gone, 60, "the broker's retention to delete the archived day")
    finally:
        consumer.close()


def test_archive_survives_retention_and_rebuilds_the_day(plant, catalog, capsys):
    settings, base = plant
    _publish_day(settings, catalog)

    # from the log, before anything is deleted: the HDB partition and the replay
    from_log = {t: backfill(settings, t, DAY, catalog=catalog)[0] for t in TABLES}
    code, _, err = _cli(capsys, "replay", "trade", "--date", DAY.isoformat(), "--format", "csv", "--seq",
                        "--out", str(base / "log.csv"))
    assert code == 0, err
    quotes_from_log = replay_arrow(settings, "quote", DAY, catalog=catalog, seq=True)

    # the archiver killed (kill -9) half-way through the day's second partition of trades ...
    store = ArchiveStore.from_settings(settings)
    log = base / "archiver.log"
    proc = _archiver(settings, {"TICKPLANT_FAILPOINT": "archive-mid-file:trade:1"}, log)
    try:
        wait_until(lambda: "failpoint archive-mid-file:trade:1 reached" in log.read_text(), 60,
                   "the archiver to reach its failpoint", lambda: log.read_text()[-2000:])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert store.manifest("trade", DAY) is None  # unfinished: no manifest, so not an archived day
    assert "p000-00000.avro" in store.files.files("trade", DAY)
    # ... and run again: it finishes the day, the quotes' day too, once each
    proc = _archiver(settings, {}, log)
    assert proc.wait(60) == 0, log.read_text()[-2000:]
    archived = {t: store.manifest(t, DAY) for t in TABLES}
    assert all(archived.values())
    assert sorted(store.files.files("trade", DAY)) == sorted([f.name for f in archived["trade"].files]
                                                            + ["_manifest.json"])  # no strays, no second copy
    # the same as an archiver never interrupted writes (the sync markers depend only on the day)
    again, written = DayArchiver(settings, ArchiveStore(str(base / "archive-2"))).archive_day(
        "trade", DAY, archived["trade"].ranges)
    assert written and again.identity() == archived["trade"].identity()
    trade = archived["trade"]
    assert trade.messages == sum(a.messages for a in trade.partitions.values()) > 0
    assert trade.partitions[0].first_offset == 0
    assert len(trade.schemas) == 1 and archived["quote"].messages >= 600  # zero-latency: a message a quote

    # the PDB archives each day it sees closed, in a thread of its own beside the write-down
    clock = ManualClock(T0 + 86400 * 10**9)
    with running_pdb(settings) as pdb:
        with Tickerplant(settings, catalog) as tp:
            tp.publish_rows("trade", SyntheticMarket(syms=4, seed=6, clock=clock).events(300)[0])
            tp.flush()
        clock.advance(86400)
        roll_day(settings, catalog, clock)
        wait_until(lambda: store.manifest("trade", DAY2) and store.manifest("quote", DAY2), 60,
                   "the PDB to archive the second day", lambda: str(pdb.archive.failed))
    assert store.manifest("trade", DAY2).written_by == "pdb:pdb-1"
    # every table's day 2 (day 1 was archived already: once)
    assert {(m.table, m.date) for m in pdb.archive.archived} == {(t, DAY2) for t in catalog.names}

    # the log itself, message for message: offsets, keys, values, headers, time stamps
    for table in TABLES:
        ranges = archived[table].ranges
        assert list(open_archive(settings, table, DAY).messages(table, ranges)) == \
            list(LogSource(settings).messages(table, ranges))

    code, out, _ = _cli(capsys, "archive", "ls", "--verify")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("trade"))
    assert DAY.isoformat() in line and f"{trade.messages:,}" in line and line.rstrip().endswith("ok")

    # Kafka deletes the day; from the log it is gone for good
    _delete_by_retention(settings, archived.values())
    with pytest.raises(BackfillError, match="no longer holds all of trade"):
        backfill(settings, "trade", DAY, force=True, catalog=catalog)

    # rebuilt from the archive: the same Parquet files, checksum for checksum, and the same replay
    code, out, err = _cli(capsys, "hdb", "backfill", "--table", "trade", "--date", DAY.isoformat(),
                          "--from-archive", "--hdb-root", str(base / "hdb-rebuilt"))
    assert code == 0, err
    rebuilt = HdbStore(str(base / "hdb-rebuilt"))
    assert [(f.name, f.sha256) for f in rebuilt.manifest("trade", DAY).files] == \
        [(f.name, f.sha256) for f in from_log["trade"].files]
    quotes, _ = backfill(settings, "quote", DAY, catalog=catalog, store=HdbStore(str(base / "hdb-rebuilt")),
                         from_archive=True)
    assert [f.sha256 for f in quotes.files] == [f.sha256 for f in from_log["quote"].files]
    letters = read_deadletters(settings)
    assert [d["where"] for d in letters] == [f"{TopicNames(settings.topic_prefix).table('trade')}[0]@{trade.partitions[0].last_offset}"]
    code, _, err = _cli(capsys, "replay", "trade", "--date", DAY.isoformat(), "--format", "csv", "--seq",
                        "--from-archive", "--out", str(base / "archive.csv"))
    assert code == 0, err
    assert read_deadletters(settings) == letters  # refused again, reported once
    assert (base / "archive.csv").read_bytes() == (base / "log.csv").read_bytes()
    assert len((base / "log.csv").read_text().splitlines()) > 100
    origin = open_archive(settings, "quote", DAY)
    assert replay_arrow(settings, "quote", catalog=catalog, seq=True, ranges=origin.ranges,
                        origin=origin).equals(quotes_from_log)

    # a damaged file is refused, naming it
    victim = trade.files[0]
    path = store.path("trade", DAY, victim.name)
    data = bytearray(store.files.read_bytes(path))
    data[len(data) // 2] ^= 0xFF
    store.files.put_atomic(path, bytes(data))
    code, _, err = _cli(capsys, "replay", "trade", "--date", DAY.isoformat(), "--from-archive")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert victim.name in err and "SHA-256" in err and "does not match" in err
    code, out, _ = _cli(capsys, "archive", "ls", "--verify", "--table", "trade")
    assert code == 1 and victim.name in out


def test_archive_root_default_and_off(tmp_path):
    from sinks.archive_store import ArchiveError, archive_root

    assert archive_root(Settings(data_dir=tmp_path)) == str(tmp_path.resolve() / "archive")
    assert archive_root(Settings(data_dir=tmp_path, hdb_root=str(tmp_path / "x" / "hdb"))) == \
        str(tmp_path.resolve() / "x" / "archive")
    assert archive_root(Settings(hdb_root="s3://bucket/plant/hdb")) == "s3://bucket/plant/archive"
    assert archive_root(Settings(hdb_root="s3://bucket/hdb")) == "s3://bucket/archive"
    assert archive_root(Settings(archive_root="off")) is None
    with pytest.raises(ArchiveError, match="archive is off"):
        ArchiveStore.from_settings(Settings(archive_root="off"))
