"""One record's Avro bytes without fastavro's walk of the schema: the row writer of the log.

fastavro writes a record by walking its schema for every value, and a
``["null", T]`` union by testing the value against each branch: for a
single row (zero-latency mode, a small block, an engine output with twenty-odd
nullable fields) that walk is most of the cost. The tables' records are flat:
long, int, double, string and boolean fields and ``["null", T]`` unions of
them (a ``long`` may carry a logical type such as ``timestamp-nanos``: the
bytes are the long's). Their Avro encoding is simple: zigzag varints,
little-endian doubles, length-prefixed UTF-8, a byte for a boolean, the branch
index before a union's value. ``compile_record`` makes one function writing
exactly those bytes for a schema (tests/test_fast_encode.py and test_cep.py
hold them equal to fastavro's); it raises ``NotExact`` for a record whose
values are not exactly of their fields' types (an ``int`` for a double, a
missing field, a string that is not UTF-8), which fastavro then converts,
fills in or rejects (``ingest.framing.RecordCodec.record``).

The column-wise encoder of many rows at once is ``ingest.framing``'s; both use
``long_bytes``' zigzag for a single long.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_DOUBLE = struct.Struct("<d").pack
_ONE_BYTE = [bytes([i]) for i in range(128)]
FLAT_KINDS = ("long", "int", "double", "string", "boolean")


def long_bytes(value: int) -> bytes:
    """Avro's zigzag varint of one long (most are one byte: lengths, small counts)."""
    z = ((value << 1) ^ (value >> 63)) & 0xFFFFFFFFFFFFFFFF
    if z < 128:
        return _ONE_BYTE[z]
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def flat_kind(avro_type: Any) -> str | None:
    """The primitive a field type is written as, if one of the flat kinds: a name, or a
    ``{"type": "long", "logicalType": ...}`` (the logical type does not change the bytes)."""
    if isinstance(avro_type, dict) and set(avro_type) <= {"type", "logicalType"}:
        avro_type = avro_type.get("type")
    return avro_type if isinstance(avro_type, str) and avro_type in FLAT_KINDS else None


class NotExact(Exception):
    """A value this writer does not take as is: fastavro decides."""


def _not_exact() -> None:
    raise NotExact


# Each flat kind as Python source appending the bytes of ``v`` to ``out`` (``_not_exact()`` if
# ``v`` is not exactly of the kind): a record's writer is these, one per field, in one function.
_KIND_SOURCE = {
    "long": "if type(v) is not int or not -9223372036854775808 <= v <= 9223372036854775807: _not_exact()\n"
            "out.append(_zigzag(v))",
    "int": "if type(v) is not int or not -2147483648 <= v <= 2147483647: _not_exact()\nout.append(_zigzag(v))",
    "double": "if type(v) is not float: _not_exact()\nout.append(_double(v))",
    "string": "if type(v) is not str: _not_exact()\nb = v.encode()\nout.append(_zigzag(len(b)))\nout.append(b)",
    "boolean": "if type(v) is not bool: _not_exact()\nout.append(b'\\x01' if v else b'\\x00')",
}


def _field_source(name: str, avro_type: Any) -> str | None:
    """The source writing one field's value, or None for a type outside the flat kinds."""
    get = f"v = row[{name!r}]\n"
    kind = flat_kind(avro_type)
    if kind is not None:
        return get + _KIND_SOURCE[kind]
    if isinstance(avro_type, list) and len(avro_type) == 2 and "null" in avro_type:
        null_index = avro_type.index("null")
        kind = flat_kind(avro_type[1 - null_index])
        if kind is None:
            return None
        inner = "\n".join("    " + line for line in _KIND_SOURCE[kind].splitlines())
        return (f"{get}if v is None:\n    out.append({bytes([2 * null_index])!r})\n"
                f"else:\n    out.append({bytes([2 * (1 - null_index)])!r})\n{inner}")
    return None


def compile_record(avro: dict[str, Any]) -> Callable[[dict[str, Any]], bytes] | None:
    """One function writing a whole record (no call per field), raising ``NotExact`` for a
    record fastavro must see; None if some field is not flat (fastavro writes every record)."""
    fields = avro.get("fields", [])
    sources = [src for f in fields if (src := _field_source(f["name"], f["type"])) is not None]
    if len(sources) != len(fields):
        return None
    body = "\n".join("    " + line for src in sources for line in src.splitlines())
    code = (f"def write(row):\n    out = []\n    try:\n{_indent(body)}\n"
            f"    except (KeyError, UnicodeError):\n        _not_exact()\n    return b''.join(out)\n")
    scope: dict[str, Any] = {"_zigzag": long_bytes, "_double": _DOUBLE, "_not_exact": _not_exact}
    exec(compile(code, f"<writer of {avro.get('name')}>", "exec"), scope)  # noqa: S102 - made from the schema's field types
    return scope["write"]


def _indent(body: str) -> str:
    return "\n".join("    " + line for line in body.splitlines())
