"""Time, injectable: the feed stamps rows and end of day fires by a Clock.

Tests and ``tickplant demo`` run days in seconds with a ScaledClock; the plant
runs on the SystemClock.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class ScaledClock:
    """Starts at ``start_ns`` and runs ``speed`` times faster than the wall clock (a demo's
    market); ``paused`` holds it at ``start_ns`` until ``resume``."""

    def __init__(self, start_ns: int, speed: float = 1.0, paused: bool = False):
        self.start_ns = start_ns
        self.speed = speed
        self._origin = time.monotonic_ns()
        self._paused = paused

    def now_ns(self) -> int:
        if self._paused:
            return self.start_ns
        return self.start_ns + int((time.monotonic_ns() - self._origin) * self.speed)

    def resume(self) -> None:
        if self._paused:
            self._origin = time.monotonic_ns()
            self._paused = False

    def jump_to(self, when_ns: int) -> None:
        """Carry on from ``when_ns`` (a demo skips the night), never backwards."""
        self.start_ns += max(0, when_ns - self.now_ns())


class ManualClock:
    """Moves only when told to: for deterministic tests."""

    def __init__(self, start_ns: int):
        self.t = start_ns

    def now_ns(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)
