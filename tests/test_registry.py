"""With a schema registry configured: the Confluent wire format, byte for byte as confluent-kafka writes it.

No Confluent Schema Registry is installable here (it is not on PyPI or Maven
Central), so the registry is a minimal server of the REST calls the client
makes (register a schema under a subject, fetch a schema by id), on loopback.
The client, the serializer and Kafka are the real ones.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ingest.deadletter import read_deadletters
from ingest.logread import make_consumer, read_ranges, watermarks
from ingest.publisher import Tickerplant
from ingest.replay import replay_rows
from ingest.topics import TopicNames

ROWS = [{"time": i, "sym": s, "price": 1.5 + i, "size": i, "exchange": "N", "cond": ""}
        for i in range(50) for s in ("AAPL", "MSFT")]


class _Registry(BaseHTTPRequestHandler):
    schemas: list[str] = []
    subjects: dict[str, list[int]] = {}

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        parts = self.path.split("?")[0].strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            schema = body["schema"]
            if schema not in self.schemas:
                self.schemas.append(schema)
            sid = self.schemas.index(schema) + 1
            self.subjects.setdefault(parts[1], []).append(sid)
            self._reply(200, {"id": sid})
        else:
            self._reply(404, {"error_code": 40400, "message": "not found"})

    def do_GET(self) -> None:  # noqa: N802
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and 0 < int(parts[2]) <= len(self.schemas):
            self._reply(200, {"schema": self.schemas[int(parts[2]) - 1], "schemaType": "AVRO"})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url():
    _Registry.schemas, _Registry.subjects = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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


@pytest.mark.parametrize("mode", ["zero", "batch"])
def test_confluent_framing_round_trip(settings, catalog, registry_url, mode):
    configured = settings.replace(schema_registry_url=registry_url)
    with Tickerplant(configured, catalog, mode=mode) as tp:
        tp.publish_rows("trade", ROWS)
    values = _values(configured, "trade")
    assert values and all(v[:1] == b"\x00" for v in values)
    subjects = set(_Registry.subjects)
    topic = TopicNames(settings.topic_prefix).table("trade")
    assert {f"{topic}-tickplant.trade", f"{topic}-tickplant.trade_block"} <= subjects
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
