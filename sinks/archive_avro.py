"""The archive's Avro object container files, written by hand for speed (read back by fastavro).

A zero-latency day is a message per row, and fastavro's writer spends most of
an archiver's time on each record's union and array fields; the record here is
fixed (``MESSAGE_SCHEMA``), so it is encoded directly: zigzag varints, the
union's branch, length-prefixed bytes, as the Avro specification lays them
out. The container is the specification's too: ``Obj\\x01``, the metadata map
(schema, codec), the sync marker, then blocks of records (count, size, the
deflated bytes, the marker). Every reader of the archive reads it with
fastavro, an independent implementation, and ``tests/test_archive.py``
compares what it reads with the log itself, message for message.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from ingest.framing import long_bytes

MAGIC = b"Obj\x01"
NULL = b"\x00"
SOME = b"\x02"  # the second branch of ["null", "bytes"]
_SMALL = tuple(long_bytes(i) for i in range(1 << 14))  # lengths, partitions: looked up, not computed


def _long(value: int) -> bytes:
    return _SMALL[value] if 0 <= value < 16384 else long_bytes(value)

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "LogMessage", "namespace": "tickplant.archive",
    "doc": "One message of a table's Kafka topic, as it was in the log.",
    "fields": [
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {"name": "timestamp", "type": "long", "doc": "ms since the epoch"},
        {"name": "timestamp_type", "type": "int", "doc": "1: CreateTime, 2: LogAppendTime"},
        {"name": "key", "type": ["null", "bytes"]},
        {"name": "value", "type": ["null", "bytes"]},
        {"name": "headers", "type": {"type": "array", "items": {
            "type": "record", "name": "Header",
            "fields": [{"name": "key", "type": "string"}, {"name": "value", "type": ["null", "bytes"]}],
        }}},
    ],
}


def _optional(data: bytes | None) -> bytes:
    return NULL if data is None else SOME + _long(len(data)) + data


def encode_message(partition: int, offset: int, timestamp: int, timestamp_type: int, key: bytes | None,
                   value: bytes | None, headers: list[tuple[str, bytes | None]] | None) -> bytes:
    """One ``MESSAGE_SCHEMA`` record in Avro's binary encoding."""
    parts = [_long(partition), long_bytes(offset), long_bytes(timestamp), _long(timestamp_type),
             _optional(key), _optional(value)]
    if headers:
        parts.append(_long(len(headers)))
        for name, data in headers:
            encoded = name.encode()
            parts += [_long(len(encoded)), encoded, _optional(data)]
    parts.append(NULL)  # the array's end (or an empty array)
    return b"".join(parts)


class ContainerWriter:
    """Records out as an Avro object container file, deflated, with a given sync marker."""

    def __init__(self, out: Any, metadata: dict[str, str], sync_marker: bytes, level: int = 1,
                 block_bytes: int = 1 << 20):
        assert len(sync_marker) == 16
        self.out = out
        self.sync_marker = sync_marker
        self.level = level
        self.block_bytes = block_bytes
        self._records: list[bytes] = []
        self._size = 0
        meta = {"avro.schema": json.dumps(MESSAGE_SCHEMA).encode(), "avro.codec": b"deflate",
                **{k: v.encode() for k, v in metadata.items()}}
        header = [MAGIC, long_bytes(len(meta))]
        for k, v in meta.items():
            header += [long_bytes(len(k.encode())), k.encode(), long_bytes(len(v)), v]
        header += [NULL, sync_marker]
        out.write(b"".join(header))

    def append(self, record: bytes) -> None:
        self._records.append(record)
        self._size += len(record)
        if self._size >= self.block_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the records held as one block (Avro's deflate: raw, no zlib header)."""
        if not self._records:
            return
        deflate = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        data = deflate.compress(b"".join(self._records)) + deflate.flush()
        self.out.write(long_bytes(len(self._records)) + long_bytes(len(data)) + data + self.sync_marker)
        self._records, self._size = [], 0
