"""A stand-in's clock that moves only when a test says so, so every state of a clock-driven stand-in is seen."""

from __future__ import annotations


class ManualClock:
    """Call it for the time; ``tick`` moves it."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds
