"""The records that cross processes: control markers and node records, encoded and decoded
in one place; a malformed or newer record is a one-line error for the decoder and a logged
skip for the readers on the real topics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging

import pytest
from confluent_kafka import Producer

from ingest.eod import CONTROL_KEY, open_first_day, read_day_state
from ingest.metadata import MetadataPublisher, read_metadata
from ingest.node_record import (
    NODE_VERSION,
    CepRecord,
    DayHeld,
    GatewayRecord,
    PdbRecord,
    RdbRecord,
    TableHeld,
    decode_node,
    encode_node,
    node_fields,
)
from ingest.records import (
    MARKER_VERSION,
    EodMarker,
    OpenMarker,
    PublishedMarker,
    RecordError,
    decode_marker,
    encode_marker,
)
from ingest.topics import TopicNames
from tickplant.clock import ManualClock

DAY = dt.date(2026, 11, 22)
MARKERS = [
    OpenMarker(DAY, 123),
    EodMarker(DAY, DAY + dt.timedelta(days=1), 456, {"trade": {0: (0, 10), 1: (0, 7)}, "quote": {}}),
    PublishedMarker("trade", DAY, 17, 2, 4096, 1, 99, "s3://hdb", "pdb-1", 789),
]
NODES = [
    RdbRecord(node="rdb-1", updated=5.0, url="http://h:1", pid=7, rss=1 << 20, replica="b", memory_budget=1 << 30,
              cpu_s=1.5, instance_id="i-1", leaving=True, inflight_queries=2, queries=9, open_date="2026-11-22",
              serving=True, catching_up=("trade[1]",),
              tables={"trade": TableHeld((0, 1), {"2026-11-22": DayHeld(5, 1, 9, "open")}, {0: 4})},
              figures={"rows_applied": 5}),
    CepRecord(node="cep-1", updated=6.0, url="http://h:2", engine="bars", partitions=(0, 2), serving=True,
              outputs={"bars": "tp_bars"}, inputs=("tp_trade",), bar_seconds=60.0, analytics=("vwap",),
              open_date="2026-11-22", live_listeners=3, applied={"trade": {0: 11, 2: -1}}),
    PdbRecord(node="pdb-1", updated=7.0, host="h", partitions=("tp_trade[0]",), next={"trade[0]": 12},
              rows_captured=12, writing="trade 2026-11-21", queued=1),
    GatewayRecord(node="gw-1", updated=8.0, url="http://h:3", pid=9, load={"inflight_queries": 1.0}),
]


@pytest.mark.parametrize("marker", MARKERS, ids=lambda m: m.kind)
def test_a_marker_reads_back_as_written(marker):
    assert decode_marker(encode_marker(marker), "t@0") == marker


@pytest.mark.parametrize("record", NODES, ids=lambda r: r.kind)
def test_a_node_record_reads_back_as_written(record):
    assert decode_node(record.node, encode_node(record), "t@0") == record


def test_records_written_before_versions_read_as_version_one():
    old_eod = {"kind": "eod", "date": "2026-11-22", "next": "2026-11-23", "at": 1, "tables": {"trade": {"0": [0, 5]}}}
    marker = decode_marker(json.dumps(old_eod).encode(), "t@0")
    assert isinstance(marker, EodMarker) and marker.version == 1 and marker.tables == {"trade": {0: (0, 5)}}
    old_rdb = {"node": "r", "url": "http://x", "load": 3, "tables": {"trade": {"partitions": [0]}}}  # no kind: an RDB
    record = decode_node("r", json.dumps(old_rdb).encode(), "t@0")
    assert isinstance(record, RdbRecord) and record.inflight_queries == 3 and record.tables["trade"].partitions == (0,)


@pytest.mark.parametrize(("value", "says"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"kind": "eod", "version": MARKER_VERSION + 1, "date": "2026-11-22"}).encode(),
     f"version {MARKER_VERSION + 1}; this build reads versions up to {MARKER_VERSION}"),
    (json.dumps({"kind": "eod", "version": "two", "date": "2026-11-22"}).encode(), "version 'two'"),
    (json.dumps({"kind": "eod", "date": "2026-11-22", "tables": {}}).encode(), "'eod' marker without 'next'"),
    (json.dumps({"kind": "open", "date": "22/11/2026"}).encode(), "malformed 'open' marker"),
    (json.dumps({"kind": "eod", "date": "2026-11-22", "next": "2026-11-23", "tables": {"t": {"0": 5}}}).encode(),
     "malformed 'eod' marker"),
    (json.dumps({"kind": "closed", "date": "2026-11-22"}).encode(), "unknown kind 'closed'"),
])
def test_a_bad_marker_is_one_line_naming_where(value, says):
    with pytest.raises(RecordError) as err:
        decode_marker(value, "tp_control@42")
    message = str(err.value)
    assert says in message and message.startswith("tp_control@42: ") and "\n" not in message


@pytest.mark.parametrize(("fields", "says"), [
    ({"kind": "rdb", "version": NODE_VERSION + 1}, f"version {NODE_VERSION + 1}; this build reads"),
    ({"kind": "router"}, "unknown kind 'router'"),
    ({"kind": "rdb", "tables": {"trade": {"partitions": ["zero"]}}}, "malformed rdb record"),
    ({"kind": "pdb", "next": {"trade[0]": "x"}}, "malformed pdb record"),
    ({"kind": "cep", "partitions": 3}, "malformed cep record"),
])
def test_a_bad_node_record_is_one_line_naming_the_node(fields, says):
    with pytest.raises(RecordError) as err:
        decode_node("n-1", json.dumps(fields).encode(), "tp_metadata@3")
    message = str(err.value)
    assert says in message and message.startswith("tp_metadata@3: node 'n-1': ") and "\n" not in message


def test_the_wire_form_keeps_the_fields_readers_knew():
    fields = node_fields(NODES[0])
    assert fields["kind"] == "rdb" and fields["version"] == NODE_VERSION and "stale" not in fields
    assert fields["load"] == {"inflight_queries": 2, "queries": 9} and fields["rows_applied"] == 5
    assert fields["tables"]["trade"]["applied"] == {"0": 4}


def test_readers_skip_what_they_cannot_read_and_keep_the_rest(settings, catalog, caplog):
    names = TopicNames(settings.topic_prefix)
    noon = int(dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC).timestamp() * 1e9)
    open_first_day(settings, catalog, ManualClock(noon))  # the topics, and the open marker
    producer = Producer(settings.kafka_config())
    newer = json.dumps({"kind": "open", "version": MARKER_VERSION + 1, "date": "2030-01-01"}).encode()
    producer.produce(names.control, key=CONTROL_KEY, value=newer)
    producer.produce(names.control, key=CONTROL_KEY, value=b"{broken")
    producer.produce(names.metadata, key=b"rdb-bad", value=b"{broken")
    producer.produce(names.metadata, key=b"rdb-newer", value=json.dumps({"version": NODE_VERSION + 1}).encode())
    producer.flush(10)
    gateway = MetadataPublisher(settings, "gw-1")
    gateway.publish(dataclasses.replace(NODES[3], updated=0.0))  # stamped now by the publisher
    gateway.producer.flush(10)
    with caplog.at_level(logging.WARNING):
        state = read_day_state(settings)
        nodes = read_metadata(settings, include_stale=True)
    assert state.open_date == DAY and len(state.markers) == 1
    assert list(nodes) == ["gw-1"] and nodes["gw-1"].url == NODES[3].url and not nodes["gw-1"].stale
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped: ")]
    assert any(f"version {MARKER_VERSION + 1}" in m for m in skipped) and any("not JSON" in m for m in skipped)
    assert any("'rdb-bad'" in m for m in skipped) and any("'rdb-newer'" in m for m in skipped)
