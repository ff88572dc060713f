"""``hdb backfill`` over a day whose log holds poison (issue 20): the bad messages are
dead-lettered once and left out, and ``--force`` writes beside the published partition,
which stays whole if the rewrite fails."""

from __future__ import annotations

import datetime as dt

import pytest
from confluent_kafka import Producer

from ingest.deadletter import read_deadletters
from ingest.eod import open_first_day, roll_day
from ingest.feeds.synthetic import SyntheticMarket
from ingest.framing import encode_row
from ingest.publisher import Tickerplant
from ingest.topics import TopicNames
from sinks import backfill as backfill_module
from sinks.backfill import backfill
from sinks.manifest import LATEST_FILE
from sinks.store import HdbStore
from tickplant.clock import ManualClock

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY = dt.date(2026, 11, 22)


def test_backfill_skips_poison_and_force_swaps_only_on_success(settings, catalog, monkeypatch):
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    with Tickerplant(settings, catalog) as tp:
        trades, _ = SyntheticMarket(syms=6, seed=2, clock=clock).events(3000)
        tp.publish_rows("trade", trades)
        tp.flush()
    raw = Producer(settings.kafka_config())
    topic = TopicNames(settings.topic_prefix).table("trade")
    quote = {"time": T0, "sym": "AAPL", "bid": 1.0, "ask": 1.1, "bsize": 1, "asize": 1, "exchange": "N"}
    for value in (b"\xc3\x01 not avro", encode_row(catalog["quote"], quote)):
        raw.produce(topic, key=b"AAPL", value=value, partition=0)
    assert raw.flush(30) == 0
    clock.advance(86400)
    roll_day(settings, catalog, clock)

    store = HdbStore.from_settings(settings)
    first, written = backfill(settings, "trade", DAY, catalog=catalog)
    assert written and first.rows == len(trades)
    letters = read_deadletters(settings)
    assert sorted(d["where"].split("@")[0] for d in letters) == [f"{topic}[0]", f"{topic}[0]"]

    # a rewrite that fails half way (the log read breaks off): the published partition is untouched
    real = backfill_module._batches

    def broken(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)
        raise RuntimeError("the log went away")

    monkeypatch.setattr(backfill_module, "_batches", broken)
    with pytest.raises(RuntimeError, match="went away"):
        backfill(settings, "trade", DAY, force=True, catalog=catalog)
    assert store.manifest("trade", DAY).identity() == first.identity()
    assert store.verify(first) == []
    assert sorted(store.files("trade", DAY)) == sorted([f.name for f in first.files] + ["_manifest.json", LATEST_FILE])
    assert not any(".rewrite-" in name for name in _names(store, store.table_dir("trade")))  # staging removed

    monkeypatch.setattr(backfill_module, "_batches", real)
    again, written = backfill(settings, "trade", DAY, force=True, catalog=catalog)
    assert written and again.written_at != first.written_at and again.identity() == first.identity()
    assert store.verify(again) == [] and again.latest is not None  # the latest rows' file swapped in too
    assert len(read_deadletters(settings)) == len(letters)  # read again, not dead-lettered again


def _names(store: HdbStore, path: str) -> list[str]:
    import pyarrow.fs as pafs

    return [info.path for info in store.fs.get_file_info(pafs.FileSelector(path, recursive=True))]
