"""The scaler's decision: out, in or hold, with the reason, from the last periods' figures.

Pure (no AWS, no Kafka): the loop in scaler.py gathers the inputs, this says what to
do, so the rule is tested on its own. The rule: scale out when any figure (lag,
memory, CPU of the busiest node) stayed over its high threshold for each of the last
``out_periods`` periods; scale in when every figure stayed under its low threshold for
each of the last ``in_periods`` and one node fewer would still be under the memory
high mark; never past min/max, never within a cooldown, never while the group is
still settling (a node launched and not serving, a shard catching up).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tickplant.config import Settings

FIGURES = ("LagMessages", "MemoryUsedPercent", "CPUPercent")


@dataclass(frozen=True)
class Thresholds:
    lag_high: float
    lag_low: float
    memory_high_pct: float
    memory_low_pct: float
    cpu_high_pct: float
    cpu_low_pct: float
    out_periods: int
    in_periods: int
    out_cooldown_s: float
    in_cooldown_s: float
    min_size: int
    max_size: int

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        t = cls(s.scaler_lag_high, s.scaler_lag_low, s.scaler_memory_high_pct, s.scaler_memory_low_pct,
                s.scaler_cpu_high_pct, s.scaler_cpu_low_pct, s.scaler_out_periods, s.scaler_in_periods,
                s.scaler_out_cooldown_s, s.scaler_in_cooldown_s, s.scaler_min, s.scaler_max)
        t.check()
        return t

    def check(self) -> None:
        if not 0 <= self.min_size <= self.max_size:
            raise ValueError(f"scaler_min {self.min_size} and scaler_max {self.max_size}: need 0 <= min <= max")
        if self.out_periods < 1 or self.in_periods < 1:
            raise ValueError("scaler_out_periods and scaler_in_periods must be at least 1")
        for name, low, high in (("lag", self.lag_low, self.lag_high),
                                ("memory_pct", self.memory_low_pct, self.memory_high_pct),
                                ("cpu_pct", self.cpu_low_pct, self.cpu_high_pct)):
            if low > high:
                raise ValueError(f"scaler_{name} thresholds: low {low} is above high {high}")

    def high(self, figure: str) -> float:
        return {"LagMessages": self.lag_high, "MemoryUsedPercent": self.memory_high_pct,
                "CPUPercent": self.cpu_high_pct}[figure]

    def low(self, figure: str) -> float:
        return {"LagMessages": self.lag_low, "MemoryUsedPercent": self.memory_low_pct,
                "CPUPercent": self.cpu_low_pct}[figure]


@dataclass(frozen=True)
class Situation:
    """What the loop saw: per figure the last periods' values, newest last (None: no data in
    that period), the group's capacity, and how settled it is."""

    window: dict[str, list[float | None]]
    desired: int
    now: float
    last_out: float | None = None  # when the last scale-out / scale-in happened (time.time())
    last_in: float | None = None
    settling: str = ""  # why the group is not settled (empty: it is)


@dataclass(frozen=True)
class Decision:
    action: str  # "out", "in" or "hold"
    desired: int  # the capacity asked for (unchanged for hold)
    reason: str
    at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # filled by the loop: node, instance, outcome

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sustained(values: list[float | None], periods: int, test: Any) -> bool:
    last = values[-periods:]
    return len(last) == periods and all(v is not None and test(v) for v in last)


def _quiet(t: Thresholds, s: Situation, figure: str) -> bool:
    """Under the low mark for the last ``in_periods``; memory and CPU never measured (no budget
    said, a first round) do not hold a scale-in back, lag always does."""
    values = s.window.get(figure, [])
    if figure != "LagMessages" and all(v is None for v in values[-t.in_periods:]):
        return True
    return _sustained(values, t.in_periods, lambda v: v < t.low(figure))


def _show(values: list[float | None], periods: int) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:g}" for v in values[-periods:]) + "]"


def decide(t: Thresholds, s: Situation) -> Decision:
    def hold(reason: str) -> Decision:
        return Decision("hold", s.desired, reason, s.now)

    if s.desired < t.min_size:
        return Decision("out", t.min_size, f"desired {s.desired} is below scaler_min {t.min_size}", s.now)
    over = [f"{f} {_show(s.window.get(f, []), t.out_periods)} over {t.high(f):g} for {t.out_periods} periods"
            for f in FIGURES if _sustained(s.window.get(f, []), t.out_periods, lambda v, f=f: v > t.high(f))]
    if over:
        if s.desired >= t.max_size:
            return hold(f"at scaler_max {t.max_size}, though {'; '.join(over)}")
        if s.settling:
            return hold(f"{'; '.join(over)}, but the group is settling: {s.settling}")
        if s.last_out is not None and s.now - s.last_out < t.out_cooldown_s:
            return hold(f"{'; '.join(over)}, but in the scale-out cooldown "
                        f"({s.now - s.last_out:.0f} of {t.out_cooldown_s:g} s)")
        return Decision("out", s.desired + 1, "; ".join(over), s.now)
    if s.desired > t.max_size:
        reason = f"desired {s.desired} is above scaler_max {t.max_size}"
    else:
        under = [f for f in FIGURES if _quiet(t, s, f)]
        missing = [f for f in FIGURES if f not in under]
        if missing:
            return hold("; ".join(f"{f} {_show(s.window.get(f, []), t.in_periods)} not under {t.low(f):g} "
                                  f"for {t.in_periods} periods" for f in missing))
        if s.desired <= t.min_size:
            return hold(f"every figure under its low mark, but at scaler_min {t.min_size}")
        memory = (s.window.get("MemoryUsedPercent") or [None])[-1] or 0.0
        projected = memory * s.desired / (s.desired - 1)
        if projected > t.memory_high_pct:
            return hold(f"one node fewer would put memory near {projected:.0f}%, over {t.memory_high_pct:g}%")
        reason = (f"every figure under its low mark for {t.in_periods} periods "
                  f"(lag {_show(s.window.get('LagMessages', []), t.in_periods)}, "
                  f"memory {_show(s.window.get('MemoryUsedPercent', []), t.in_periods)}%, "
                  f"cpu {_show(s.window.get('CPUPercent', []), t.in_periods)}%)")
    if s.settling:
        return hold(f"{reason}, but the group is settling: {s.settling}")
    if s.last_in is not None and s.now - s.last_in < t.in_cooldown_s:
        return hold(f"{reason}, but in the scale-in cooldown ({s.now - s.last_in:.0f} of {t.in_cooldown_s:g} s)")
    if s.last_out is not None and s.now - s.last_out < t.out_cooldown_s:
        return hold(f"{reason}, but a scale-out was {s.now - s.last_out:.0f} s ago "
                    f"(cooldown {t.out_cooldown_s:g} s)")
    return Decision("in", s.desired - 1, reason, s.now)
