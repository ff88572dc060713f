"""Blocks decoded straight into Arrow (ingest/blocks.py, Intake.arrow) keep what the row path keeps.

One log, fed through both: ``Intake.rows`` (fastavro's dicts, then ``to_arrow``) and
``Intake.arrow`` gathered (``ingest.gather``). Blocks of three writer schema versions
(a field added with a default, a field the reader does not know), nulls, refused rows
of every reason, zero-latency rows, another table's block and corrupt blocks; the
stored tables (with ``seq``) and the dead letters must be equal.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import pyarrow as pa
import pytest

from ingest.blocks import BlockReader
from ingest.decoder import DecodeError, Decoder
from ingest.framing import encode_block, encode_row
from ingest.gather import Gathered
from ingest.intake import Intake
from ingest.schemas import SchemaCatalog, TableSchema
from ingest.topics import partition_for
from tickplant.clock import ManualClock
from tickplant.config import Settings

DAY = dt.date(2026, 11, 22)
NOON = int(dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC).timestamp()) * 10**9
CLOSE = int(dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()) * 10**9
PARTITIONS = 4
HOME = 1

TICK = {"type": "record", "name": "tick", "namespace": "tickplant", "fields": [
    {"name": "time", "type": "long"},
    {"name": "sym", "type": "string"},
    {"name": "px", "type": "double"},
    {"name": "qty", "type": ["null", "long"], "default": None},
    {"name": "venue", "type": "string", "default": "X"},
    {"name": "note", "type": ["null", "string"], "default": None},
    {"name": "w", "type": ["null", "double"], "default": None},
]}
# v1: before venue, note and w were added (the reader fills their defaults)
TICK_V1 = {**TICK, "fields": TICK["fields"][:4]}
# v3: a field this reader does not know (its union null second), written between two it does
TICK_V3 = {**TICK, "fields": [*TICK["fields"][:3], {"name": "extra", "type": ["double", "null"], "default": 0.0},
                              *TICK["fields"][3:]]}
OTHER = {"type": "record", "name": "other", "namespace": "tickplant", "fields": [
    {"name": "time", "type": "long"}, {"name": "sym", "type": "string"}, {"name": "v", "type": "double"}]}


def syms(partition: int, n: int) -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if partition_for(f"S{i}", PARTITIONS) == partition:
            out.append(f"S{i}")
        i += 1
    return out


GOOD = syms(HOME, 7)
AWAY = syms((HOME + 1) % PARTITIONS, 1)[0]


@pytest.fixture
def world(tmp_path):
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for avro in (TICK, OTHER):
        (schemas / f"{avro['name']}.avsc").write_text(json.dumps(avro))
    catalog = SchemaCatalog.load(schemas)
    writers = {TableSchema.from_dict(a).fingerprint: a for a in (TICK_V1, TICK_V3)}
    settings = Settings(partitions=PARTITIONS)

    def intake() -> Intake:
        got = Intake(settings, catalog, Decoder(catalog, lookup=writers.get), None, seq=True)
        got.rules.clock = ManualClock(NOON)
        return got
    return catalog, intake


def row(i: int, version: dict, **changes) -> dict:
    r = {"time": NOON + i // 3, "sym": GOOD[i % len(GOOD)], "px": 100.0 + i, "qty": None if i % 4 == 0 else i}
    if version is not TICK_V1:
        r.update(venue=f"V{i % 3}", note=None if i % 5 else f"n{i}", w=None if i % 2 else i / 7)
    if version is TICK_V3:
        r["extra"] = None if i % 3 else float(i)
    r.update(changes)
    return r


BAD = [  # one refused row of each reason
    {"sym": ""}, {"sym": "A\tB"}, {"sym": "É" * 33}, {"sym": AWAY}, {"time": -1},
    {"time": CLOSE + 3600 * 10**9 + 1}, {"px": math.nan}, {"px": -math.inf}, {"w": math.inf},
]


def log(catalog) -> list[bytes | None]:
    v1, v3 = TableSchema.from_dict(TICK_V1), TableSchema.from_dict(TICK_V3)
    tick = catalog["tick"]
    values: list[bytes | None] = []
    for b, version in enumerate([TICK, TICK_V1, TICK_V3, TICK, TICK_V3, TICK_V1]):
        schema = {id(TICK): tick, id(TICK_V1): v1, id(TICK_V3): v3}[id(version)]
        rows = [row(1000 * b + i, version) for i in range(150 + 40 * b)]
        if b >= 3:  # refused rows of every reason, here and there
            for k, bad in enumerate(BAD):
                if version is TICK_V1 and "w" in bad:
                    continue
                rows[7 + 13 * k + b] = {**rows[7 + 13 * k + b], **bad}
        values.append(encode_block(schema, rows))
        values.append(encode_row(tick, row(9000 + b, TICK)))  # zero-latency rows between them
        values.append(encode_row(tick, row(9100 + b, TICK, px=math.nan)))
    values.append(encode_block(tick, [row(1, TICK)] * 3))  # a small block (fastavro's encoding)
    values.append(encode_block(catalog["other"], [{"time": NOON, "sym": GOOD[0], "v": 1.0}] * 5))
    good = encode_block(tick, [row(i, TICK) for i in range(200)])
    values.append(good[:-1] + b"\x07\x00")  # junk after the rows
    values.append(good + b"\x00")  # a byte after the array's end
    values.append(good[:300] + good[301:])  # a byte gone
    values.append(good[:-40])  # cut short
    values.append(good[:-1] + b"\xff" * 3)
    values.append(None)
    values.append(encode_block(tick, []))
    values.append(good)
    return values


def test_both_paths_keep_the_same_rows_seq_and_dead_letters(world):
    catalog, intake = world
    values = log(catalog)
    rows_path, arrow_path = intake(), intake()
    rows, gathered = [], Gathered(catalog["tick"])
    fast = 0
    for offset, value in enumerate(values, start=1000):
        rows.extend(rows_path.rows("tick", HOME, offset, value, DAY))
        got = arrow_path.arrow("tick", HOME, offset, value, DAY)
        fast += isinstance(got, pa.Table)
        gathered.add(got)
    # the six blocks of three writer versions, the small one, the good one, and the one with a
    # byte gone inside a string (still good Avro: fastavro reads the same rows from it)
    assert fast == 9
    expected = catalog["tick"].to_arrow(rows, seq=True)
    table = gathered.table()
    assert table.schema == expected.schema
    assert table.equals(expected)
    # as JSON: the same keys in the same order, and NaN (never equal to itself) compared as text
    assert (json.dumps([*rows_path.pending.items()], default=repr)
            == json.dumps([*arrow_path.pending.items()], default=repr))
    assert (rows_path.refused_messages, rows_path.refused_rows) == (arrow_path.refused_messages,
                                                                    arrow_path.refused_rows)
    letters = [why for _, _, why, _ in rows_path.pending[next(iter(rows_path.pending))]]
    letters += [r["reason"] for _, _, _, payload in rows_path.pending[next(iter(rows_path.pending))]
                if isinstance(payload, dict) for r in payload["refused_rows"]]
    for words in ("sym is empty", "unprintable", "over the 64-byte limit", "belongs in partition",
                  "before the epoch", "max_future_seconds", "px is nan", "px is -inf", "w is inf",
                  "trailing bytes", "corrupt Avro body", "'other' row in the 'tick' topic", "too short"):
        assert any(words in why for why in letters), words


def test_corrupt_blocks_are_left_to_fastavro(world):
    catalog, _ = world
    tick = catalog["tick"]
    reader = BlockReader(tick, tick)
    good = encode_block(tick, [row(i, TICK) for i in range(200)])
    assert reader.read(good, 10).columns.num_rows == 200
    decoder = Decoder(catalog)
    for bad in (good[:-1] + b"\x07\x00", good + b"\x00", good[:-40], good[:-1] + b"\xff"):
        assert reader.read(bad, 10) is None
        with pytest.raises(DecodeError):
            decoder.decode(bad)


def test_what_takes_the_row_path(world):
    catalog, _ = world
    tick = catalog["tick"]
    logical = {**TICK, "fields": [{"name": "time", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
                                  *TICK["fields"][1:]]}
    # a logical type (time's timestamp-nanos) is the same bytes: read as its long, and the same
    # rows as fastavro gives (it reads the long too: the plant's readers parse schemas without them)
    with_logical = TableSchema.from_dict(logical)
    reader = BlockReader(with_logical, tick)
    assert reader.ok
    rows = [{"time": NOON + i, "sym": "A", "px": 1.5, "qty": i, "venue": "X", "note": None, "w": 2.0}
            for i in range(3)]
    body = encode_block(with_logical, rows)
    assert reader.read(body, 10).columns.column("time").to_pylist() == [r["time"] for r in rows]
    assert Decoder(catalog).decode(body)[1] == rows
    flagged = {**TICK, "fields": [*TICK["fields"], {"name": "flag", "type": "boolean", "default": False}]}
    assert not BlockReader(TableSchema.from_dict(flagged), tick).ok  # a boolean: fastavro reads it
    promoted = {**TICK, "fields": [{"name": "time", "type": "int"}, *TICK["fields"][1:]]}
    assert not BlockReader(TableSchema.from_dict(promoted), tick).ok  # int -> long: fastavro resolves
    no_default = {**TICK, "fields": [*TICK["fields"], {"name": "z", "type": "long"}]}
    assert not BlockReader(tick, TableSchema.from_dict(no_default)).ok  # fastavro refuses it


def test_the_pdbs_spill_holds_the_same_rows_either_way(world, tmp_path):
    from sinks.spill import SpillCache, read_day

    catalog, intake = world
    values = log(catalog)
    got = {}
    for way in ("rows", "arrow"):
        cache = SpillCache(tmp_path / way, catalog)
        cache.start("tick", HOME, 1000)
        taker = intake()
        for offset, value in enumerate(values, start=1000):
            rows = getattr(taker, way)("tick", HOME, offset, value, DAY)
            if (rows.num_rows if isinstance(rows, pa.Table) else len(rows)):
                cache.append("tick", HOME, offset, rows)
            else:
                cache.skip("tick", HOME, offset)
            if offset % 5 == 0:
                cache.commit()  # flushes between messages of either kind
        cache.commit()
        ranges = {HOME: (1000, 1000 + len(values) - 1)}
        got[way] = pa.Table.from_batches(list(read_day(cache.day_files("tick", ranges))))
        cache.close()
    assert got["arrow"].num_rows > 1000
    assert got["arrow"].equals(got["rows"])


def test_mutated_blocks_read_the_same_both_ways(world):
    """Random byte changes, cuts and insertions in blocks: each message gives the same kept
    rows and the same dead letter either way (most go to fastavro, some still read)."""
    import random

    catalog, intake = world
    tick = catalog["tick"]
    good = encode_block(tick, [row(i, TICK) for i in range(120)])
    rng = random.Random(14)
    rows_path, arrow_path = intake(), intake()
    fast = 0
    for offset in range(600):
        value = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(10, len(value))
            how = rng.random()
            if how < 0.6:
                value[at] = rng.randrange(256)
            elif how < 0.8:
                del value[at]
            else:
                value.insert(at, rng.randrange(256))
        value = bytes(value)
        expected = rows_path.rows("tick", HOME, offset, value, DAY)
        got = arrow_path.arrow("tick", HOME, offset, value, DAY)
        if isinstance(got, pa.Table):
            fast += 1
            assert got.equals(tick.to_arrow(expected, seq=True)), offset
        else:
            assert json.dumps(got, default=repr) == json.dumps(expected, default=repr)
    assert (json.dumps([*rows_path.pending.items()], default=repr)
            == json.dumps([*arrow_path.pending.items()], default=repr))
    assert fast > 10
