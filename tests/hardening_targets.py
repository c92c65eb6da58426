"""Module-level decorated functions for the pickling tests: pickling is by reference, so the
functions must be importable by name in a child process."""

from __future__ import annotations

from memscope import auto_clear


@auto_clear(every=2)
def double(value: int) -> int:
    return value * 2


class Colorizer:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @auto_clear(every=3)
    def colorize(self, value: int) -> int:
        return value * self.factor
