"""Table schemas (kdb+'s sym.q): one Avro file per table in ``schemas/``.

Adding a table is adding ``schemas/<table>.avsc``: its topic, codec, CSV
columns and Arrow schema all follow from it. Every table has a ``time`` column
(long, ns since the epoch, UTC) and a ``sym`` column (string, the Kafka key).

A schema is identified on the wire by its CRC-64-AVRO fingerprint of the
parsing canonical form (as in Avro's single-object encoding), so a consumer
always decodes with the writer's schema and resolves it to its own.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import fastavro.schema
import pyarrow as pa

from ingest.seq import SEQ


class SchemaError(ValueError):
    """A schema file is unreadable or lacks what every table needs."""


_ARROW_TYPES = {
    "long": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "float": pa.float32(),
    "string": pa.string(),
    "boolean": pa.bool_(),
    "bytes": pa.binary(),
}


def fingerprint(schema: dict[str, Any]) -> bytes:
    """8-byte little-endian CRC-64-AVRO fingerprint of the canonical form."""
    parsed = fastavro.schema.parse_schema(schema, _write_hint=False)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    hex_digest = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    return struct.pack("<Q", int(hex_digest, 16))


NANOS_TYPES = ("timestamp-nanos", "local-timestamp-nanos")  # Avro 1.12's


def _plain_type(avro_type: Any) -> Any:
    if isinstance(avro_type, dict) and avro_type.get("logicalType") in NANOS_TYPES and avro_type.get("type") == "long":
        return "long"
    if isinstance(avro_type, list):
        return [_plain_type(t) for t in avro_type]
    return avro_type


def plain(avro: dict[str, Any]) -> dict[str, Any]:
    """The record without its fields' nanosecond logical types (``time``'s ``timestamp-nanos``):
    the same bytes and the same fingerprint (the canonical form drops logical types), and what
    the plant's readers and writers parse, so a row's time stays the int64 of ns whatever a
    library makes of the type (fastavro 1.13 ignores it; a later one may make datetimes, which
    cannot hold nanoseconds). Other logical types are left to fastavro, as before."""
    return {**avro, "fields": [{**f, "type": _plain_type(f["type"])} for f in avro.get("fields", [])]}


def _base_type(avro_type: Any) -> tuple[str, bool]:
    """(primitive name, nullable) of a field type; ["null", T] is a nullable T."""
    if isinstance(avro_type, list):
        others = [t for t in avro_type if t != "null"]
        if len(others) != 1:
            raise SchemaError(f"union {avro_type} is not supported (only [\"null\", T])")
        return _base_type(others[0])[0], True
    if isinstance(avro_type, dict):
        return _base_type(avro_type["type"])[0], False
    return str(avro_type), False


@dataclass(frozen=True)
class TableSchema:
    """One table's Avro schema and what derives from it."""

    name: str
    avro: dict[str, Any]
    parsed: dict[str, Any] = field(repr=False, compare=False)
    fingerprint: bytes = field(repr=False)

    @classmethod
    def from_dict(cls, avro: dict[str, Any], source: str = "<schema>") -> TableSchema:
        if avro.get("type") != "record" or "name" not in avro:
            raise SchemaError(f"{source}: a table schema must be an Avro record with a name")
        names = [f.get("name") for f in avro.get("fields", [])]
        for required in ("time", "sym"):
            if required not in names:
                raise SchemaError(f"{source}: table {avro['name']!r} has no {required!r} field")
        if SEQ in names:
            raise SchemaError(f"{source}: a field may not be named {SEQ!r}: the readers of the log add it "
                              f"(the row's place in the log, ingest.seq)")
        try:
            parsed = fastavro.schema.parse_schema(plain(avro), _write_hint=False)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise SchemaError(f"{source}: not a valid Avro schema: {exc}") from exc
        # fastavro types a parsed schema as any schema; a record's is a dict
        table = cls(name=avro["name"], avro=avro, parsed=cast(dict[str, Any], parsed), fingerprint=fingerprint(avro))
        for f in avro["fields"]:
            base, _ = _base_type(f["type"])
            if base not in _ARROW_TYPES:
                raise SchemaError(f"{source}: field {f['name']!r} has unsupported type {base!r}")
        return table

    @classmethod
    def from_file(cls, path: Path) -> TableSchema:
        try:
            avro = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SchemaError(f"{path}: cannot read schema: {exc}") from exc
        table = cls.from_dict(avro, str(path))
        if table.name != path.stem:
            raise SchemaError(f"{path}: record name {table.name!r} must match the file name")
        return table

    @cached_property
    def block_parsed(self) -> dict[str, Any]:
        """The schema of a block message body: an Avro array of this record."""
        return cast(dict[str, Any], fastavro.schema.parse_schema({"type": "array", "items": plain(self.avro)}, _write_hint=False))

    @property
    def fields(self) -> list[dict[str, Any]]:
        return self.avro["fields"]

    @property
    def columns(self) -> list[str]:
        return [f["name"] for f in self.fields]

    def column_type(self, column: str) -> tuple[str, bool]:
        for f in self.fields:
            if f["name"] == column:
                return _base_type(f["type"])
        raise KeyError(column)

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        out = []
        for f in self.fields:
            base, nullable = _base_type(f["type"])
            arrow_type = pa.timestamp("ns", tz="UTC") if f["name"] == "time" else _ARROW_TYPES[base]
            out.append(pa.field(f["name"], arrow_type, nullable=nullable))
        return pa.schema(out)

    @cached_property
    def stored_schema(self) -> pa.Schema:
        """What the readers of the log keep (the RDB, the HDB's files): the Avro fields and
        ``seq``, the row's place in the log (``ingest.seq``; not on the wire)."""
        return self.arrow_schema.append(pa.field(SEQ, pa.int64(), nullable=False))

    @property
    def stored_columns(self) -> list[str]:
        return [*self.columns, SEQ]

    def to_arrow(self, rows: list[dict[str, Any]], seq: bool = False) -> pa.Table:
        """Rows as decoded from the log, column by column (time as timestamp[ns, UTC]);
        ``seq``: with the ``seq`` column, from each row's ``seq`` (``ingest.seq.number``)."""
        arrays = []
        schema = self.stored_schema if seq else self.arrow_schema
        for f in schema:
            name = f.name
            try:
                values = [r[name] for r in rows]
            except KeyError:  # a nullable column some rows lack
                values = [r.get(name) for r in rows]
            if name == "time":
                arrays.append(pa.array(values, pa.int64()).cast(f.type))
            else:
                arrays.append(pa.array(values, f.type))
        return pa.Table.from_arrays(arrays, schema=schema)


class SchemaCatalog:
    """The tables of this plant: every ``*.avsc`` in the schemas directory."""

    def __init__(self, tables: dict[str, TableSchema]):
        self.tables = tables
        self.by_fingerprint = {t.fingerprint: t for t in tables.values()}

    @classmethod
    def load(cls, directory: Path) -> SchemaCatalog:
        directory = Path(directory)
        if not directory.is_dir():
            raise SchemaError(f"schemas directory {directory} does not exist")
        tables = {p.stem: TableSchema.from_file(p) for p in sorted(directory.glob("*.avsc"))}
        if not tables:
            raise SchemaError(f"no *.avsc table schemas in {directory}")
        return cls(tables)

    def __getitem__(self, table: str) -> TableSchema:
        try:
            return self.tables[table]
        except KeyError:
            raise SchemaError(
                f"unknown table {table!r}; tables: {', '.join(sorted(self.tables))}"
            ) from None

    def __iter__(self):
        return iter(self.tables.values())

    @property
    def names(self) -> list[str]:
        return sorted(self.tables)
