"""Clocks for the game loop: deterministic ones for tests and headless runs."""

from __future__ import annotations

__all__ = ["FixedStepClock", "ManualClock"]


class ManualClock:
    """A clock that only moves when told to: ``clock.advance(seconds)`` (tests)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self.now += seconds


class FixedStepClock:
    """A clock that advances `step` seconds at each reading.

    A game loop reads its clock once per frame, so with ``step == dt`` a headless
    loop runs exactly one fixed update per frame, however fast the machine is.
    """

    def __init__(self, step: float, start: float = 0.0) -> None:
        if step <= 0:
            raise ValueError(f"step must be positive, got {step}")
        self.step = float(step)
        self.start = float(start)
        self.readings = 0

    def __call__(self) -> float:
        now = self.start + self.readings * self.step
        self.readings += 1
        return now
