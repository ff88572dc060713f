"""With a schema registry configured: the Confluent wire format, read by the Kafka ecosystem's own tools.

The registry is a real one, Apicurio Registry (its Confluent-compatible API),
built from Maven Central by ``tickplant install --schema-registry`` and started
once for this module on loopback (``tickplant.kafka.registry_server``). The
readers are the ecosystem's own: confluent-kafka's ``AvroSerializer`` and
``AvroDeserializer`` with ``SchemaRegistryClient``, and ClickHouse (chDB) reading
the messages as ``AvroConfluent``, as its Kafka engine does.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import chdb
import pytest

from ingest.deadletter import read_deadletters
from ingest.decoder import Decoder
from ingest.framing import encode_row
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.publisher import Tickerplant
from ingest.registry import Registry
from ingest.replay import replay_rows
from ingest.schemas import SchemaCatalog, TableSchema, plain
from ingest.topics import TopicNames
from tickplant.kafka.broker import free_port
from tickplant.kafka.registry_server import RegistryServer

T0 = 1_795_000_000_000_000_000
ROWS = [{"time": T0 + i, "sym": s, "price": 1.5 + i, "size": i, "exchange": "N", "cond": ""}
        for i in range(50) for s in ("AAPL", "MSFT")]


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory):
    server = RegistryServer(free_port(), tmp_path_factory.mktemp("registry") / "registry.log").start()
    try:
        yield server.url
    finally:
        server.stop()


def _subjects(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/subjects", timeout=10) as reply:
        return set(json.load(reply))


def _values(settings, table: str) -> list[bytes]:
    topic = TopicNames(settings.topic_prefix).table(table)
    consumer = make_consumer(settings)
    try:
        out = []
        for p in range(settings.partitions):
            end = watermarks(consumer, topic, p)[1]
            out.extend(m.value() for m in read_ranges(consumer, topic, {p: (0, end)}))
        return out
    finally:
        consumer.close()


def _rows_of(table: TableSchema, n: int) -> list[dict[str, Any]]:
    """n rows of any table of schemas/, every field given a value of its type."""
    made = {"long": lambda i: 1_000 * i - 7, "int": lambda i: i, "double": lambda i: 0.25 + i,
            "float": lambda i: 0.5 * i, "string": lambda i: f"v{i}é", "boolean": lambda i: i % 2 == 0}
    rows = []
    for i in range(n):
        row = {f["name"]: made[table.column_type(f["name"])[0]](i) for f in table.fields}
        rows.append(row | {"time": T0 + i, "sym": ("AAPL", "MSFT", "IBM")[i % 3]})
    return rows


@pytest.mark.parametrize("mode", ["zero", "batch"])
def test_confluent_framing_round_trip(settings, catalog, registry_url, mode):
    configured = settings.replace(schema_registry_url=registry_url)
    with Tickerplant(configured, catalog, mode=mode) as tp:
        tp.publish_rows("trade", ROWS)
    values = _values(configured, "trade")
    assert values and all(v[:1] == b"\x00" for v in values)
    topic = TopicNames(settings.topic_prefix).table("trade")
    assert {f"{topic}-tickplant.trade", f"{topic}-tickplant.trade_block"} <= _subjects(registry_url)
    got = sorted(replay_rows(configured, "trade", catalog=catalog), key=lambda r: (r["time"], r["sym"]))
    assert got == sorted(ROWS, key=lambda r: (r["time"], r["sym"]))
    # without the registry a reader decodes nothing rather than guess, and says why: each
    # message goes to the dead-letter topic once, with the reason
    assert list(replay_rows(settings, "trade", catalog=catalog)) == []
    letters = [d for d in read_deadletters(settings) if "no schema_registry_url" in d.get("reason", "")]
    assert len(letters) == len(values), letters[:2]


def test_row_messages_are_what_confluent_kafkas_serializer_writes(settings, catalog, registry_url):
    from confluent_kafka.schema_registry import (
        SchemaRegistryClient,
        topic_record_subject_name_strategy,
    )
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    configured = settings.replace(schema_registry_url=registry_url)
    with Tickerplant(configured, catalog, mode="zero") as tp:
        tp.publish("trade", ROWS[0])
    ours = _values(configured, "trade")[0]
    topic = TopicNames(settings.topic_prefix).table("trade")
    serializer = AvroSerializer(
        SchemaRegistryClient({"url": registry_url}), json.dumps(catalog["trade"].avro),
        conf={"auto.register.schemas": True, "subject.name.strategy": topic_record_subject_name_strategy},
    )
    theirs = serializer(ROWS[0], SerializationContext(topic, MessageField.VALUE))
    assert ours == theirs


@pytest.fixture(scope="module")
def every_table(broker, catalog, registry_url, tmp_path_factory):
    """Every table of schemas/ published in registry mode, as row messages (zero-latency) and
    as block messages (batch): (settings, rows per table, (row values, block values) per table)."""
    settings = broker.settings.replace(
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.", data_dir=tmp_path_factory.mktemp("every") / "plant",
        batch_interval_ms=50, schema_registry_url=registry_url)
    rows = {t.name: _rows_of(t, 60) for t in catalog}
    for mode, half in (("zero", slice(0, 30)), ("batch", slice(30, 60))):
        with Tickerplant(settings, catalog, mode=mode) as tp:
            for t in catalog:
                tp.publish_rows(t.name, rows[t.name][half])
    values = {}
    registry = Registry(registry_url)
    for t in catalog:
        got = _values(settings, t.name)
        blocks = [v for v in got if registry.writer(int.from_bytes(v[1:5], "big"))[1]]
        values[t.name] = ([v for v in got if v not in blocks], blocks)
        assert values[t.name][0] and values[t.name][1], f"{t.name}: both kinds of message expected"
    return settings, rows, values


def _key(row: dict[str, Any]) -> tuple:
    return row["time"], row["sym"]


def test_a_plain_confluent_consumer_decodes_every_table(catalog, registry_url, every_table):
    """What a Kafka user's own consumer gets: AvroDeserializer with the registry, no tickplant
    code. A row message is the table's record, a block a ``<table>_block`` record of its rows."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    settings, rows, values = every_table
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    for t in catalog:
        context = SerializationContext(TopicNames(settings.topic_prefix).table(t.name), MessageField.VALUE)
        row_values, block_values = values[t.name]
        got = [deserializer(v, context) for v in row_values]
        for v in block_values:
            block = deserializer(v, context)
            assert set(block) == {"rows"}, block
            got.extend(block["rows"])
        assert sorted(got, key=_key) == sorted(rows[t.name], key=_key), t.name


def test_clickhouse_reads_every_table_as_avroconfluent(catalog, registry_url, every_table, tmp_path: Path):
    """ClickHouse's AvroConfluent format (its Kafka engine's, with format_avro_schema_registry_url):
    the row messages are the table's rows; a block is one row of ``rows``, ARRAY JOIN gives its rows."""
    _, rows, values = every_table
    settings = (f"SETTINGS format_avro_schema_registry_url='{registry_url}', "
                "output_format_json_quote_64bit_integers=0, output_format_json_quote_denormals=1")
    for t in catalog:
        row_values, block_values = values[t.name]
        (tmp_path / f"{t.name}.rows").write_bytes(b"".join(row_values))
        (tmp_path / f"{t.name}.blocks").write_bytes(b"".join(block_values))
        columns = ", ".join(f"r.{c} AS {c}" for c in t.columns)
        got = []
        for sql in (f"SELECT * FROM file('{tmp_path / t.name}.rows', 'AvroConfluent') {settings}",
                    f"SELECT {columns} FROM file('{tmp_path / t.name}.blocks', 'AvroConfluent') "
                    f"ARRAY JOIN rows AS r {settings}"):
            text = chdb.query(sql, "JSONEachRow").bytes().decode()
            got.extend(json.loads(line) for line in text.splitlines() if line)
        assert sorted(got, key=_key) == sorted(rows[t.name], key=_key), t.name


def test_time_as_timestamp_nanos_keeps_old_messages_readable(settings, catalog, registry_url):
    """``time`` carries Avro's timestamp-nanos logical type. The canonical form (the fingerprint)
    has no logical types, so messages written before it, framed either way, decode as before,
    and a reader with the old schemas decodes the new messages: same fingerprint, same bytes."""
    trade = catalog["trade"]
    assert trade.avro["fields"][0]["type"] == {"type": "long", "logicalType": "timestamp-nanos"}
    old = TableSchema.from_dict(plain(trade.avro))  # as schemas/trade.avsc was
    assert old.fingerprint == trade.fingerprint
    assert encode_row(old, ROWS[0]) == encode_row(trade, ROWS[0])
    old_catalog = SchemaCatalog({t.name: (old if t.name == "trade" else t) for t in catalog})
    assert Decoder(old_catalog).decode(encode_row(trade, ROWS[0])) == ("trade", [ROWS[0]])
    # registry mode: a message under the old schema's id (a plant before the change registered
    # it), then the new schema registered as a new version beside it; every reader reads both
    configured = settings.replace(schema_registry_url=registry_url)
    topic = TopicNames(settings.topic_prefix).table("trade")
    with Tickerplant(configured, old_catalog, mode="zero") as tp:
        tp.publish_rows("trade", ROWS[:10])
    with Tickerplant(configured, catalog, mode="zero") as tp:
        tp.publish_rows("trade", ROWS[10:20])
    values = _values(configured, "trade")
    assert len({v[1:5] for v in values}) == 2, "one schema id before the change, one after"
    got = sorted(replay_rows(configured, "trade", catalog=catalog), key=_key)
    assert got == sorted(ROWS[:20], key=_key)
    assert sorted(replay_rows(configured, "trade", catalog=old_catalog), key=_key) == got
    registry = Registry(registry_url)
    decoder = Decoder(catalog, registry=registry)
    assert sorted((r for v in values for r in decoder.decode(v)[1]), key=_key) == got
    assert {f"{topic}-tickplant.trade"} <= _subjects(registry_url)
