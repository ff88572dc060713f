"""A vendor file's columns into the table's: names mapped, values typed, times to ns UTC.

A chunk of a file (CSV values as bytes, Parquet values typed) becomes an
Arrow table with the table's column names and types, and the reason each
row that cannot become a row was refused. Every column is converted whole
by Arrow first; only a column with a value Arrow refuses is converted again
value by value, for the reasons (a file with no bad rows costs no Python
per row).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.feeds.csvfeed import RowError, parse_time
from ingest.schemas import TableSchema
from ingest.sources import Source

_ARROW = {"long": pa.int64(), "int": pa.int32(), "double": pa.float64(), "float": pa.float32(),
          "boolean": pa.bool_(), "string": pa.string()}


class LayoutError(ValueError):
    """A file's columns do not fit its table (the whole object is refused); names the column."""


@dataclass(frozen=True)
class Layout:
    """Which file column becomes which table column."""

    read: dict[str, str]  # file column -> table column, in file order

    @classmethod
    def of(cls, url: str, header: list[str], source: Source, schema: TableSchema) -> Layout:
        known = set(schema.columns)
        read: dict[str, str] = {}
        for name in header:
            if name in source.drop:
                continue
            ours = source.columns.get(name, name)
            if ours not in known:
                raise LayoutError(
                    f"{url}: column {name!r} is not in table {schema.name} ({', '.join(schema.columns)}); "
                    f"map it in [ingest.sources.{source.name}].columns or list it in drop")
            read[name] = ours
        targets = list(read.values())
        dupes = sorted({c for c in targets if targets.count(c) > 1})
        if dupes:
            raise LayoutError(f"{url}: column(s) {', '.join(dupes)} of table {schema.name} given twice")
        missing = [f["name"] for f in schema.fields
                   if f["name"] not in targets and "default" not in f and not schema.column_type(f["name"])[1]]
        if missing:
            raise LayoutError(f"{url}: no column for {', '.join(missing)}, required by table {schema.name} "
                              f"(file columns: {', '.join(header)})")
        return cls(read)


def _local_offset_ns(ns: int, zone: zoneinfo.ZoneInfo) -> int:
    """The zone's UTC offset at a wall-clock time (given as if it were UTC)."""
    wall = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=ns // 1000)
    offset = wall.replace(tzinfo=zone).utcoffset() or dt.timedelta(0)
    return int(offset.total_seconds()) * 1_000_000_000


class Converter:
    """Converts chunks for one (source, table)."""

    def __init__(self, source: Source, schema: TableSchema):
        self.source = source
        self.schema = schema
        self.fields = {f["name"]: f for f in schema.fields}
        self.zone = zoneinfo.ZoneInfo(source.timezone)

    def convert(self, batch: pa.RecordBatch | pa.Table, layout: Layout) -> tuple[pa.Table, dict[int, str]]:
        """The chunk as the table's columns, and row index -> reason for rows refused."""
        bad: dict[int, str] = {}
        arrays, names = [], []
        for file_col, ours in layout.read.items():
            values = batch.column(file_col)
            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks()
            arrays.append(self._column(ours, values, bad))
            names.append(ours)
        for name, f in self.fields.items():  # a field the file lacks: its default (or null)
            if name not in names:
                base, _ = self.schema.column_type(name)
                arrays.append(pa.array([f.get("default")] * batch.num_rows, _ARROW[base]))
                names.append(name)
        return pa.table(arrays, names=names), bad

    # -- one column ------------------------------------------------------------

    def _column(self, name: str, values: pa.Array, bad: dict[int, str]) -> pa.Array:
        base, nullable = self.schema.column_type(name)
        if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
            try:
                values = pc.utf8_trim_whitespace(values.cast(pa.string()))
            except pa.ArrowInvalid:  # bytes that are not UTF-8: find which rows
                return self._slow(name, base, nullable, values, bad)
        try:
            return self._fast(name, base, nullable, values)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, RowError, OverflowError):
            return self._slow(name, base, nullable, values, bad)

    def _fast(self, name: str, base: str, nullable: bool, values: pa.Array) -> pa.Array:
        target = _ARROW[base]
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            empty = pc.equal(values, "").fill_null(True)
            if pc.any(empty).as_py():
                if base == "string":
                    return values if not nullable else pc.if_else(empty, pa.scalar(None, pa.string()), values)
                f = self.fields[name]
                if nullable:
                    fill = None
                elif "default" in f:
                    fill = f["default"]
                else:
                    raise RowError("empty values")  # the slow path says which rows
                values = pc.if_else(empty, pa.scalar(None, pa.string()), values)
                out = self._typed(name, base, values)
                return out if fill is None else out.fill_null(pa.scalar(fill, out.type))
            return self._typed(name, base, values)
        if name == "time":
            return self._time_typed(values)
        if values.type == target:
            return values
        return values.cast(target)  # safe: an int of 40 bits into int, a float into long refuse

    def _typed(self, name: str, base: str, text: pa.Array) -> pa.Array:
        if name == "time":
            return self._time_text(text)
        return text.cast(_ARROW[base])

    def _time_text(self, text: pa.Array) -> pa.Array:
        fmt, scale = self.source.time_format, self.source.time_scale
        if fmt == "epoch" or (fmt == "iso" and pc.all(pc.match_substring_regex(text, r"^-?\d+$")).as_py() is not False):
            out = text.cast(pa.int64())
            return out if scale == 1 else pc.multiply_checked(out, scale)
        if fmt == "iso":
            stamps = text.cast(pa.timestamp("ns"))  # no zone offsets: those take the slow path
        else:
            stamps = pc.strptime(text, format=fmt, unit="ns", error_is_null=False)
            if "%z" in fmt:
                return stamps.cast(pa.int64())
        return self._from_wall(stamps)

    def _time_typed(self, values: pa.Array) -> pa.Array:
        if pa.types.is_timestamp(values.type):
            if values.type.tz is None:
                return self._from_wall(values.cast(pa.timestamp("ns")))
            return values.cast(pa.timestamp("ns", values.type.tz)).cast(pa.int64())
        if pa.types.is_integer(values.type):
            out = values.cast(pa.int64())
            return out if self.source.time_scale == 1 else pc.multiply_checked(out, self.source.time_scale)
        raise pa.ArrowInvalid(f"time of type {values.type}")

    def _from_wall(self, stamps: pa.Array) -> pa.Array:
        """Naive wall-clock times in the source's zone -> ns since the epoch, UTC."""
        if self.source.timezone != "UTC":
            stamps = pc.assume_timezone(stamps, self.source.timezone, ambiguous="earliest",
                                        nonexistent="earliest")
        return stamps.cast(pa.int64())

    # -- value by value, for the reasons -----------------------------------------

    def _slow(self, name: str, base: str, nullable: bool, values: pa.Array, bad: dict[int, str]) -> pa.Array:
        f = self.fields[name]
        out: list[Any] = []
        for i, value in enumerate(values.to_pylist()):
            try:
                out.append(self._one(name, base, nullable, f, value))
            except RowError as exc:
                bad.setdefault(i, str(exc))
                out.append(None)
            except (ValueError, TypeError, OverflowError):
                shown = value[:80] if isinstance(value, str | bytes) else value
                bad.setdefault(i, f"{name}: {shown!r} is not a valid {base}")
                out.append(None)
        return pa.array(out, _ARROW[base])

    def _one(self, name: str, base: str, nullable: bool, f: dict[str, Any], value: Any) -> Any:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RowError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                if nullable:
                    return None
                if base == "string":
                    return ""
                if "default" in f:
                    return f["default"]
                raise RowError(f"empty value for {name} ({base})")
        elif value is None:
            if nullable or "default" in f:
                return f.get("default")
            raise RowError(f"null value for {name} ({base})")
        if name == "time":
            return self._one_time(value)
        if base in ("long", "int"):
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
            bits = 63 if base == "long" else 31
            if number is None or not -(1 << bits) <= number < (1 << bits):
                raise RowError(f"{name}: {value!r} is out of range for {base}" if number is not None
                               else f"{name}: {value!r} is not a whole number")
            return number
        if base in ("double", "float"):
            return float(value)
        if base == "boolean":
            low = str(value).lower()
            if low in ("true", "1"):
                return True
            if low in ("false", "0"):
                return False
            raise ValueError(value)
        return str(value)

    def _one_time(self, value: Any) -> int:
        fmt, scale = self.source.time_format, self.source.time_scale
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=self.zone)
            delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
            return int(value) * scale
        text = str(value)
        if fmt not in ("iso", "epoch"):
            try:
                parsed = dt.datetime.strptime(text, fmt)
            except ValueError:
                raise RowError(f"time {text[:80]!r} does not match time_format {fmt!r}") from None
            return self._one_time(parsed)
        if fmt == "epoch":
            raise RowError(f"time {text[:80]!r} is not an integer ({self.source.time_unit} since the epoch)")
        ns = parse_time(text)  # naive: as if UTC; then moved by the zone's offset
        has_zone = text.endswith("Z") or (len(text) > 6 and text[-6] in "+-" and text[-3] == ":") or \
            (len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit() and "T" in text[:-5])
        if not has_zone and self.source.timezone != "UTC":
            ns -= _local_offset_ns(ns, self.zone)
        return ns


def keep_rows(table: pa.Table, refused: dict[int, str]) -> tuple[pa.Table, np.ndarray]:
    """The table without the refused rows, and the kept rows' indices in the chunk."""
    if not refused:
        return table, np.arange(table.num_rows)
    mask = np.ones(table.num_rows, bool)
    mask[list(refused)] = False
    return table.filter(pa.array(mask)), np.flatnonzero(mask)
