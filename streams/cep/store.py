"""One partition's CEP state in RocksDB: analytics per sym, bars, input offsets, the outbox.

Keys (bytes, raw mode)::

  Moff <table>            -> last applied offset of that table's partition (ascii int)
  Mday <table>            -> the trading day that table's rows are in now
  Mseq                    -> the next output sequence number of this partition
  Mbars                   -> the open bars, watermark and late counts
  Mdirty                  -> syms whose analytics changed but are not in an output yet (a list)
  S <sym>                 -> the sym's analytics states
  B <date> 00 <sym> 00 <bucket:8 BE> -> a closed bar, for GET /cep/v1/bars
  O <seq:8 BE>            -> an output not yet known to be committed to Kafka

Values are plain data (dicts, lists, numbers, strings, None) in ``marshal``
form behind a zero byte: five times faster to write than ``json`` (a state
write per changed sym per read is the engine's hottest store work), exact
for every float (NaN and infinities too, which orjson would write as null),
and unable to run code when read, unlike pickle. A value without the zero byte is
JSON, as stores written before that change hold; it is read as such.

``commit`` writes all of one batch's effects (states, offsets, bars and the
outputs it produced, numbered) in one WriteBatch: the store is always "the
log up to the offsets, with every output of it either committed to Kafka or
in the outbox". Who publishes the outbox is ``streams.cep.outbox``.
"""

from __future__ import annotations

import json
import marshal
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, WriteBatch

from streams.rawdb import scan

KINDS = ("bars", "analytics")


class StoreError(RuntimeError):
    """A partition store could not be opened; the message names it."""


@dataclass
class Output:
    """One message for a derived topic: ``kind`` is ``bars`` or ``analytics``."""

    seq: int
    kind: str
    key: bytes
    value: bytes

    def encode(self) -> bytes:
        return bytes([KINDS.index(self.kind), len(self.key)]) + self.key + self.value

    @classmethod
    def decode(cls, seq: int, raw: bytes) -> Output:
        klen = raw[1]
        return cls(seq, KINDS[raw[0]], raw[2:2 + klen], raw[2 + klen:])


def _dump(value: Any) -> bytes:
    return b"\x00" + marshal.dumps(value)


def _load(raw: bytes) -> Any:
    return marshal.loads(raw[1:]) if raw[:1] == b"\x00" else json.loads(raw)


def _seq_key(seq: int) -> bytes:
    return b"O" + struct.pack(">q", seq)


def _bar_key(date: str, sym: str, start_ns: int) -> bytes:
    return b"B" + date.encode() + b"\x00" + sym.encode() + b"\x00" + struct.pack(">q", start_ns)


class PartitionStore:
    """The state of one partition (all tables) of one engine."""

    def __init__(self, path: Path, open_timeout: float = 60.0):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        deadline = time.monotonic() + open_timeout
        while True:
            try:
                self.db = Rdict(str(self.path), opts)
                break
            except Exception as exc:  # rocksdict raises a plain Exception; a lock means another owner
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise StoreError(f"cannot open CEP state {self.path}: {exc}") from exc
                time.sleep(0.1)
        self.offsets: dict[str, int] = {}
        self.days: dict[str, str] = {}
        for key, value in scan(self.db, b"M"):
            if key.startswith(b"Moff "):
                self.offsets[key[5:].decode()] = int(value)
            elif key.startswith(b"Mday "):
                self.days[key[5:].decode()] = value.decode()
        raw = self.db.get(b"Mseq")
        self.next_seq: int = int(raw) if raw is not None else 0
        raw = self.db.get(b"Mbars")
        self.bars: dict[str, Any] = _load(raw) if raw is not None else {}
        raw = self.db.get(b"Mdirty")
        self.dirty: set[str] = set(_load(raw)) if raw is not None else set()
        self.syms: dict[str, dict[str, Any]] = {}
        for key, value in scan(self.db, b"S"):
            self.syms[key[1:].decode()] = _load(value)
        self._outbox_low = self._first_outbox()
        self.published_upto = self._outbox_low - 1  # outputs below the outbox are known committed

    def _first_outbox(self) -> int:
        for key, _ in scan(self.db, b"O"):
            seq: int = struct.unpack(">q", key[1:9])[0]
            return seq
        return self.next_seq

    def offset(self, table: str) -> int:
        return self.offsets.get(table, -1)

    def pending(self) -> list[Output]:
        """The outbox: outputs written here that Kafka may not have committed yet."""
        out = []
        for key, value in scan(self.db, b"O"):
            out.append(Output.decode(struct.unpack(">q", key[1:9])[0], value))
        return out

    def commit(self, offsets: dict[str, int], days: dict[str, str], syms: dict[str, dict[str, Any]],
               bars_state: dict[str, Any], closed: list[dict[str, Any]], outputs: list[Output],
               drop_dates_before: str | None = None, dirty: set[str] | None = None) -> None:
        """One batch's effects in one RocksDB write (see the module docstring)."""
        batch = WriteBatch(raw_mode=True)
        for table, offset in offsets.items():
            batch.put(b"Moff " + table.encode(), str(offset).encode())
        for table, day in days.items():
            batch.put(b"Mday " + table.encode(), day.encode())
        for sym, state in syms.items():
            batch.put(b"S" + sym.encode(), _dump(state))
        batch.put(b"Mbars", _dump(bars_state))
        dirty = set() if dirty is None else dirty
        if dirty != self.dirty:
            batch.put(b"Mdirty", _dump(sorted(dirty)))
        for bar in closed:
            batch.put(_bar_key(bar["date"], bar["sym"], bar["time"]), _dump(bar))
        if drop_dates_before:
            batch.delete_range(b"B", b"B" + drop_dates_before.encode())
        # outputs already committed to Kafka leave the outbox in the same write (read once: the
        # committer thread moves it forward meanwhile)
        published = self.published_upto
        if published >= self._outbox_low:
            batch.delete_range(_seq_key(self._outbox_low), _seq_key(published + 1))
        for out in outputs:
            batch.put(_seq_key(out.seq), out.encode())
        next_seq = outputs[-1].seq + 1 if outputs else self.next_seq
        batch.put(b"Mseq", str(next_seq).encode())
        self.db.write(batch)
        self.offsets.update(offsets)
        self.days.update(days)
        self.bars = bars_state
        self.dirty = dirty
        self.next_seq = next_seq
        self._outbox_low = max(self._outbox_low, published + 1)

    def mark_published(self, seq: int) -> None:
        """Kafka committed every output up to ``seq``: the next commit drops them from the outbox."""
        self.published_upto = max(self.published_upto, seq)

    def closed_bars(self, date: str, sym: str, start: int | None, end: int | None) -> list[dict[str, Any]]:
        """The sym's closed bars of the day with start <= bar start < end."""
        prefix = b"B" + date.encode() + b"\x00" + sym.encode() + b"\x00"
        first = prefix + struct.pack(">q", start if start is not None else -(1 << 63))
        out = []
        for _, value in scan(self.db, prefix, first):
            bar = _load(value)
            if end is not None and bar["time"] >= end:
                break
            out.append(bar)
        return out

    def close(self) -> None:
        self.db.flush()
        self.db.close()
