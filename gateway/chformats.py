"""The gateway's answers in ClickHouse's own output formats, for ClickHouse clients.

A gateway answer is an Arrow table. Rather than re-implement ClickHouse's formats,
the table is handed to chDB (``SELECT * FROM Python(table)``), which writes it in
any format ClickHouse has, with ClickHouse's own type names: what a ClickHouse
driver reads is what ClickHouse itself would have written. Columns without nulls
are declared non-nullable first, so ``price`` is ``Float64``, not
``Nullable(Float64)``.

One exception: ``Native`` over HTTP is written by ClickHouse at the protocol
revision the client asks for (``client_protocol_version``): from revision 1 each
block starts with its block info, and from 54454 each column carries a "custom
serialization" flag. chDB writes revision 0; ``native`` adds those bytes, taking
each column's bytes from chDB one column at a time.
"""

from __future__ import annotations

import gzip
import re
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import chdb
import pyarrow as pa

# ClickHouse's revision from which Native columns carry the custom-serialization flag
CUSTOM_SERIALIZATION_REVISION = 54454
NATIVE_SLICE_ROWS = 65_000  # under chDB's block size: one column of a slice is one block
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"  # is_overflows=0, bucket_num=-1, end
_SETTING_VALUE = re.compile(r"^[A-Za-z0-9_.:+\-]*$")
CHDB_LOCK = threading.Lock()  # one chDB query at a time from the ClickHouse interface


@dataclass(frozen=True)
class Format:
    name: str  # ClickHouse's spelling
    content_type: str


_TEXT = "text/plain; charset=UTF-8"
_TSV = "text/tab-separated-values; charset=UTF-8"
_JSON = "application/json; charset=UTF-8"
_BINARY = "application/octet-stream"
FORMATS = {f.name.lower(): f for f in [
    Format("TabSeparated", _TSV), Format("TabSeparatedRaw", _TSV), Format("TabSeparatedWithNames", _TSV),
    Format("TabSeparatedWithNamesAndTypes", _TSV), Format("CSV", "text/csv; charset=UTF-8; header=absent"),
    Format("CSVWithNames", "text/csv; charset=UTF-8; header=present"),
    Format("CSVWithNamesAndTypes", "text/csv; charset=UTF-8; header=present"),
    Format("JSON", _JSON), Format("JSONStrings", _JSON), Format("JSONCompact", _JSON),
    Format("JSONCompactStrings", _JSON), Format("JSONEachRow", "application/x-ndjson; charset=UTF-8"),
    Format("JSONStringsEachRow", "application/x-ndjson; charset=UTF-8"),
    Format("JSONCompactEachRow", "application/x-ndjson; charset=UTF-8"),
    Format("JSONCompactEachRowWithNames", "application/x-ndjson; charset=UTF-8"),
    Format("JSONCompactEachRowWithNamesAndTypes", "application/x-ndjson; charset=UTF-8"),
    Format("JSONColumns", _JSON), Format("JSONObjectEachRow", _JSON), Format("XML", "application/xml; charset=UTF-8"),
    Format("Arrow", _BINARY), Format("ArrowStream", _BINARY), Format("Parquet", _BINARY), Format("ORC", _BINARY),
    Format("Avro", _BINARY), Format("RowBinary", _BINARY), Format("RowBinaryWithNames", _BINARY),
    Format("RowBinaryWithNamesAndTypes", _BINARY), Format("Native", _BINARY), Format("Values", _TEXT),
    Format("Vertical", _TEXT), Format("Pretty", _TEXT), Format("PrettyCompact", _TEXT),
    Format("PrettyCompactMonoBlock", _TEXT), Format("PrettySpace", _TEXT), Format("Markdown", "text/markdown; charset=UTF-8"),
    Format("Null", _TEXT), Format("String", _TEXT),
]}
ALIASES = {"tsv": "tabseparated", "tsvraw": "tabseparatedraw", "tsvwithnames": "tabseparatedwithnames",
           "tsvwithnamesandtypes": "tabseparatedwithnamesandtypes", "jsonlines": "jsoneachrow",
           "ndjson": "jsoneachrow", "raw": "tabseparatedraw", "markdown": "markdown"}
DEFAULT = "TabSeparated"
# content codings answered to Accept-Encoding (with enable_http_compression=1), in our order of preference
ENCODINGS = ("zstd", "gzip", "deflate")


class UnknownFormat(ValueError):
    """A format name ClickHouse clients may send that this gateway does not write."""


def format_named(name: str) -> Format:
    """The format for a name as ClickHouse reads it (case-insensitive here, aliases too)."""
    key = ALIASES.get(name.lower(), name.lower())
    found = FORMATS.get(key)
    if found is None or found.name == "String":
        raise UnknownFormat(f"unknown format {name!r}; the gateway writes "
                            f"{', '.join(f.name for f in FORMATS.values() if f.name != 'String')}")
    return found


def strict(table: pa.Table) -> pa.Table:
    """Columns that hold no null declared non-nullable (ClickHouse's plain types)."""
    fields = [f.with_nullable(table.column(i).null_count > 0) for i, f in enumerate(table.schema)]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def encode(table: pa.Table, fmt: Format, settings: dict[str, str] | None = None, revision: int = 0) -> bytes:
    """``table`` written by chDB in ``fmt``; ``settings``: output_format_* settings of the request."""
    table = strict(table)
    if fmt.name == "Native" and revision > 0:
        return native(table, revision, settings)
    return _chdb(table, fmt.name, settings)


def _chdb(table: pa.Table, fmt: str, settings: dict[str, str] | None) -> bytes:
    answer = table  # noqa: F841 (read by name by chDB's Python() table function)
    sql = "SELECT * FROM Python(answer)" + _settings_clause(settings)
    with CHDB_LOCK:
        return bytes(chdb.query(sql, fmt).bytes())


def _settings_clause(settings: dict[str, str] | None) -> str:
    if not settings:
        return ""
    for key, value in settings.items():
        if not re.fullmatch(r"[a-z0-9_]+", key) or not _SETTING_VALUE.match(value):
            raise ValueError(f"setting {key}={value!r}: not a plain name and value")
    return " SETTINGS " + ", ".join(f"{k} = '{v}'" for k, v in settings.items())


def native(table: pa.Table, revision: int, settings: dict[str, str] | None = None) -> bytes:
    """ClickHouse's Native format at protocol ``revision`` (> 0), a block per slice of rows."""
    out = bytearray()
    table = table.combine_chunks()  # chDB writes a block per chunk
    slices = [table.slice(i, NATIVE_SLICE_ROWS) for i in range(0, table.num_rows, NATIVE_SLICE_ROWS)] or [table]
    for part in slices:
        out += BLOCK_INFO + _varint(part.num_columns) + _varint(part.num_rows)
        for i in range(part.num_columns):
            column = _chdb(part.select([i]), "Native", settings)
            name_type, data = _split_column(column, part.num_rows)
            out += name_type
            if revision >= CUSTOM_SERIALIZATION_REVISION:
                out += b"\x00"
            out += data
    return bytes(out)


def _split_column(block: bytes, rows: int) -> tuple[bytes, bytes]:
    """One column's revision-0 Native block as (name and type, data)."""
    pos = 0
    counts = []
    for _ in range(2):
        value, pos = _read_varint(block, pos)
        counts.append(value)
    if counts != [1, rows]:
        raise RuntimeError(f"chDB wrote {counts[1]} rows of {counts[0]} columns in a block, not {rows} of 1")
    start = pos
    for _ in range(2):  # name, type
        length, pos = _read_varint(block, pos)
        pos += length
    return block[start:pos], block[pos:]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def content_coding(accept_encoding: str | None) -> str | None:
    """The coding to answer with: the first of ours the client accepts (q=0 excluded)."""
    offered = set()
    for part in (accept_encoding or "").split(","):
        name, _, params = part.strip().partition(";")
        if name and params.replace(" ", "") not in ("q=0", "q=0.0"):
            offered.add(name.strip().lower())
    return next((c for c in ENCODINGS if c in offered), None)


def compress(body: bytes, coding: str, level: int | None = None) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, compresslevel=level if level is not None else 3)
    if coding == "deflate":
        return zlib.compress(body, level if level is not None else 3)
    return _zstd().compress(body, level if level is not None else 3)


def _zstd() -> Any:
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]  # Python 3.14
    except ImportError:
        from backports import zstd  # type: ignore[no-redef,unused-ignore]  # clickhouse-connect installs it before 3.14
    return zstd
