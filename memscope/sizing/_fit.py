"""The memory curve a size search has measured: a fit over every size, with its uncertainty.

Each measured attempt is a point: the units of work it covered, and how far its peak rose.
:func:`fit_memory` fits ``used = linear * units + quadratic * units**2`` to them (both
coefficients at least zero: no batch needs less memory for more work), straight where a line
fits the points, with the curvature term only when the points say memory is not linear
(attention is quadratic in tokens). Points far below the largest measured one are left out:
the fit is for predicting near the top, where rounding to blocks and padding matter least.

How far the fit misses its own points is its uncertainty: ``spread``, the root mean square of
the relative misses, is the margin predictions leave on top of ``headroom``, and ``worst``,
the largest miss, says whether the curve is one a fit can follow at all (a staircase of
allocator blocks or padded batches is not: there the search probes instead).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__: list[str] = []

LINEAR_ENOUGH = 0.01
"""A straight line that misses no point by more than this is the fit: no curvature term."""

TOP_SHARE = 0.25
"""Points below this share of the largest measured units are left out of the fit."""


@dataclass(frozen=True, slots=True)
class MemoryFit:
    """``used(units) = linear * units + quadratic * units**2``, and how well it fits."""

    linear: float
    quadratic: float
    spread: float
    """The root mean square of the relative misses on the points fitted."""
    worst: float
    """The largest relative miss on a point fitted."""
    sizes: int
    """How many different sizes were fitted."""
    flat: bool
    """Whether two different sizes needed the same memory: a staircase (allocator blocks,
    padded batches), which no smooth curve follows."""
    top: int
    """The largest units measured."""

    @property
    def exact(self) -> bool:
        """Whether the curve has as many terms as sizes fitted: it misses none of them,
        whatever memory does between, so it tells nothing of the sizes it did not see."""
        return self.sizes <= (2 if self.quadratic > 0 else 1)

    def predict(self, units: float) -> float:
        """Bytes ``units`` units of work are expected to need."""
        return self.linear * units + self.quadratic * units * units

    def largest_within(self, budget: float, *, margin: float) -> float:
        """The most units whose prediction, raised by ``margin`` (lowered, if negative),
        fits in ``budget`` bytes."""
        if budget <= 0:
            return 0.0
        allowed = budget / max(1.0 + margin, 0.5)
        if self.quadratic <= 0:
            return allowed / self.linear if self.linear > 0 else math.inf
        a, b = self.linear, self.quadratic
        return (-a + math.sqrt(a * a + 4.0 * b * allowed)) / (2.0 * b)


def _relative_misses(
    points: Sequence[tuple[int, int]], linear: float, quadratic: float
) -> list[float]:
    return [(linear * units + quadratic * units * units - used) / used for units, used in points]


def _straight(points: Sequence[tuple[int, int]]) -> tuple[float, float]:
    # Least squares of the relative misses: each point weighs the same, whatever its size.
    xs = [units / used for units, used in points]
    return sum(xs) / sum(x * x for x in xs), 0.0


def _curved(points: Sequence[tuple[int, int]]) -> tuple[float, float] | None:
    """The least squares of the relative misses with both terms, or ``None`` when the best
    such curve bends down (a negative term): then the straight line is the fit."""
    first = [units / used for units, used in points]
    second = [units * units / used for units, used in points]
    s11 = sum(x * x for x in first)
    s12 = sum(x * y for x, y in zip(first, second, strict=True))
    s22 = sum(y * y for y in second)
    t1, t2 = sum(first), sum(second)
    determinant = s11 * s22 - s12 * s12
    if determinant <= 1e-12 * s11 * s22:
        return None
    linear = (t1 * s22 - t2 * s12) / determinant
    quadratic = (s11 * t2 - s12 * t1) / determinant
    if quadratic <= 0:
        return None
    if linear < 0:
        # All of it quadratic: the best curve through the origin with no linear term.
        return 0.0, t2 / s22
    return linear, quadratic


def fit_memory(points: Sequence[tuple[int, int]]) -> MemoryFit | None:
    """The fit over ``points`` (``(units, used bytes)``, each size once); ``None`` when no
    point has both above zero."""
    usable = [(units, used) for units, used in points if units > 0 and used > 0]
    if not usable:
        return None
    top = max(units for units, _ in usable)
    near_top = [(units, used) for units, used in usable if units >= top * TOP_SHARE]
    linear, quadratic = _straight(near_top)
    misses = _relative_misses(near_top, linear, quadratic)
    if len(near_top) >= 2 and max(abs(miss) for miss in misses) > LINEAR_ENOUGH:
        curved = _curved(near_top)
        if curved is not None:
            curved_misses = _relative_misses(near_top, *curved)
            if sum(m * m for m in curved_misses) < sum(m * m for m in misses):
                (linear, quadratic), misses = curved, curved_misses
    spread = math.sqrt(sum(miss * miss for miss in misses) / len(misses))
    return MemoryFit(
        linear=linear,
        quadratic=quadratic,
        spread=spread,
        worst=max(abs(miss) for miss in misses),
        sizes=len(near_top),
        top=top,
        flat=_has_a_step(usable),
    )


FLAT = 0.002
"""Two sizes whose peaks differ by less than this share needed the same memory."""


def _has_a_step(points: Sequence[tuple[int, int]]) -> bool:
    ordered = sorted(points)
    return any(
        larger_units > units and abs(larger - used) <= FLAT * used
        for (units, used), (larger_units, larger) in itertools.pairwise(ordered)
    )


def with_point(
    points: tuple[tuple[int, int], ...], units: int, used: int, *, keep: int
) -> tuple[tuple[int, int], ...]:
    """``points`` with one more measurement: a size measured again keeps its larger peak
    (the curve must hold for every call), and only the ``keep`` latest sizes stay."""
    previous = next((seen for size, seen in points if size == units), 0)
    kept = tuple((size, seen) for size, seen in points if size != units)
    return (*kept, (units, max(used, previous)))[-keep:]
