"""A Confluent schema registry, when one is configured (``schema_registry_url``).

Messages then use the Confluent wire format, readable by any Confluent
client: magic byte 0, the 4-byte schema id, the Avro body. Row messages
carry the table's record schema; block messages carry a record
``<table>_block`` with one field ``rows``, an array of the table's records,
whose Avro encoding is exactly the array's, so the body is the same bytes as
in our own framing. Both are registered under the TopicRecordNameStrategy
subjects (``<topic>-<namespace>.<name>``), so the row and block schemas of a
table evolve side by side, each checked for compatibility by the registry.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from ingest.schemas import TableSchema

CONFLUENT_MAGIC = b"\x00"


class RegistryError(RuntimeError):
    """The registry refused a schema or could not be reached."""


def block_schema(table: TableSchema) -> dict[str, Any]:
    namespace = table.avro.get("namespace")
    record = {
        "type": "record",
        "name": f"{table.name}_block",
        "fields": [{"name": "rows", "type": {"type": "array", "items": table.avro}}],
    }
    if namespace:
        record["namespace"] = namespace
    return record


def _full_name(avro: dict[str, Any]) -> str:
    namespace = avro.get("namespace")
    return f"{namespace}.{avro['name']}" if namespace else avro["name"]


class Registry:
    def __init__(self, url: str, config: dict[str, str] | None = None):
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url
        self.client = SchemaRegistryClient({"url": url, **(config or {})})

    def register(self, topic: str, avro: dict[str, Any]) -> int:
        from confluent_kafka.schema_registry import Schema

        subject = f"{topic}-{_full_name(avro)}"
        try:
            return self.client.register_schema(subject, Schema(json.dumps(avro), "AVRO"))
        except Exception as exc:  # SchemaRegistryError, connection errors
            raise RegistryError(f"registry {self.url} refused {subject}: {exc}") from exc

    def headers(self, topic: str, table: TableSchema) -> tuple[bytes, bytes]:
        """(row header, block header): magic 0 + the schema id of each."""
        row_id = self.register(topic, table.avro)
        block_id = self.register(topic, block_schema(table))
        return CONFLUENT_MAGIC + row_id.to_bytes(4, "big"), CONFLUENT_MAGIC + block_id.to_bytes(4, "big")

    @lru_cache(maxsize=1024)  # noqa: B019 - one registry per process, ids never change meaning
    def writer(self, schema_id: int) -> tuple[dict[str, Any], bool]:
        """(the writer's table record schema, whether the message is a block) of an id."""
        try:
            text = self.client.get_schema(schema_id).schema_str
            if text is None:
                raise ValueError("the registry gave it no schema text")
            avro = json.loads(text)
        except Exception as exc:
            raise RegistryError(f"registry {self.url} has no schema id {schema_id}: {exc}") from exc
        fields = avro.get("fields", [])
        if avro.get("name", "").endswith("_block") and len(fields) == 1 and fields[0]["name"] == "rows":
            items = fields[0]["type"]["items"]
            if "namespace" not in items and "namespace" in avro:
                items = {**items, "namespace": avro["namespace"]}
            return items, True
        return avro, False
