"""The Avro bytes of the engine's output records, without fastavro's per-union type search.

fastavro writes a ``["null", T]`` union by testing the value against the
branches, a few microseconds a field: an ``rte.analytics`` record (twenty-odd
such fields) took ~50 us, and under low load a read's outputs (one record per
sym it touched) were most of the engine's CPU time and so of its latency.

The output records are flat: long, int, double, string and boolean fields
and ``["null", T]`` unions of them. Their Avro encoding is simple: zigzag
varints, little-endian doubles, length-prefixed UTF-8, a byte for a
boolean, the branch index before a union's value. ``RecordEncoder`` writes
exactly those bytes (tests/test_cep.py holds them equal to fastavro's) when
every value has exactly the type the field expects (an ``int`` for a long, a
``float`` for a double, ...); any other record, or a schema with other
field types, goes to ``ingest.framing.encode_row`` (fastavro), which encodes
it as before or rejects it with its own error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ingest.framing import ROW_MAGIC, encode_row, long_bytes
from ingest.schemas import TableSchema

_DOUBLE = struct.Struct("<d").pack
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1


def saturated(value: int) -> int:
    """A sum (a day's volume, a bar's) within Avro's long: at its bound if beyond (a feed's absurd
    sizes must not make an output record the encoder refuses, which would stop the engine)."""
    return LONG_MIN if value < LONG_MIN else LONG_MAX if value > LONG_MAX else value


class _Fallback(Exception):
    """A value this encoder does not take as is: fastavro decides."""


# Each flat kind as Python source appending the bytes of ``v`` to ``out`` (``_fallback()`` if
# ``v`` is not exactly of the kind): a record's encoder is these, one per field, in one function.
_KIND_SOURCE = {
    "long": "if type(v) is not int or not -9223372036854775808 <= v <= 9223372036854775807: _fallback()\n"
            "out.append(_zigzag(v))",
    "int": "if type(v) is not int or not -2147483648 <= v <= 2147483647: _fallback()\nout.append(_zigzag(v))",
    "double": "if type(v) is not float: _fallback()\nout.append(_double(v))",
    "string": "if type(v) is not str: _fallback()\nb = v.encode()\nout.append(_zigzag(len(b)))\nout.append(b)",
    "boolean": "if type(v) is not bool: _fallback()\nout.append(b'\\x01' if v else b'\\x00')",
}


def _fallback() -> None:
    raise _Fallback


def _field_source(name: str, avro_type: Any) -> str | None:
    """The source encoding one field's value, or None for a type outside the flat kinds."""
    get = f"v = row[{name!r}]\n"
    if isinstance(avro_type, str):
        body = _KIND_SOURCE.get(avro_type)
        return get + body if body else None
    if isinstance(avro_type, list) and len(avro_type) == 2 and "null" in avro_type:
        null_index = avro_type.index("null")
        other = avro_type[1 - null_index]
        body = _KIND_SOURCE.get(other) if isinstance(other, str) else None
        if body is None:
            return None
        inner = "\n".join("    " + line for line in body.splitlines())
        return (f"{get}if v is None:\n    out.append({bytes([2 * null_index])!r})\n"
                f"else:\n    out.append({bytes([2 * (1 - null_index)])!r})\n{inner}")
    return None


def _compile(avro: dict[str, Any]) -> Callable[[dict[str, Any]], bytes] | None:
    """One function writing a whole record (no call per field), or None if a field is not flat."""
    fields = avro.get("fields", [])
    sources = [src for f in fields if (src := _field_source(f["name"], f["type"])) is not None]
    if len(sources) != len(fields):
        return None
    body = "\n".join("    " + line for src in sources for line in src.splitlines())
    code = f"def encode(row):\n    out = []\n{body}\n    return b''.join(out)\n"
    scope: dict[str, Any] = {"_zigzag": long_bytes, "_double": _DOUBLE, "_fallback": _fallback}
    exec(compile(code, f"<encoder of {avro.get('name')}>", "exec"), scope)  # noqa: S102 - made from the schema's field types
    return scope["encode"]


class RecordEncoder:
    """Single-object encoded rows (``C3 01`` + fingerprint + record) of one flat record schema."""

    def __init__(self, table: TableSchema):
        self.table = table
        self.header = ROW_MAGIC + table.fingerprint
        self._encode = _compile(table.avro)  # None: a field type outside the flat kinds, all to fastavro
        self.fast = 0
        self.slow = 0

    def encode(self, row: dict[str, Any]) -> bytes:
        """The row's message bytes, identical to ``encode_row(table, row)``."""
        if self._encode is not None:
            try:
                encoded = self._encode(row)
            except (_Fallback, KeyError):
                pass
            else:
                self.fast += 1
                return self.header + encoded
        self.slow += 1
        return encode_row(self.table, row)
