"""A clock for the caches that tests advance instead of sleeping."""

from __future__ import annotations


class FakeClock:
    """A clock the caches read; tests advance it instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
