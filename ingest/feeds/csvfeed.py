"""The CSV feed: publish a file's rows into a table, every bad row accounted for.

The header names the columns (any order); each must be a field of the table,
and every field without a default must be present. Each data line becomes a
row or a rejection with its line number and reason, sent to the dead-letter
topic; nothing is dropped silently. Lines are physical lines: a quoted field
spanning lines is rejected as malformed.

Values: long/int as integers; double/float as decimals (``nan``/``inf`` too);
booleans as true/false/1/0; ``time`` as integer ns since the epoch or an ISO
8601 timestamp (up to 9 fractional digits; no zone means UTC). An empty value
is null for a nullable field, "" for a string, and an error otherwise.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.deadletter import DeadLetters
from ingest.schemas import TableSchema

MAX_LINE_BYTES = 1 << 20
_ISO = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$"
)


class CsvFeedError(ValueError):
    """The file as a whole cannot be fed (unreadable, empty, header wrong)."""


class RowError(ValueError):
    """One line cannot become a row; the message is the reason."""


@dataclass
class CsvReport:
    path: str
    table: str
    published: int = 0
    rejected: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), first 1000

    def add_error(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < 1000:
            self.errors.append((line, reason))


def parse_time(text: str) -> int:
    """ns since the epoch, UTC, from an integer or an ISO 8601 timestamp."""
    if text.lstrip("-").isdigit():
        return int(text)
    m = _ISO.match(text)
    if not m:
        raise RowError(f"time {text!r} is neither integer nanoseconds nor an ISO 8601 timestamp")
    date, hh, mm, ss, frac, zone = m.groups()
    try:
        base = dt.datetime.fromisoformat(f"{date}T{hh}:{mm}:{ss}")
    except ValueError as exc:
        raise RowError(f"time {text!r}: {exc}") from exc
    offset = dt.timedelta(0)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    seconds = int((base - offset).replace(tzinfo=dt.UTC).timestamp())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _converter(column: str, base: str, nullable: bool, has_default: bool, default: Any) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if text == "":
            if nullable:
                return None
            if base == "string":
                return ""
            if has_default:
                return default
            raise RowError(f"empty value for {column} ({base})")
        try:
            if column == "time":
                value = parse_time(text)
                if not -(1 << 63) <= value < (1 << 63):
                    raise RowError(f"time {text[:80]} is out of range")
                return value
            if base in ("long", "int"):
                value = int(text)
                bits = 63 if base == "long" else 31
                if not -(1 << bits) <= value < (1 << bits):
                    raise RowError(f"{column}: {text[:80]} is out of range for {base}")
                return value
            if base in ("double", "float"):
                return float(text)
            if base == "boolean":
                low = text.lower()
                if low in ("true", "1"):
                    return True
                if low in ("false", "0"):
                    return False
                raise ValueError
            return text
        except RowError:
            raise
        except ValueError:
            raise RowError(f"{column}: {text[:80]!r} is not a valid {base}") from None

    return convert


BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark


def _lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None, reason) of each physical line, bounded in size."""
    with open(path, "rb") as f:
        number = 0
        while True:
            raw = f.readline(max_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(max_bytes)
                    size += len(raw)
                yield number, None, f"line is {size} bytes, over the {max_bytes}-byte limit"
                continue
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]  # what Excel and many exports put first: not part of the header
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n"), ""
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8: {exc}"


class CsvRows:
    """Parses a CSV file for one table; yields (line, row or None, reason, raw text)."""

    def __init__(self, path: str | Path, table: TableSchema, max_line_bytes: int = MAX_LINE_BYTES):
        self.path = Path(path)
        self.table = table
        self.max_line_bytes = max_line_bytes
        if not self.path.is_file():
            raise CsvFeedError(f"{self.path}: no such file")

    def _header(self, lines: Iterator[tuple[int, str | None, str]]) -> list[str]:
        for number, text, reason in lines:
            if text is None:
                raise CsvFeedError(f"{self.path}:{number}: header unreadable: {reason}")
            if not text.strip():
                continue
            header = [h.strip() for h in next(csv.reader([text]))]
            known = set(self.table.columns)
            unknown = [h for h in header if h not in known]
            if unknown:
                raise CsvFeedError(
                    f"{self.path}:{number}: column(s) {', '.join(unknown)} are not in table "
                    f"{self.table.name} (columns: {', '.join(self.table.columns)})"
                )
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise CsvFeedError(f"{self.path}:{number}: duplicate column(s) {', '.join(dupes)}")
            missing = [
                f["name"] for f in self.table.fields
                if f["name"] not in header and "default" not in f and not self.table.column_type(f["name"])[1]
            ]
            if missing:
                raise CsvFeedError(
                    f"{self.path}:{number}: header lacks column(s) {', '.join(missing)} "
                    f"required by table {self.table.name}"
                )
            return header
        raise CsvFeedError(f"{self.path}: file is empty (no header line)")

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | None, str, str]]:
        lines = _lines(self.path, self.max_line_bytes)
        header = self._header(lines)
        fields = {f["name"]: f for f in self.table.fields}
        converters = []
        for name in header:
            base, nullable = self.table.column_type(name)
            f = fields[name]
            converters.append(_converter(name, base, nullable, "default" in f, f.get("default")))
        absent = {
            f["name"]: (None if self.table.column_type(f["name"])[1] and "default" not in f else f.get("default"))
            for f in self.table.fields if f["name"] not in header
        }
        width = len(header)
        for number, text, reason in lines:
            if text is None:
                yield number, None, reason, f"<line {number} not kept: {reason}>"
                continue
            if not text.strip():
                continue
            try:
                values = next(csv.reader(io.StringIO(text), strict=True))
            except csv.Error as exc:
                yield number, None, f"malformed CSV: {exc}", text
                continue
            if len(values) != width:
                yield number, None, f"expected {width} fields, found {len(values)}", text
                continue
            try:
                row = {name: conv(v.strip()) for name, conv, v in zip(header, converters, values, strict=True)}
            except RowError as exc:
                yield number, None, str(exc), text
                continue
            if not row.get("sym"):
                yield number, None, "sym is empty", text
                continue
            row.update(absent)
            yield number, row, "", text


def feed_csv(
    publish: Callable[[str, list[dict[str, Any]]], None],
    deadletters: DeadLetters,
    table: TableSchema,
    path: str | Path,
    chunk: int = 5000,
    progress: Callable[[CsvReport], None] | None = None,
    publish_frame: Callable[[str, dict[str, list[Any]]], Any] | None = None,
) -> CsvReport:
    """Publish every good row of ``path``; dead-letter every bad one with its line and reason.

    With ``publish_frame`` (``Tickerplant.publish_frame``) the good rows go out ``chunk`` at a
    time as columns, the values gathered per column as the lines are parsed; else as row
    dicts through ``publish``. The log is the same either way."""
    report = CsvReport(str(path), table.name)
    names = table.columns
    pending: list[dict[str, Any]] = []
    columns: dict[str, list[Any]] = {name: [] for name in names}
    count = 0

    def send() -> None:
        nonlocal columns, pending, count
        if publish_frame is not None:
            publish_frame(table.name, columns)
            columns = {name: [] for name in names}
        else:
            publish(table.name, pending)
            pending = []
        report.published += count
        count = 0

    for number, row, reason, raw in CsvRows(path, table):
        if row is None:
            report.add_error(number, reason)
            deadletters.send(table.name, reason, raw, where=f"{path}:{number}")
            continue
        if publish_frame is not None:
            for name, values in columns.items():
                values.append(row[name])
        else:
            pending.append(row)
        count += 1
        if count >= chunk:
            send()
            if progress:
                progress(report)
    if count:
        send()
    return report

