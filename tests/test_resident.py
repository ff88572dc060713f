"""The resident rows (streams/resident.py) answer exactly what the disk holds.

A shard with resident rows and a budget that forces evictions is driven through
random writes (large runs, tail runs, merges of small chunks), reads of some
syms or all of them, and day drops; after each step its reads must equal those
of a shard that holds nothing in memory (budget 0) fed the same log, and the
rows must be the model's, in log order.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from streams.resident import Budget, Resident
from streams.shard import Resources, Shard

DAYS = ("2026-12-07", "2026-12-08")
SYMS = ("A", "AA", "AAPL", "IBM", "MSFT", "Z")
T0 = 1_796_000_000_000_000_000


def _prices(tables: list[pa.Table]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for t in tables:
        for sym, price in zip(t.column("sym").to_pylist(), t.column("price").to_pylist(), strict=True):
            out.setdefault(sym, []).append(price)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_resident_reads_equal_disk_reads_through_writes_merges_evictions_and_drops(catalog, tmp_path, seed):
    rnd = random.Random(seed)
    schema = catalog["trade"]
    # a small budget: a few syms fit, so reads keep evicting and re-reading
    held = Shard(tmp_path / "held", Resources(8 << 20, 8 << 20, resident_bytes=rnd.choice([3_000, 20_000, 1 << 30])))
    disk = Shard(tmp_path / "disk", Resources(8 << 20, 8 << 20, resident_bytes=0))
    model: dict[str, dict[str, list[float]]] = {d: {} for d in DAYS}
    price = 0.0
    for offset in range(400):
        action = rnd.random()
        if action < 0.6:
            day = rnd.choice(DAYS)
            rows = []
            for _ in range(rnd.choice([1, 2, 5, 40, 700])):
                price += 1
                sym = rnd.choice(SYMS)
                rows.append({"time": T0 + int(price), "sym": sym, "price": price, "size": 1,
                             "exchange": "N", "cond": ""})
                model[day].setdefault(sym, []).append(price)
            table = schema.to_arrow(rows)
            defer = rnd.random() < 0.5
            for shard in (held, disk):
                shard.apply(offset, day, table, defer=defer)
        elif action < 0.9:
            day = rnd.choice(DAYS)
            syms = None if rnd.random() < 0.4 else rnd.sample(SYMS, rnd.randint(1, 3))
            got = _prices(held.read(day, syms))
            assert got == _prices(disk.read(day, syms)), (offset, day, syms, model[day])
            want = {s: p for s, p in model[day].items() if syms is None or s in syms}
            assert got == want, (offset, day, syms)
            # each chunk is one sym's, the one it is read with (a partial's dictionaries rely on it)
            assert all(set(c.column("sym").to_pylist()) == {s} for s, c in held.read_by_sym(day, syms))
        elif action < 0.95:
            for shard in (held, disk):
                shard.flush()
        else:
            day = rnd.choice(DAYS)
            for shard in (held, disk):
                shard.drop_day(day)
            model[day] = {}
        assert held.resident.nbytes <= held.resident.budget.limit
        assert disk.resident.nbytes == 0
    for day in DAYS:
        assert _prices(held.read(day, None)) == model[day]
    held.close()
    disk.close()


def test_a_new_day_is_resident_from_its_first_rows(catalog, tmp_path):
    """The open day is queried from its first rows: a shard starting one keeps what it
    writes without a read from disk first, and answers the same."""
    schema = catalog["trade"]
    shard = Shard(tmp_path / "s", Resources(8 << 20, 8 << 20, resident_bytes=1 << 30))
    rows = [{"time": T0 + i, "sym": s, "price": float(i), "size": 1, "exchange": "N", "cond": ""}
            for i, s in enumerate(["A", "B", "A", "C"] * 200)]
    shard.apply(0, DAYS[0], schema.to_arrow(rows[:400]))
    shard.apply(1, DAYS[0], schema.to_arrow(rows[400:]))
    assert shard.resident.day(DAYS[0]) is not None and shard.resident.nbytes > 0
    shard.db.delete_range(b"R", b"S")  # what is answered now cannot come from disk
    got = _prices(shard.read(DAYS[0], None))
    assert got == {s: [r["price"] for r in rows if r["sym"] == s] for s in "ABC"}
    shard.close()


def test_budget_is_shared_and_the_least_recently_read_sym_goes_first():
    budget = Budget(250)
    first, second = Resident(budget), Resident(budget)
    chunk = pa.table({"x": pa.array(range(12), pa.int64())})  # 96 bytes
    assert first.put("d", "A", [chunk]) and first.put("d", "B", [chunk])
    assert first.get("d", "A") is not None  # A read last: B is the least recent
    assert not second.put("d", "C", [chunk, chunk])  # the other shard's syms are not its to evict
    assert first.put("d", "C", [chunk])  # evicts B, not A
    assert first.get("d", "B") is None and first.get("d", "A") is not None
    assert budget.used == first.nbytes == 192
    first.drop_day("d")
    assert budget.used == 0
