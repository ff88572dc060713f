"""The kept rows of many messages as one Arrow table, in log order.

``Intake.arrow`` answers a block as Arrow columns and anything else (a
zero-latency row, a block fastavro decodes) as row dicts. A read holds both
kinds; the dicts between two tables are converted together (Arrow conversion
costs mostly per call, and a zero-latency read is many one-row messages),
then the pieces are put end to end.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ingest.schemas import TableSchema


class Gathered:
    """Pieces of a table's stored rows (``stored_schema``, with ``seq``; ``arrow_schema`` if not
    ``seq``, as the ``Intake`` they come from numbers them or not) in the order added."""

    def __init__(self, schema: TableSchema, seq: bool = True):
        self.schema = schema
        self.seq = seq
        self.tables: list[pa.Table] = []
        self.rows: list[dict[str, Any]] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, got: pa.Table | list[dict[str, Any]]) -> None:
        if isinstance(got, pa.Table):
            if got.num_rows:
                self._convert_rows()
                self.tables.append(got)
                self.count += got.num_rows
        else:
            self.rows.extend(got)
            self.count += len(got)

    def _convert_rows(self) -> None:
        if self.rows:
            self.tables.append(self.schema.to_arrow(self.rows, seq=self.seq))
            self.rows = []

    def table(self) -> pa.Table | None:
        """All the rows added, as one table; None if there are none."""
        self._convert_rows()
        if not self.tables:
            return None
        return self.tables[0] if len(self.tables) == 1 else pa.concat_tables(self.tables)
