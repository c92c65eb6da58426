"""The statistics behind :class:`memscope.leaks.LeakWatch`: blocks of samples, and the test.

Samples are grouped in blocks of :data:`BLOCK` and each block is summed up by its median item
and its median bytes, so one odd sample (a large item) moves a block by little. The growth is
judged on the differences between successive blocks, the *steps*:

* A leak adds the same bytes per item to every step, give or take the jitter.
* Memory that wanders (an autocorrelated level, a random walk) has steps that go both ways and
  are, at the scale of a block, close to independent: the mean step divided by its standard
  error is then Student-t distributed. That is what makes the test hold where a fit through
  raw samples does not: a slow wander is a trend to a least-squares or Theil-Sen fit, whose
  error assumes independent samples, but not to the mean of its own steps.
* One large item that leaves memory behind is one large step among flat ones: the t statistic
  of such steps is 1 whatever the size.

Everything here costs O(1) per sample and O(:data:`MAX_BLOCKS`) per completed block
(a median of at most 16 slopes between block medians), so a sample costs a few dozen
operations, amortised, whatever the window.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

Sampled = Literal["allocated", "resident"]
"""What a leak watch samples: the device's tensors, or the process's resident memory."""
SAMPLED: Final[tuple[Sampled, ...]] = ("allocated", "resident")
MIN_GROWTH_PER_ITEM: Final = 64 * 1024
"""Growth slower than this (64 KiB per item) is never a leak, and the plot draws no line."""

BLOCK: Final = 4
"""Samples per block: each block is its median item and median bytes."""
MAX_BLOCKS: Final = 32
"""Blocks the test looks at by default (128 samples)."""
MIN_STEPS: Final = 4
"""Steps between blocks (5 blocks, 20 samples) before anything is judged."""
RECENT_BLOCKS: Final = 8
"""Blocks the recent (and the early) rate is measured over: a quarter of the default window."""

# One-sided 99.95 % quantiles of Student's t, by degrees of freedom (1 to 31): the step test's
# critical values for a false-alarm probability of 0.05 % per judgement on a random walk.
_T_CRITICAL: Final = (
    636.619, 31.599, 12.924, 8.610, 6.869, 5.959, 5.408, 5.041, 4.781, 4.587, 4.437,
    4.318, 4.221, 4.140, 4.073, 4.015, 3.965, 3.922, 3.883, 3.850, 3.819, 3.792,
    3.768, 3.745, 3.725, 3.707, 3.690, 3.674, 3.659, 3.646, 3.633,
)  # fmt: skip
_BEND_TO_SD: Final = math.sqrt(6) * math.sqrt(2 / math.pi)
SIGNIFICANCE: Final = 0.0005
"""The step test's false-alarm probability per judgement on memory that wanders at random."""

GOING_ON_SHARE: Final = 0.25
"""A leak is named only while the latest 32 samples grow at this share of its rate or more."""
FAST_SHARE: Final = 0.01
"""Growth of this share per item (1 %) of the memory held where the rise began is named as
soon as the test holds: memory that doubles within 100 items."""
URGENT_SPANS: Final = 4
"""Growth that would fill the capacity within this many times the items it has been watched is
named as soon as the test holds."""
STRAIGHT_SHARE: Final = 0.8
"""Slower growth is named once it spans a whole window and both its earliest and its latest
quarter grow at this share of the window's rate or more."""


def critical_t(degrees: int) -> float:
    """The one-sided critical value of the step test for ``degrees`` degrees of freedom."""
    return _T_CRITICAL[min(max(degrees, 1), len(_T_CRITICAL)) - 1]


@dataclass(frozen=True, slots=True)
class Trend:
    """What the latest blocks say: the robust line through them and the steps' t statistic."""

    slope: float
    """Bytes per item: the Theil-Sen slope of the block medians."""
    intercept: float
    """Bytes at item 0 on that line (the median of the blocks' offsets from the slope)."""
    noise: float
    """How far the samples of the blocks stray from the line (a robust standard deviation)."""
    t: float
    """The mean step over its standard error (``inf`` when every step is the same rise)."""
    steps: int
    """How many steps the t statistic is of."""
    recent_slope: float
    """The Theil-Sen slope of the latest :data:`RECENT_BLOCKS` blocks."""
    early_slope: float
    """The Theil-Sen slope of the earliest :data:`RECENT_BLOCKS` blocks."""
    first_item: int
    last_item: int
    samples: int

    def at(self, item: float) -> float:
        return self.intercept + self.slope * item

    def significant(self, min_steps: int = MIN_STEPS) -> bool:
        """Whether the steps rise more than wandering memory's would, at :data:`SIGNIFICANCE`."""
        return self.steps >= min_steps and self.t >= critical_t(self.steps - 1)


@dataclass(frozen=True, slots=True)
class LeakRule:
    """When a rise of the blocks is a leak: a leak watch's thresholds, checked by the watch."""

    min_growth_per_item: int
    min_share: float
    capacity: int | None
    min_steps: int
    """Steps the step test needs (the watch's ``min_samples``, in blocks, less one)."""
    max_blocks: int
    """Blocks a full window holds."""

    def past(self, level: float, highest: float | None) -> bool:
        """Whether ``level`` passed ``highest`` (the level growth must pass) by the share of
        the capacity a leak needs; always, where the capacity or ``highest`` is unknown."""
        if self.capacity is None or highest is None:
            return True
        return level - highest >= self.min_share * self.capacity

    def holds(self, trend: Trend, blocks: Blocks, highest: float | None) -> bool:
        """Whether ``trend``, the line through ``blocks``, is a leak past ``highest``."""
        if trend.slope < max(self.min_growth_per_item, 1):
            return False
        if not trend.significant(self.min_steps):
            return False
        if trend.recent_slope < GOING_ON_SHARE * trend.slope:
            return False  # growth that stopped (a cache that filled) is no leak
        # Memory must reach a level it never held: growth back up to where it came down from
        # (the next rise of a wave, of a sawtooth) is no leak. The level is the line's, or the
        # latest block's where that is lower (a rise that bends over).
        level = min(trend.at(trend.last_item), blocks.latest)
        if not self.past(level, highest):
            return False
        return self._fast(trend) or self._urgent(trend, level) or self._sustained(trend, blocks)

    def _fast(self, trend: Trend) -> bool:
        """Growth of :data:`FAST_SHARE` per item of what memory held where the rise began:
        more than the first rise of a wave or a cache the code fills and empties."""
        return trend.slope >= FAST_SHARE * max(trend.at(trend.first_item), 1)

    def _urgent(self, trend: Trend, level: float) -> bool:
        """Growth that would fill the capacity within :data:`URGENT_SPANS` times the items it
        has been watched: waiting for a whole window of evidence could end in the OOM."""
        if self.capacity is None:
            return False
        items_left = (self.capacity - level) / trend.slope
        return items_left <= URGENT_SPANS * max(trend.last_item - trend.first_item, 1)

    def _sustained(self, trend: Trend, blocks: Blocks) -> bool:
        """Growth over a whole window that is as fast at its start as at its end (within
        :data:`STRAIGHT_SHARE`): a straight line, not part of a wave, which bends."""
        if len(blocks) < self.max_blocks:
            return False
        floor = STRAIGHT_SHARE * trend.slope
        return trend.early_slope >= floor and trend.recent_slope >= floor


class Blocks:
    """Samples grouped in blocks of :data:`BLOCK`, the latest :data:`MAX_BLOCKS` kept."""

    __slots__ = (
        "_blocks",
        "_high",
        "_open",
        "_spread",
        "first_item",
        "high_before_low",
        "last_item",
        "low",
        "samples",
    )

    def __init__(self, max_blocks: int = MAX_BLOCKS) -> None:
        self._open: list[tuple[int, int]] = []
        self._blocks: deque[tuple[float, float]] = deque(maxlen=max_blocks)
        # Each block's mean absolute second difference: the jitter, without the trend.
        self._spread: deque[float] = deque(maxlen=max_blocks)
        self.first_item = 0
        self.last_item = 0
        self.samples = 0
        # Over every block since the last clear, not only the kept ones: O(1) a block.
        self.low: float | None = None
        """The lowest block median."""
        self.high_before_low: float | None = None
        """The highest block median before the lowest one: the level memory came down from
        before it rose again (``None`` while the lowest block is the first)."""
        self._high: float | None = None

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._open.clear()
        self._blocks.clear()
        self._spread.clear()
        self.samples = 0
        self.low = self.high_before_low = self._high = None

    def add(self, item: int, retained: int) -> bool:
        """Add a sample; ``True`` when it completed a block (the moment to judge)."""
        self._open.append((item, retained))
        self.last_item = item
        if len(self._open) < BLOCK:
            return False
        points = self._open
        values = sorted(point[1] for point in points)
        middle = BLOCK // 2
        # Items only increase: the middle two are the middle two as given.
        block_item = (points[middle - 1][0] + points[middle][0]) / 2
        block_value = (values[middle - 1] + values[middle]) / 2
        if len(self._blocks) == self._blocks.maxlen:
            self.samples -= BLOCK
        self._blocks.append((block_item, block_value))
        if self.low is None or block_value < self.low:
            self.low, self.high_before_low = block_value, self._high
        if self._high is None or block_value > self._high:
            self._high = block_value
        # Second differences hold the jitter without the trend (6 jitters' variance each).
        bends = [
            abs(after[1] - 2 * middle_point[1] + before[1])
            for before, middle_point, after in zip(points, points[1:], points[2:], strict=False)
        ]
        self._spread.append(sum(bends) / len(bends))
        self.samples += BLOCK
        self.first_item = round(self._blocks[0][0] - (BLOCK - 1) / 2)
        self._open = []
        return True

    @property
    def latest(self) -> float:
        """The latest block's median bytes (a block must have completed)."""
        return self._blocks[-1][1]

    def trend(self) -> Trend | None:
        """The line and the step test over the kept blocks; ``None`` before two blocks."""
        blocks = list(self._blocks)
        if len(blocks) < 2:
            return None
        slope = _theil_sen(blocks)
        intercept = statistics.median(value - slope * item for item, value in blocks)
        t, steps = _step_test(blocks)
        recent = blocks[-RECENT_BLOCKS:]
        early = blocks[:RECENT_BLOCKS]
        # A second difference of normal jitter has a mean absolute value of
        # sqrt(6) * sqrt(2 / pi) jitters.
        noise = statistics.median(self._spread) / _BEND_TO_SD
        return Trend(
            slope=slope,
            intercept=intercept,
            noise=noise,
            t=t,
            steps=steps,
            recent_slope=_theil_sen(recent) if len(recent) >= 2 else slope,
            early_slope=_theil_sen(early) if len(early) >= 2 else slope,
            first_item=self.first_item,
            last_item=self.last_item,
            samples=self.samples,
        )


def _step_test(blocks: list[tuple[float, float]]) -> tuple[float, int]:
    """The mean rate between successive blocks over its standard error, and how many."""
    rates = [
        (later_value - value) / (later_item - item)
        for (item, value), (later_item, later_value) in itertools.pairwise(blocks)
    ]
    count = len(rates)
    mean = sum(rates) / count
    # Plain floats: statistics.stdev works in exact fractions, ten times slower.
    spread = (
        math.sqrt(sum((rate - mean) ** 2 for rate in rates) / (count - 1)) if count >= 2 else 0.0
    )
    if spread > 0:
        return mean / (spread / math.sqrt(count)), count
    return (math.inf if mean > 0 else 0.0), count


def _theil_sen(points: list[tuple[float, float]]) -> float:
    """The median slope between points half the points apart (items increasing).

    Theil-Sen's estimator on the pairs that carry most of the information: as robust (one odd
    block moves one slope of many) for a tenth of the pairs at 32 blocks.
    """
    lag = (len(points) + 1) // 2
    return statistics.median(
        (later_value - value) / (later_item - item)
        for (item, value), (later_item, later_value) in zip(points, points[lag:], strict=False)
    )


def median_slope(points: Sequence[tuple[int, int]]) -> float:
    """Theil-Sen's estimator over every pair of ``points`` (items increasing): the median of
    their slopes. For figures asked now and then; the judgement uses :func:`_theil_sen`."""
    return statistics.median(
        (later - value) / (later_item - item)
        for index, (item, value) in enumerate(points)
        for later_item, later in points[index + 1 :]
    )
