"""What a size search has learned, as values: the snapshot, the work left, an attempt.

:mod:`memscope.sizing._rules` turns them into the next ones; :mod:`memscope.sizing._state`
holds the current snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from memscope.estimation import DEFAULT_HEADROOM
from memscope.sizing._options import Sizing

__all__ = ["AdaptiveBatchSnapshot"]


@dataclass(frozen=True, slots=True)
class AdaptiveBatchSnapshot:
    """Everything an adaptive function had learned at one moment, read consistently.

    ``state.snapshot()`` returns one; the state's attributes of the same names read the
    current one.
    """

    start: int
    """The first size tried, and the largest ever used."""
    factor: float
    """What a size is multiplied by after an out-of-memory error, where nothing is measured."""
    min_size: int
    """The smallest size tried."""
    regrow_after: int | None
    """Successes in a row after which a larger size is tried; ``None``: never."""
    current_size: int
    """The size in use: the last prediction, or the size the next call starts with."""
    sizes_tried: tuple[int, ...] = ()
    """Every size tried so far, each once, in the order first tried."""
    successes: int = 0
    """Calls (or chunks) that completed."""
    oom_count: int = 0
    """Out-of-memory errors caught, regrowth attempts included."""
    reductions: int = 0
    """How often an out-of-memory error made ``current_size`` go down."""
    regrowths: int = 0
    """How often the size went up after a run of successes (past a size that had failed)."""
    failed_regrowths: int = 0
    """Regrowth attempts that ran out of memory (and went back to the smaller size)."""
    successes_in_a_row: int = 0
    """Successes since memory last ran out (by factor: at ``current_size``, since it changed)."""
    failed_regrowth_sizes: tuple[int, ...] = ()
    """The size of each failed regrowth attempt, in order; each one doubles the wait before
    the next attempt (by factor: at that size)."""
    headroom: float = DEFAULT_HEADROOM
    """The share of the available memory that predicted sizes leave unused."""
    measure: bool = True
    """Whether sizes are predicted from measured memory where the device can be measured."""
    memory_per_item: float | None = None
    """Bytes one item added to the peak, as last measured; ``None``: nothing measured yet."""
    measurements: int = 0
    """Successes whose peak memory was measured (and taught ``memory_per_item``)."""
    predicted_size: int | None = None
    """The size of the last attempt chosen from a prediction; ``None``: none yet."""
    predictions: int = 0
    """Attempts whose size came from a prediction."""
    wrong_predictions: int = 0
    """Predicted sizes that ran out of memory."""
    wrong_predictions_in_a_row: int = 0
    """Wrong predictions since the last predicted size that worked."""
    memory_per_item_floor: float | None = None
    """The least memory per item that the wrong predictions prove (the available memory at
    each, over its size); predictions never assume less. ``None``: no wrong prediction."""
    smallest_failed_size: int | None = None
    """The smallest size that ran out of memory; predictions stay below it (with
    ``regrow_after``, a regrowth may try past it, and lifts it when it works), until the
    device has clearly more memory available than when it failed."""
    failed_available: int | None = None
    """Bytes the device had available when ``smallest_failed_size`` failed (``None``:
    unknown, and the failure bounds predictions for good)."""
    measured: tuple[tuple[int, int], ...] = ()
    """The measurements the predictions fit: ``(units, bytes its peak rose)`` per size
    measured, the larger peak where a size was measured again, the latest sizes only."""
    largest_success: int | None = None
    """The most units an attempt completed since memory last ran out at or below it:
    predictions never fall below it without an out-of-memory error."""
    probes: int = 0
    """Attempts made between ``largest_success`` and ``smallest_failed_size`` because the
    fit cannot follow the curve there (a staircase of blocks, padded batches)."""
    failed_probes: int = 0
    """Such probes that ran out of memory; each makes the next wait one success longer."""

    @classmethod
    def initial(cls, sizing: Sizing) -> AdaptiveBatchSnapshot:
        """Nothing learned yet: the next call starts at ``start``."""
        start = sizing.first_size
        return cls(
            start=start,
            factor=sizing.factor,
            min_size=sizing.min_size,
            regrow_after=sizing.regrow_after,
            current_size=start,
            headroom=sizing.headroom,
            measure=sizing.measure,
        )


class Work(Protocol):
    """What is left to do, as the rules see it: how sizes (attempt lengths) map onto units,
    the measure of work that memory is learned per."""

    @property
    def limit(self) -> int | None:
        """The longest attempt possible (the items left); ``None``: no limit."""
        ...

    @property
    def prior_memory_per_unit(self) -> float | None:
        """Bytes per unit to predict with before anything is measured; ``None``: unknown."""
        ...

    def units_of(self, size: int) -> int:
        """The units an attempt of ``size`` covers."""
        ...

    def largest_within(self, units: float) -> int:
        """The longest attempt (0 if none) that covers at most ``units`` units."""
        ...


@dataclass(frozen=True, slots=True)
class CountedWork:
    """Work counted in items: a unit is an item, and nothing is known before measuring."""

    limit: int | None = None
    prior_memory_per_unit: None = None

    def units_of(self, size: int) -> int:
        return size

    def largest_within(self, units: float) -> int:
        return max(math.floor(units), 0)


UNLIMITED = CountedWork()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One size to try, and why."""

    size: int
    regrowing_from: int | None = None
    """The size that worked before, when this attempt tries a larger one."""
    units: int | None = None
    """The units of work it covers (``None``: ``size`` items)."""
    predicted: bool = False
    """Whether its size came from a prediction."""
    probe: bool = False
    """Whether it is a small size tried to measure, after an out-of-memory error."""
    available: int | None = None
    """Bytes the device had available just before it; ``None``: unknown."""
    measurable: bool = False
    """Whether its peak memory is measured."""
    probing_from: int | None = None
    """For a probe above the largest success (the fit cannot say whether it fits): the
    size that worked, to go back to if it does not."""

    @property
    def work_units(self) -> int:
        """The units of work it covers."""
        return self.size if self.units is None else self.units
