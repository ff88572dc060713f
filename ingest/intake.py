"""A data message of the log, taken in by a consumer: decoded, checked, and its refusals noted.

Every reader (RDB, CEP, PDB, replay, backfill) takes rows from the log
through ``Intake``, so they keep exactly the same rows: ``Decoder`` gives the
writer's table and rows, ``RowRules`` (``ingest.validate``) keeps the good
ones. What is refused waits in ``pending`` until the consumer's next state
write, and ``flush`` (called before it) dead-letters it once per message
(``DeadLetters.report``): a crash between the two reports it again at the
restart, and the report finds it already there.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from ingest.blocks import Block, BlockReader
from ingest.deadletter import DeadLetters
from ingest.decoder import DecodeError, Decoder
from ingest.framing import BLOCK_MAGIC, HEADER_LEN
from ingest.schemas import SchemaCatalog
from ingest.seq import MAX_MESSAGE_ROWS, SEQ, number, seq_array
from ingest.topics import TopicNames
from ingest.validate import RowRules
from tickplant.config import Settings


class Intake:
    """``seq``: each kept row also gets its place in the log (``ingest.seq``), for the
    readers that keep rows (RDB, PDB, backfill)."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog, decoder: Decoder,
                 deadletters: DeadLetters | None, seq: bool = False):
        self.rules = RowRules(settings, catalog)
        self.catalog = catalog
        self._readers: dict[bytes, BlockReader] = {}  # by writer fingerprint
        self.seq = seq
        self.decoder = decoder
        self.deadletters = deadletters
        if deadletters is not None:
            deadletters.expect(catalog.names)
        self.names = TopicNames(settings.topic_prefix)
        self.pending: dict[tuple[str, int], list[tuple[int, str, str, Any]]] = {}
        self.refused_messages = 0
        self.refused_rows = 0

    def rows(self, table: str, partition: int, offset: int, value: bytes | None,
             date: dt.date | None) -> list[dict[str, Any]]:
        """The rows of one message that the rules keep."""
        try:
            got: tuple[str, list[dict[str, Any]]] | DecodeError = self.decoder.decode(value)
        except DecodeError as exc:
            got = exc
        return self._take(table, partition, offset, value, date, got)

    def arrow(self, table: str, partition: int, offset: int, value: bytes | None,
              date: dt.date | None) -> pa.Table | list[dict[str, Any]]:
        """``rows``, but a block read straight into columns (``ingest.blocks``) comes as an Arrow
        table of the table's ``stored_schema`` (``arrow_schema`` without ``seq``): the same rows,
        refusals and ``seq`` as ``rows`` gives. Any other message comes as ``rows``' list."""
        block = self._block(table, value)
        if block is None or block.columns.num_rows > MAX_MESSAGE_ROWS:  # past seq's room: as ``rows`` says
            return self.rows(table, partition, offset, value, date)
        kept, refused = self.rules.check_columns(table, block.columns, block.rows, date, partition)
        if refused is not None:
            self._refuse(table, partition, offset, refused.reason(), refused.payload(), len(refused.rows))
        columns = block.columns if kept is None else block.columns.take(kept)
        schema = self._schema(table)
        arrays = [columns.column(f.name).cast(f.type) for f in schema if f.name != SEQ]
        if self.seq:
            arrays.append(pa.array(seq_array(offset, columns.num_rows if kept is None else kept), pa.int64()))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _schema(self, table: str) -> pa.Schema:
        """The Arrow schema ``arrow`` answers in."""
        schema = self.catalog[table]
        return schema.stored_schema if self.seq else schema.arrow_schema

    def _block(self, table: str, value: bytes | None) -> Block | None:
        """The block message ``value`` of ``table``'s own writer, in columns; None for anything
        else (a row, another table's rows, a Confluent frame, what ``BlockReader`` leaves to fastavro)."""
        if not value or value[:2] != BLOCK_MAGIC or len(value) <= HEADER_LEN:
            return None
        fp = value[2:HEADER_LEN]
        reader = self._readers.get(fp)
        if reader is None:
            tables = self.decoder.tables(fp)
            if tables is None or tables[0].name != table or tables[1].name != table:
                return None
            reader = self._readers[fp] = BlockReader(*tables)
        return reader.read(value, HEADER_LEN)

    def run(self, table: str, partition: int, items: list[tuple[int, bytes | None]],
            date: dt.date | None) -> list[dict[str, Any]]:
        """The kept rows of (offset, value) messages of one partition and day, in order
        (decoded at once: ``Decoder.decode_each``)."""
        out: list[dict[str, Any]] = []
        decoded = self.decoder.decode_each([value for _, value in items])
        for (offset, value), got in zip(items, decoded, strict=True):
            out.extend(self._take(table, partition, offset, value, date, got))
        return out

    def _take(self, table: str, partition: int, offset: int, value: bytes | None, date: dt.date | None,
              got: tuple[str, list[dict[str, Any]]] | DecodeError) -> list[dict[str, Any]]:
        if isinstance(got, DecodeError):
            self._refuse(table, partition, offset, str(got), value or b"", 0)
            return []
        writer, rows = got
        kept, refused = self.rules.check(table, writer, rows, date, partition)
        if refused is not None:
            self._refuse(table, partition, offset, refused.reason(), refused.payload(), len(refused.rows))
        if self.seq and kept:
            if refused is None:
                number(kept, offset)
            else:
                gone = {i for i, _, _ in refused.rows}
                number(kept, offset, [i for i in range(len(rows)) if i not in gone][:len(kept)])
        return kept

    def _refuse(self, table: str, partition: int, offset: int, reason: str, payload: Any, rows: int) -> None:
        self.refused_messages += 1
        self.refused_rows += rows
        self.pending.setdefault((self.names.table(table), partition), []).append((offset, table, reason, payload))

    def flush(self) -> int:
        """Dead-letter what was refused since the last flush (each message once, plant-wide)."""
        written = 0
        while self.pending:
            (topic, partition), letters = next(iter(self.pending.items()))
            if self.deadletters is not None:
                written += self.deadletters.report(topic, partition, letters)
            del self.pending[(topic, partition)]
        return written
