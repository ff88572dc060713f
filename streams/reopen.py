"""Assigned partitions whose state could not be opened at a rebalance, tried again later.

A worker opens a partition's state in the group's rebalance handler, where an error
ends the worker (Faust crashes the app) and a long wait holds up the group. So a
failed open (the state's lock still held by its previous owner on the host, the
broker away while the engine starts its transactions) is kept with its reason, and
the reader's thread tries it again between reads, backing off while any stay
unopened. Such a partition is neither read nor served until it opens; then the
reader reads it from its stored offsets, so nothing is missed.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Generic, TypeVar

K = TypeVar("K", int, tuple[str, int])  # a CEP partition, or an RDB (table, partition)


class Reopen(Generic[K]):
    """The keys whose open failed (``why``), and when they are due again: every
    ``first`` seconds, doubling to ``most`` while any stay unopened."""

    def __init__(self, first: float, most: float):
        self.why: dict[K, str] = {}
        self.first, self.most = first, most
        self._wait, self._next = first, 0.0

    def failed(self, key: K, why: str) -> None:
        self.why[key] = why

    def opened(self, key: K) -> None:
        self.why.pop(key, None)

    def keep(self, keys: Collection[K]) -> None:
        """Forget the keys no longer assigned."""
        self.why = {k: w for k, w in self.why.items() if k in keys}

    def due(self) -> list[K]:
        """The keys to try now (none before their time)."""
        if not self.why or time.monotonic() < self._next:
            return []
        return sorted(self.why)

    def tried(self) -> None:
        """The due keys were tried: when to try what is left."""
        self._wait = min(self._wait * 2, self.most) if self.why else self.first
        self._next = time.monotonic() + self._wait
