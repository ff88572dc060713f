"""Fuzzing the log (issue 20): arbitrary bytes and arbitrary schema-valid rows (extreme values
included) produced into the trade and quote topics while an RDB worker, a CEP worker and the
PDB run. The oracle is the plant's own rules applied here to what was produced: every process
stays up, the RDB, the engine and the HDB hold exactly the rows the rules keep, and each
message they refuse is dead-lettered exactly once."""

from __future__ import annotations

import datetime as dt

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from procs import Cep, PlantChild, Worker, wait_until
from test_poison import PdbChild

from ingest.deadletter import read_deadletters
from ingest.decoder import DecodeError, Decoder
from ingest.eod import open_first_day, roll_day
from ingest.framing import BLOCK_MAGIC, ROW_MAGIC, encode_block, encode_row
from ingest.topics import TopicNames, partition_for
from ingest.validate import RowRules
from sinks.store import HdbStore
from tickplant.clock import ManualClock

T0 = int(dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC).timestamp() * 1e9)
DAY = dt.date(2026, 11, 22)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
TIMES = st.one_of(INT64, st.integers(T0, T0 + 20 * 3600 * 10**9), st.sampled_from([0, -1, (1 << 63) - 1]))
SYMS = st.one_of(st.sampled_from(["AAPL", "MSFT", "IBM", "BRK.B", "É"]), st.text(max_size=80))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SIZES = st.one_of(INT64, st.integers(0, 10**6))
TEXT = st.text(max_size=8)


def rows_of(table: str) -> st.SearchStrategy:
    if table == "trade":
        return st.fixed_dictionaries({"time": TIMES, "sym": SYMS, "price": FLOATS, "size": SIZES,
                                      "exchange": TEXT, "cond": TEXT})
    return st.fixed_dictionaries({"time": TIMES, "sym": SYMS, "bid": FLOATS, "ask": FLOATS, "bsize": SIZES,
                                  "asize": SIZES, "exchange": TEXT})


@st.composite
def messages(draw, catalog) -> tuple[str, int | None, bytes]:
    """(topic's table, partition or None for the sym's own, value) of one message."""
    table = draw(st.sampled_from(["trade", "quote"]))
    kind = draw(st.sampled_from(["row", "row", "block", "foreign", "bytes", "framed"]))
    part = draw(st.one_of(st.none(), st.integers(0, 3)))
    if kind == "bytes":
        return table, part if part is not None else 0, draw(st.binary(max_size=64))
    if kind == "framed":  # the right magic and a known fingerprint, then anything
        fp = catalog[draw(st.sampled_from(["trade", "quote"]))].fingerprint
        return table, part if part is not None else 0, draw(st.sampled_from([ROW_MAGIC, BLOCK_MAGIC])) + fp + \
            draw(st.binary(max_size=40))
    schema = catalog[table if kind != "foreign" else ("quote" if table == "trade" else "trade")]
    if kind == "block":
        rows = draw(st.lists(rows_of(schema.name), min_size=1, max_size=4))
        return table, part, encode_block(schema, rows)
    return table, part, encode_row(schema, draw(rows_of(schema.name)))


@pytest.mark.timeout(280)
@hsettings(max_examples=1, deadline=None, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_log_keeps_the_plant_up_and_exact(settings, catalog, tmp_path, data):
    batch = data.draw(st.lists(messages(catalog), min_size=150, max_size=150))
    # always among them: sizes whose sum leaves int64 (a day's volume, a bar's), prices whose notional is inf
    huge = {"time": T0 + 1, "sym": "AAPL", "price": 1e308, "size": 1 << 62, "exchange": "N", "cond": ""}
    batch.insert(0, ("trade", None, encode_block(catalog["trade"], [huge, huge, {**huge, "size": 1 << 62}])))
    clock = ManualClock(T0)
    open_first_day(settings, catalog, clock)
    names = TopicNames(settings.topic_prefix)
    rules, decoder = RowRules(settings, catalog), Decoder(catalog)
    procs: list[PlantChild] = []
    try:
        rdb = Worker(settings, "rdb-1", tmp_path).start()
        cep = Cep(settings, "cep-1", tmp_path).start()
        pdb = PdbChild(settings, "pdb-1", tmp_path).start()
        procs += [rdb, cep, pdb]
        rdb.wait_serving()
        wait_until(lambda: cep.status() is not None, 60, "the CEP to serve", cep.log_tail)

        kept: dict[str, int] = {"trade": 0, "quote": 0}
        refused: set[str] = set()
        raw = Producer(settings.kafka_config())
        for table, part, value in batch:
            try:
                writer, rows = decoder.decode(value)
            except DecodeError:
                writer, rows = None, []
            if part is None:
                part = partition_for(rows[0]["sym"], settings.partitions) if rows else 0
            good, bad = rules.check(table, writer, rows, DAY, part) if writer else ([], True)
            kept[table] += len(good)

            def delivered(err, msg, bad=bad) -> None:
                assert err is None, err
                if bad:
                    refused.add(f"{msg.topic()}[{msg.partition()}]@{msg.offset()}")

            raw.produce(names.table(table), key=b"k", value=value, partition=part, on_delivery=delivered)
        assert raw.flush(30) == 0

        def rdb_rows(table: str) -> int:
            return sum(rdb.client.count(table, date=DAY.isoformat()).values())

        wait_until(lambda: (rdb_rows("trade"), rdb_rows("quote")) == (kept["trade"], kept["quote"]), 60,
                   "the RDB to hold exactly the kept rows",
                   lambda: f"{(rdb_rows('trade'), rdb_rows('quote'))} != {kept}\n{rdb.log_tail()}")

        def engine_trades() -> int:
            return sum(a["trades"] or 0 for a in cep.get("/cep/v1/analytics")["analytics"].values())

        wait_until(lambda: engine_trades() == kept["trade"], 60, "the engine to count the kept trades",
                   lambda: f"{engine_trades()} != {kept['trade']}\n{cep.log_tail()}")
        wait_until(lambda: {d["where"] for d in read_deadletters(settings)} == refused, 60,
                   "every refused message dead-lettered", lambda: f"{len(read_deadletters(settings))} of {len(refused)}")

        clock.advance(86400)
        roll_day(settings, catalog, clock)
        store = HdbStore.from_settings(settings)
        for table in ("trade", "quote"):
            wait_until(lambda t=table: store.manifest(t, DAY) is not None, 90, f"the HDB's {table}", pdb.log_tail)
            assert store.manifest(table, DAY).rows == kept[table]
        letters = [d["where"] for d in read_deadletters(settings)]
        assert sorted(letters) == sorted(refused)  # each exactly once
        for proc in procs:
            assert proc.proc.poll() is None, f"{proc.node_id} exited:\n{proc.log_tail()}"
    finally:
        for proc in procs:
            proc.stop()

