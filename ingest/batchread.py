"""An object as a sequence of chunks: a fixed number of rows each, read as a stream.

CSV through Arrow's streaming CSV reader (every value read as bytes, typed by
``ingest.batchconvert``), Parquet a record batch at a time; neither holds
more than a chunk and the reader's read-ahead. Chunk k always holds the same
rows of the same object (rows ``k * chunk_rows`` on, in file order), so a
loader that resumes after its last committed chunk skips exactly what it
published.

Each bad row is a ``Rejected`` with its place: ``<url>:<line>`` for CSV
(physical lines, the header is line 1), ``<url>#row=<n>`` for Parquet (data
rows from 1). A CSV line with the wrong number of fields is reported by the
reader and belongs to the chunk whose rows it sits among.
"""

from __future__ import annotations

import bisect
import csv
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ingest.batchconvert import Converter, Layout, LayoutError, keep_rows
from ingest.objects import HashingStream, ObjectRef
from ingest.validate import RowRules

CSV_BLOCK_BYTES = 1 << 20  # Arrow holds many times a block while parsing it: small blocks, small peak
HEADER_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Rejected:
    where: str
    reason: str
    payload: Any


@dataclass
class Chunk:
    index: int
    rows: pa.Table  # good rows, the table's columns
    rejected: list[Rejected]
    read: int  # rows the chunk covers in the file, good and bad


class _HeaderedStream(HashingStream):
    """A hashing stream whose first line is read first (the CSV header), then given again."""

    def __init__(self, raw: Any):
        super().__init__(raw)
        self._head = b""

    def header(self, url: str) -> list[str]:
        while b"\n" not in self._head and len(self._head) < HEADER_MAX_BYTES:
            more = super().read(65536)
            if not more:
                break
            self._head += more
        line = self._head.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
        if not line.strip():
            raise LayoutError(f"{url}: no header line (the first line names the columns)")
        try:
            return [h.strip() for h in next(csv.reader([line.decode("utf-8")]))]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise LayoutError(f"{url}:1: header unreadable: {exc}") from None

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                head, self._head = self._head, b""
                rest = super().read(-1 if n is None or n < 0 else n - len(head))
                return head + rest
            head, self._head = self._head[:n], self._head[n:]
            return head
        return super().read(n)


def _chunks_of(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[tuple[pa.Table, int]]:
    """Exactly ``size`` rows at a time (the last one fewer), and each one's first row number."""
    held: list[pa.RecordBatch] = []
    count = start = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(held)
            yield table.slice(0, size), start
            rest = table.slice(size)
            held, count, start = rest.to_batches(), count - size, start + size
    if count:
        yield pa.Table.from_batches(held), start


class ObjectReader:
    """Chunks of one object for one source and table."""

    def __init__(self, ref: ObjectRef, converter: Converter, rules: RowRules, chunk_rows: int):
        self.ref = ref
        self.converter = converter
        self.rules = rules
        self.chunk_rows = chunk_rows
        self.checksum = ""  # the object's SHA-256, once read to its end (CSV)
        self.skip = 0  # chunks committed before: read past (for line numbers and the checksum), not converted

    def _finish(self, index: int, raw: pa.Table, where: Callable[[int], str], skipped: list[Rejected],
                layout: Layout) -> Chunk:
        if index < self.skip:
            return Chunk(index, raw.slice(0, 0), [], raw.num_rows + len(skipped))
        table = self.converter.schema.name
        rows, refused = self.converter.convert(raw, layout)
        blank = self._blank(raw)
        for i in np.flatnonzero(blank).tolist():
            refused[i] = ""  # an empty line: not a row, not an error
        rows, kept = keep_rows(rows, refused)
        rejected = [Rejected(where(i), reason, self._payload(raw, i)) for i, reason in sorted(refused.items())
                    if reason]
        if rows.num_rows:
            keep, bad = self.rules.check_columns(table, rows, lambda idx: rows.take(idx).to_pylist(),
                                                 self.rules.today())
            if bad is not None:
                rejected += [Rejected(where(int(kept[i])), reason, self._payload(raw, int(kept[i])))
                             for i, _, reason in bad.rows]
                rows = rows.take(pa.array(keep))
        rejected += skipped
        rejected.sort(key=lambda r: _place(r.where))
        return Chunk(index, rows, rejected, raw.num_rows + len(skipped))

    @staticmethod
    def _blank(raw: pa.Table) -> np.ndarray:
        out = np.zeros(raw.num_rows, bool)
        if raw.num_columns and all(pa.types.is_binary(c.type) for c in raw.columns):
            out[:] = True
            for col in raw.columns:
                out &= np.asarray([v is None or not v.strip() for v in col.to_pylist()]) if \
                    col.null_count else (pa.compute.binary_length(col).to_numpy(zero_copy_only=False) == 0)
        return out

    @staticmethod
    def _payload(raw: pa.Table, i: int) -> dict[str, Any]:
        row = raw.slice(i, 1).to_pylist()[0]
        return {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in row.items()}

    # -- CSV ---------------------------------------------------------------------

    def csv_chunks(self, raw_stream: Any) -> Iterator[Chunk]:
        stream = _HeaderedStream(raw_stream)
        header = stream.header(self.ref.url)
        layout = Layout.of(self.ref.url, header, self.converter.source, self.converter.schema)
        skipped: list[tuple[int, str]] = []  # (line, text): lines of the wrong width, as the reader met them
        lock = threading.Lock()

        def invalid(row: Any) -> str:
            with lock:
                bisect.insort(skipped, (row.number if row.number is not None else -1,
                                        f"expected {row.expected_columns} fields, found {row.actual_columns}|"
                                        + row.text))
            return "skip"

        reader = pacsv.open_csv(
            stream,
            # serial: the reader then knows each bad line's number (threaded, it does not)
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=invalid, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={h: pa.binary() for h in header},
                                                 include_columns=list(layout.read), strings_can_be_null=False),
        )
        next_line = 2  # the header is line 1
        index = 0
        for raw, _ in _chunks_of(iter(reader), self.chunk_rows):
            lines = np.arange(next_line, next_line + raw.num_rows)
            mine: list[Rejected] = []
            with lock:
                while skipped and raw.num_rows and skipped[0][0] <= lines[-1]:
                    line, text = skipped.pop(0)
                    lines[lines >= line] += 1
                    mine.append(self._skipped(line, text))
            next_line = int(lines[-1]) + 1 if raw.num_rows else next_line
            def at_line(i: int, lines: Any = lines) -> str:
                return f"{self.ref.url}:{lines[i]}"

            yield self._finish(index, raw, at_line, mine, layout)
            index += 1
        self.checksum = stream.drain()
        if skipped or index == 0:  # lines after the last row, or no rows at all: a last chunk of them
            empty = pa.table({name: pa.array([], pa.binary()) for name in layout.read})
            yield self._finish(index, empty, str, [self._skipped(line, text) for line, text in skipped], layout)

    def _skipped(self, line: int, text: str) -> Rejected:
        reason, _, raw = text.partition("|")
        return Rejected(f"{self.ref.url}:{line}", reason, raw)

    # -- Parquet -----------------------------------------------------------------

    def parquet_chunks(self, source: Any) -> Iterator[Chunk]:
        try:
            file = pq.ParquetFile(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LayoutError(f"{self.ref.url}: not a Parquet file: {exc}") from None
        layout = Layout.of(self.ref.url, file.schema_arrow.names, self.converter.source, self.converter.schema)
        batches = file.iter_batches(batch_size=min(self.chunk_rows, 65_536), columns=list(layout.read))
        index = 0
        for raw, start in _chunks_of(batches, self.chunk_rows):
            def at_row(i: int, start: int = start) -> str:
                return f"{self.ref.url}#row={start + i + 1}"

            yield self._finish(index, raw, at_row, [], layout)
            index += 1
        if index == 0:
            empty = pa.table({name: pa.array([], file.schema_arrow.field(name).type) for name in layout.read})
            yield self._finish(0, empty, str, [], layout)


def _place(where: str) -> int:
    tail = where.rsplit("=", 1)[-1] if "#row=" in where else where.rsplit(":", 1)[-1]
    return int(tail) if tail.lstrip("-").isdigit() else 0
