"""Adding a field with a default works both ways between old and new producers and consumers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from ingest.decoder import DecodeError, Decoder
from ingest.framing import encode_row
from ingest.publisher import Tickerplant
from ingest.replay import replay_rows
from ingest.schemas import SchemaCatalog, SchemaError, TableSchema
from tickplant.config import REPO_ROOT


def _schemas_with_venue(tmp: Path) -> Path:
    """A copy of schemas/ whose trade has a new field 'venue' with a default."""
    new_dir = tmp / "schemas-v2"
    shutil.copytree(REPO_ROOT / "schemas", new_dir)
    trade = json.loads((new_dir / "trade.avsc").read_text())
    trade["fields"].append({"name": "venue", "type": "string", "default": "lit"})
    (new_dir / "trade.avsc").write_text(json.dumps(trade))
    return new_dir


OLD_ROW = {"time": 1, "sym": "AAPL", "price": 10.5, "size": 100, "exchange": "N", "cond": ""}


def test_new_consumer_reads_old_producer_and_old_consumer_reads_new(settings, catalog, tmp_path):
    new_catalog = SchemaCatalog.load(_schemas_with_venue(tmp_path))
    new_settings = settings.replace(schemas_dir=tmp_path / "schemas-v2")
    assert new_catalog["trade"].fingerprint != catalog["trade"].fingerprint

    with Tickerplant(settings, catalog, mode="zero") as old_producer:  # writes v1
        old_producer.publish("trade", OLD_ROW)
    with Tickerplant(new_settings, new_catalog, mode="batch") as new_producer:  # writes v2
        new_producer.publish("trade", {**OLD_ROW, "time": 2, "venue": "dark"})

    # a new consumer fills the default for the old row and keeps the new field
    as_new = list(replay_rows(new_settings, "trade", catalog=new_catalog))
    assert as_new == [{**OLD_ROW, "venue": "lit"}, {**OLD_ROW, "time": 2, "venue": "dark"}]
    # an old consumer, which never saw the v2 schema file, finds it on the schemas topic
    as_old = list(replay_rows(settings, "trade", catalog=catalog))
    assert as_old == [OLD_ROW, {**OLD_ROW, "time": 2}]


def test_unknown_writer_schema_is_a_clear_error(catalog, tmp_path):
    new_catalog = SchemaCatalog.load(_schemas_with_venue(tmp_path))
    value = encode_row(new_catalog["trade"], {**OLD_ROW, "venue": "x"})
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint"):
        Decoder(catalog, lookup=lambda fp: None).decode(value)


def test_schema_files_are_checked(tmp_path):
    bad = tmp_path / "bars.avsc"
    bad.write_text(json.dumps({"type": "record", "name": "bars", "fields": [{"name": "sym", "type": "string"}]}))
    with pytest.raises(SchemaError, match="no 'time' field"):
        TableSchema.from_file(bad)
    bad.write_text("{not json")
    with pytest.raises(SchemaError, match="cannot read schema"):
        TableSchema.from_file(bad)
    other = tmp_path / "other.avsc"
    other.write_text(json.dumps({"type": "record", "name": "bars", "fields": [
        {"name": "time", "type": "long"}, {"name": "sym", "type": "string"}]}))
    with pytest.raises(SchemaError, match="must match the file name"):
        TableSchema.from_file(other)


def test_adding_a_table_is_adding_a_file(settings, tmp_path):
    schemas = tmp_path / "schemas"
    shutil.copytree(REPO_ROOT / "schemas", schemas)
    (schemas / "bar.avsc").write_text(json.dumps({"type": "record", "name": "bar", "fields": [
        {"name": "time", "type": "long"}, {"name": "sym", "type": "string"},
        {"name": "open", "type": "double"}, {"name": "volume", "type": ["null", "long"], "default": None}]}))
    local = settings.replace(schemas_dir=schemas)
    catalog = SchemaCatalog.load(schemas)
    rows = [{"time": 5, "sym": "AAPL", "open": 1.25, "volume": None}, {"time": 6, "sym": "IBM", "open": 2.0, "volume": 7}]
    with Tickerplant(local, catalog) as tp:
        tp.publish_rows("bar", rows)
    assert sorted(replay_rows(local, "bar", catalog=catalog), key=lambda r: r["time"]) == rows
    # and the gateway gives it a REST route of its own, beside its SQL
    with TestClient(create_app(local)) as client:
        assert "/v1/rows/bar" in client.get("/openapi.json").json()["paths"]
        answer = client.get("/v1/rows/bar", params={"start": "2020-01-02", "format": "csv"})
        assert answer.status_code == 200, answer.text
        assert answer.text.splitlines()[0].replace('"', "").split(",") == ["date", "time", "sym", "open", "volume"]
        assert client.get("/v1/rows/nope").status_code == 404
