"""The computation of one partition: log messages in, state changes and outputs out.

``PartitionEngine.apply`` takes one read's messages of one partition (each
table's in log order), folds them into the analytics and bars, and commits
the new state, the offsets and the numbered outputs in one store write.
It has no Kafka in it: the worker reads, the outbox publishes.

Per table, a run of data messages is decoded and handled at once: trades
go through the bars (row by row, log order: that is what makes bar closing
deterministic) and every analytic of the table gets each sym's rows of the
run in one ``update`` call. A fence (end of day) of a table closes the
table's day first: for trades every open bar is closed (``eod``); every
analytic of the table starts again from ``initial()``.

Conflation: ``apply(..., emit=False)`` folds the rows in and commits the
state but leaves the analytics records of the syms it touched for later:
they are kept, in the same store write, in the store's ``dirty`` set, and
``emit_pending`` (or the next ``apply`` that emits) publishes one record per
such sym, its latest values. The worker emits whenever the partition's
committer is free, so under load a sym's many updates during one commit
round trip become one record (less CPU, smaller transactions) while a quiet
feed still gets a record per read. Bars are never conflated: every closed
bar is an output of the read that closed it. Since ``dirty`` is stored with
the state, a crash between the two loses no update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ingest.framing import encode_row
from ingest.schemas import TableSchema
from streams.cep.analytics import Analytic
from streams.cep.bars import BarBook
from streams.cep.store import Output, PartitionStore

log = logging.getLogger("tickplant.cep")


@dataclass
class Message:
    """A log message for the engine: rows (decoded), or a fence (``fence_date`` set).

    A run of consecutive data messages of one day may come as one message: their rows in log
    order, the run's last offset, ``count`` messages."""

    offset: int
    rows: list[dict[str, Any]] | None
    date: str = ""
    fence_date: str | None = None
    count: int = 1


@dataclass
class Counters:
    rows: int = 0
    messages: int = 0
    bars: int = 0
    analytics: int = 0
    fences: int = 0
    by_table: dict[str, int] = field(default_factory=dict)


class PartitionEngine:
    """Analytics and bars of one partition (``store``) of one engine."""

    def __init__(self, store: PartitionStore, analytics: list[Analytic], bars_schema: TableSchema,
                 analytics_schema: TableSchema, width_ns: int, grace_ns: int):
        self.store = store
        self.analytics = analytics
        self.by_table: dict[str, list[Analytic]] = {}
        for a in analytics:
            self.by_table.setdefault(a.table, []).append(a)
        self.bars_schema = bars_schema
        self.analytics_schema = analytics_schema
        self.book = BarBook(width_ns, grace_ns, store.bars)
        self.counters = Counters()
        # called after each store write with the bars it closed and the syms it changed: the live feed
        self.on_change: Callable[[PartitionEngine, list[dict[str, Any]], set[str]], None] | None = None

    # -- state ---------------------------------------------------------------

    def _sym(self, sym: str) -> dict[str, Any]:
        state = self.store.syms.get(sym)
        if state is None:
            state = self.store.syms[sym] = {"time": 0}
        return state

    def _day(self) -> str:
        return max(self.store.days.values(), default="")

    def snapshot(self, sym: str) -> dict[str, Any] | None:
        """The analytics record of a sym now (what rte.analytics carries), or None if unknown."""
        state = self.store.syms.get(sym)
        return None if state is None else self._record(sym, state)

    def _record(self, sym: str, state: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"time": state["time"], "sym": sym, "date": self._day()}
        for a in self.analytics:
            record.update(a.snapshot(state.get(a.name) or a.initial()))
        return record

    # -- applying --------------------------------------------------------------

    def apply(self, batches: dict[str, list[Message]], emit: bool = True) -> list[Output]:
        """Fold each table's messages (log order) in; commit; return the new outputs (without
        the analytics records if not ``emit``: those wait for ``emit_pending``)."""
        offsets: dict[str, int] = {}
        days: dict[str, str] = {}
        dirty: set[str] = set()
        closed: list[dict[str, Any]] = []
        drop_before: str | None = None
        for table, messages in batches.items():
            applied = self.store.offset(table)
            run: list[dict[str, Any]] = []
            run_date = ""
            for m in messages:
                if m.offset <= applied:
                    continue  # already in the state: read again after a restart or a rebalance
                applied = m.offset
                self.counters.messages += m.count
                if m.fence_date is not None or (run and m.date != run_date):
                    if run:
                        self._rows(table, run, run_date, dirty, closed)
                        run = []
                if m.fence_date is not None:
                    closed.extend(self._fence(table, m.fence_date, dirty))
                    drop_before = m.fence_date if table == "trade" else drop_before
                    continue
                if m.rows:
                    run_date = m.date
                    if m.date and self.store.days.get(table) != m.date:
                        self.store.days[table] = days[table] = m.date
                    run.extend(m.rows)
            if run:
                self._rows(table, run, run_date, dirty, closed)
            if applied > self.store.offset(table):
                offsets[table] = applied
        return self._commit(offsets, days, dirty, closed, drop_before, emit)

    def emit_pending(self) -> list[Output]:
        """The analytics records of the syms changed since the last emission (conflated)."""
        if not self.store.dirty:
            return []
        return self._commit({}, {}, set(), [], None, True)

    def advance(self, now_ns: int) -> list[Output]:
        """The idle timer: close the bars the wall clock has passed; the outputs."""
        if not self.book.due(now_ns):
            return []
        closed = self.book.advance(now_ns, self.store.days.get("trade", ""))
        return self._commit({}, {}, set(), closed, None, False)

    def _rows(self, table: str, rows: list[dict[str, Any]], date: str, dirty: set[str],
              closed: list[dict[str, Any]]) -> None:
        self.counters.rows += len(rows)
        self.counters.by_table[table] = self.counters.by_table.get(table, 0) + len(rows)
        if table == "trade":
            closed.extend(self.book.add(rows, date))
        analytics = self.by_table.get(table)
        by_sym: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            sym_rows = by_sym.get(r["sym"])
            if sym_rows is None:
                by_sym[r["sym"]] = [r]
            else:
                sym_rows.append(r)
        for sym, sym_rows in by_sym.items():
            state = self._sym(sym)
            last = max(r["time"] for r in sym_rows)
            if last > state["time"]:
                state["time"] = last
            for a in analytics or ():
                a_state = state.get(a.name)
                if a_state is None:
                    a_state = state[a.name] = a.initial()
                a.update(a_state, sym_rows)
        dirty.update(by_sym)

    def _fence(self, table: str, date: str, dirty: set[str]) -> list[dict[str, Any]]:
        """End of the table's day in this partition: close its bars, restart its analytics."""
        self.counters.fences += 1
        closed = self.book.close_all("eod", date) if table == "trade" else []
        for sym, state in self.store.syms.items():
            for a in self.by_table.get(table, ()):
                if a.name in state:
                    state[a.name] = a.initial()
                    dirty.add(sym)
        log.info("end of day %s in %s: %d bars closed, %s analytics restarted", date, table, len(closed),
                 ", ".join(a.name for a in self.by_table.get(table, ())))
        return closed

    def _commit(self, offsets: dict[str, int], days: dict[str, str], changed: set[str],
                closed: list[dict[str, Any]], drop_before: str | None, emit: bool) -> list[Output]:
        """Number the outputs (closed bars; the analytics of changed and pending syms if ``emit``)
        and write them with the changed states, offsets and what is left pending, at once."""
        pending = set() if emit else self.store.dirty | changed
        emitted = self.store.dirty | changed if emit else set()
        if not (offsets or days or changed or closed or emitted):
            return []
        seq = self.store.next_seq
        outputs: list[Output] = []
        for bar in closed:
            outputs.append(Output(seq, "bars", bar["sym"].encode(), encode_row(self.bars_schema, bar)))
            seq += 1
        for sym in sorted(emitted):
            record = self._record(sym, self.store.syms[sym])  # changed: it has a state (none is dropped)
            outputs.append(Output(seq, "analytics", sym.encode(), encode_row(self.analytics_schema, record)))
            seq += 1
        self.counters.bars += len(closed)
        self.counters.analytics += len(emitted)
        self.store.commit(offsets, days, {s: self.store.syms[s] for s in changed}, self.book.state(), closed,
                          outputs, drop_before, pending)
        if self.on_change is not None and (closed or changed):
            self.on_change(self, closed, changed)
        return outputs
