"""Undecodable messages fail with a reason that names what is wrong."""

from __future__ import annotations

import pytest

from ingest.decoder import DecodeError, Decoder
from ingest.framing import encode_block, encode_row

ROW = {"time": 1, "sym": "AAPL", "price": 10.5, "size": 100, "exchange": "N", "cond": ""}


def test_round_trip_row_and_block(catalog):
    decoder = Decoder(catalog)
    assert decoder.decode(encode_row(catalog["trade"], ROW)) == ("trade", [ROW])
    rows = [{**ROW, "time": i} for i in range(100)]
    assert decoder.decode(encode_block(catalog["trade"], rows)) == ("trade", rows)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "too short"),
        (b"\x01\x02\x00\x00\x01garbage!", "unknown framing magic"),
        (b"\x00\x00\x00\x00\x01garbage!", "magic 0.*no schema_registry_url"),
        (b"\xc3\x01" + b"\x00" * 8 + b"x", "unknown writer schema"),
    ],
)
def test_garbage_is_refused_with_a_reason(catalog, value, reason):
    with pytest.raises(DecodeError, match=reason):
        Decoder(catalog).decode(value)


def test_truncated_and_padded_bodies(catalog):
    good = encode_row(catalog["trade"], ROW)
    with pytest.raises(DecodeError, match="corrupt Avro body for table 'trade'"):
        Decoder(catalog).decode(good[:-5])
    with pytest.raises(DecodeError, match="trailing bytes"):
        Decoder(catalog).decode(good + b"\x00\x01")
