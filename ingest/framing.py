"""How rows are laid in Kafka messages: the tickerplant log's wire format.

A message value is one of

- a row (zero-latency mode): Avro single-object encoding,
  ``C3 01`` + 8-byte schema fingerprint + the record;
- a block (batch mode, kdb+tick's ``-t`` timer): ``C3 B1`` + fingerprint +
  an Avro array of records, published for one partition at a time;
- an end-of-day fence: empty value with header ``tp-control: eod:<date>``
  (see ``ingest.eod``).

The fingerprint names the writer's schema, so a reader decodes with it and
resolves to its own (fields added with defaults work both ways). Writer
schemas unknown locally are found on the compacted schemas topic.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import fastavro
import fastavro.schema

from ingest.schemas import SchemaCatalog, TableSchema

ROW_MAGIC = b"\xc3\x01"
BLOCK_MAGIC = b"\xc3\xb1"
HEADER_LEN = 10
CONTROL_HEADER = "tp-control"


class DecodeError(ValueError):
    """A message could not be decoded; the reason goes to the dead-letter topic."""


def encode_row(table: TableSchema, row: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(ROW_MAGIC + table.fingerprint)
    fastavro.schemaless_writer(out, table.parsed, row)
    return out.getvalue()


def encode_block(table: TableSchema, rows: list[dict[str, Any]]) -> bytes:
    out = io.BytesIO()
    out.write(BLOCK_MAGIC + table.fingerprint)
    fastavro.schemaless_writer(out, table.block_parsed, rows)
    return out.getvalue()


def control_of(headers: list[tuple[str, bytes]] | None) -> str | None:
    """The control word of a fence message, None for a data message."""
    if headers:
        for key, value in headers:
            if key == CONTROL_HEADER:
                return value.decode() if isinstance(value, bytes) else str(value)
    return None


WriterLookup = Callable[[bytes], "dict[str, Any] | None"]


class Decoder:
    """Decodes rows and blocks of any writer schema into the reader's schema.

    ``catalog`` holds the reader's tables; ``lookup`` finds a writer schema
    by fingerprint when it is not the reader's own (the schemas topic).
    """

    def __init__(self, catalog: SchemaCatalog, lookup: WriterLookup | None = None):
        self.catalog = catalog
        self.lookup = lookup
        self._resolvers: dict[bytes, tuple[str, Any, Any, Any, Any]] = {}

    def _resolver(self, fp: bytes) -> tuple[str, Any, Any, Any, Any]:
        cached = self._resolvers.get(fp)
        if cached:
            return cached
        own = self.catalog.by_fingerprint.get(fp)
        if own is not None:
            entry = (own.name, own.parsed, None, own.block_parsed, None)
        else:
            writer_avro = self.lookup(fp) if self.lookup else None
            if writer_avro is None:
                raise DecodeError(f"unknown writer schema fingerprint {fp.hex()}")
            writer = TableSchema.from_dict(writer_avro, f"writer schema {fp.hex()}")
            reader = self.catalog.tables.get(writer.name, writer)
            entry = (writer.name, writer.parsed, reader.parsed, writer.block_parsed, reader.block_parsed)
        self._resolvers[fp] = entry
        return entry

    def decode(self, value: bytes) -> tuple[str, list[dict[str, Any]]]:
        """(table name, rows) of one message value."""
        if value is None or len(value) < HEADER_LEN:
            raise DecodeError(f"message of {0 if value is None else len(value)} bytes is too short")
        magic, fp = value[:2], value[2:HEADER_LEN]
        if magic not in (ROW_MAGIC, BLOCK_MAGIC):
            raise DecodeError(f"unknown framing magic {magic.hex()} (not a tickplant row or block)")
        name, writer, reader, writer_block, reader_block = self._resolver(fp)
        body = io.BytesIO(value)
        body.seek(HEADER_LEN)
        try:
            if magic == ROW_MAGIC:
                rows = [fastavro.schemaless_reader(body, writer, reader)]
            else:
                rows = fastavro.schemaless_reader(body, writer_block, reader_block)
        except Exception as exc:  # corrupt bytes raise EOFError, ValueError, UnicodeDecodeError...
            raise DecodeError(f"corrupt Avro body for table {name!r}: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(value):
            raise DecodeError(
                f"{len(value) - body.tell()} trailing bytes after the Avro body for table {name!r}"
            )
        return name, rows
