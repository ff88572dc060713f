"""The engine's sums within Avro's long, the type of their output fields."""

from __future__ import annotations

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1


def saturated(value: int) -> int:
    """A sum (a day's volume, a bar's) within Avro's long: at its bound if beyond (a feed's absurd
    sizes must not make an output record the encoder refuses, which would stop the engine)."""
    return LONG_MIN if value < LONG_MIN else LONG_MAX if value > LONG_MAX else value
