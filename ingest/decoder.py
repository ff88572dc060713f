"""Decoding the log's messages: rows and blocks of any writer schema, read into the reader's
(the catalog's table, or a writer schema found by fingerprint on the schemas topic, or a
Confluent registry's id). The wire format and the encoder: ingest/framing.py."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any, cast

import fastavro
import fastavro.schema

from ingest.framing import BLOCK_MAGIC, CONFLUENT_ID, HEADER_LEN, ROW_MAGIC, codec_for
from ingest.schemas import SchemaCatalog, TableSchema


class DecodeError(ValueError):
    """A message could not be decoded; the reason goes to the dead-letter topic."""


WriterLookup = Callable[[bytes], "dict[str, Any] | None"]


class Decoder:
    """Decodes rows and blocks of any writer schema into the reader's schema.

    ``catalog`` holds the reader's tables; ``lookup`` finds a writer schema
    by fingerprint when it is not the reader's own (the schemas topic).
    """

    def __init__(self, catalog: SchemaCatalog, lookup: WriterLookup | None = None, registry: Any = None):
        self.catalog = catalog
        self.lookup = lookup
        self.registry = registry  # ingest.registry.Registry, for Confluent-framed messages
        self._resolvers: dict[bytes, tuple[str, Any, Any, Any, Any]] = {}
        self._tables: dict[bytes, tuple[TableSchema, TableSchema]] = {}  # fp -> (writer, reader)

    def _resolver(self, fp: bytes) -> tuple[str, Any, Any, Any, Any]:
        cached = self._resolvers.get(fp)
        if cached:
            return cached
        # the codecs' parsed schemas carry fastavro's hint, so that schemaless_reader
        # does not parse them again for every message (3x faster on one-row messages)
        own = self.catalog.by_fingerprint.get(fp)
        if fp.startswith(CONFLUENT_ID):
            writer_avro, _ = self.registry.writer(int.from_bytes(fp[len(CONFLUENT_ID):], "big"))
            own = self.catalog.by_fingerprint.get(TableSchema.from_dict(writer_avro, "registry").fingerprint)
            if own is None:
                writer = TableSchema.from_dict(writer_avro, f"registry schema {fp.hex()}")
                reader = self.catalog.tables.get(writer.name, writer)
                w, r = codec_for(writer), codec_for(reader)
                entry: tuple[str, Any, Any, Any, Any] = (
                    writer.name, w.parsed, r.parsed, w.block_parsed, r.block_parsed)
                self._resolvers[fp] = entry
                return entry
        if own is not None:
            codec = codec_for(own)
            entry = (own.name, codec.parsed, None, codec.block_parsed, None)
            self._tables[fp] = (own, own)
        else:
            writer_avro = self.lookup(fp) if self.lookup else None
            if writer_avro is None:
                raise DecodeError(f"unknown writer schema fingerprint {fp.hex()}")
            writer = TableSchema.from_dict(writer_avro, f"writer schema {fp.hex()}")
            reader = self.catalog.tables.get(writer.name, writer)
            w, r = codec_for(writer), codec_for(reader)
            entry = (writer.name, w.parsed, r.parsed, w.block_parsed, r.block_parsed)
            self._tables[fp] = (writer, reader)
        self._resolvers[fp] = entry
        return entry

    def tables(self, fp: bytes) -> tuple[TableSchema, TableSchema] | None:
        """(writer, reader) table schemas of a tickplant-framed fingerprint, for a decoder of
        its own (``ingest.blocks``); None if unknown (``decode`` says why)."""
        if fp not in self._tables:
            try:
                self._resolver(fp)
            except Exception:  # noqa: BLE001 - an unknown fingerprint, a lookup that failed
                return None
        return self._tables.get(fp)

    def _confluent(self, value: bytes) -> tuple[bytes, bytes, int]:
        """(magic, resolver key, body start) of a Confluent-framed message."""
        if self.registry is None:
            raise DecodeError("Confluent-framed message (magic 0) but no schema_registry_url is configured")
        if len(value) < 5:
            raise DecodeError(f"Confluent-framed message of {len(value)} bytes is too short")
        schema_id = int.from_bytes(value[1:5], "big")
        try:
            _, is_block = self.registry.writer(schema_id)
        except RuntimeError as exc:
            raise DecodeError(str(exc)) from exc
        return (BLOCK_MAGIC if is_block else ROW_MAGIC), CONFLUENT_ID + value[1:5], 5

    def decode_many(self, values: list[bytes]) -> tuple[list[dict[str, Any]], list[tuple[int, DecodeError]]]:
        """The rows of many messages in order, as one list, and (index, error) of each message
        that ``decode`` rejects (its rows are left out): ``decode_each``, flattened."""
        rows: list[dict[str, Any]] = []
        errors: list[tuple[int, DecodeError]] = []
        for i, got in enumerate(self.decode_each(values)):
            if isinstance(got, DecodeError):
                errors.append((i, got))
            else:
                rows.extend(got[1])
        return rows, errors

    def decode_each(self, values: Sequence[bytes | None]) -> list[tuple[str, list[dict[str, Any]]] | DecodeError]:
        """``decode`` of each message: (writer's table, rows), or the DecodeError it raises.

        For the live tail in zero-latency mode (a message per row, thousands a second):
        one-row messages of the reader's own schemas are read with the lookups done once
        per run instead of once per message (about 20% of the decoding time); any other
        message, and any that fails, goes through ``decode``, so the answers are exactly
        ``decode``'s.
        """
        out: list[tuple[str, list[dict[str, Any]]] | DecodeError] = []
        keep, schemaless_reader, BytesIO = out.append, fastavro.schemaless_reader, io.BytesIO  # noqa: N806
        fp, parsed, name = b"", None, ""
        for value in values:
            if value is not None and value[:2] == ROW_MAGIC and len(value) > HEADER_LEN:
                if value[2:HEADER_LEN] != fp:
                    fp = value[2:HEADER_LEN]
                    own = self.catalog.by_fingerprint.get(fp)
                    parsed, name = (codec_for(own).parsed, own.name) if own is not None else (None, "")
                if parsed is not None:
                    body = BytesIO(value)
                    body.seek(HEADER_LEN)
                    try:
                        row = schemaless_reader(body, parsed, None)
                    except Exception:  # noqa: BLE001 - decode() below says what is wrong
                        pass
                    else:
                        if body.tell() == len(value):
                            keep((name, [cast(dict[str, Any], row)]))  # a row schema is a record
                            continue
            try:
                keep(self.decode(value))
            except DecodeError as exc:
                keep(exc)
        return out

    def decode(self, value: bytes | None) -> tuple[str, list[dict[str, Any]]]:
        """(table name, rows) of one message value."""
        if value and value[:1] == b"\x00":
            magic, fp, start = self._confluent(value)
        else:
            if value is None or len(value) < HEADER_LEN:
                raise DecodeError(f"message of {0 if value is None else len(value)} bytes is too short")
            magic, fp, start = value[:2], value[2:HEADER_LEN], HEADER_LEN
            if magic not in (ROW_MAGIC, BLOCK_MAGIC):
                raise DecodeError(f"unknown framing magic {magic.hex()} (not a tickplant row or block)")
        name, writer, reader, writer_block, reader_block = self._resolver(fp)
        body = io.BytesIO(value)
        body.seek(start)
        try:
            # fastavro types what it reads as any Avro value; a row schema is a record, a block
            # schema an array of records
            if magic == ROW_MAGIC:
                rows = [cast(dict[str, Any], fastavro.schemaless_reader(body, writer, reader))]
            else:
                rows = cast(list[dict[str, Any]], fastavro.schemaless_reader(body, writer_block, reader_block))
        except Exception as exc:  # corrupt bytes raise EOFError, ValueError, UnicodeDecodeError...
            raise DecodeError(f"corrupt Avro body for table {name!r}: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(value):
            raise DecodeError(
                f"{len(value) - body.tell()} trailing bytes after the Avro body for table {name!r}"
            )
        return name, rows
