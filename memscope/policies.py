"""Small, immutable policies that decide when cleanup is worth its cost.

- :class:`GCBackoff` stops a threshold GC from firing at every check when the model itself
  keeps usage above the threshold and collecting frees nothing.
- :class:`ClearAlways` and :class:`ClearWhenUseful` decide whether a cleanup step empties the
  device's cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

from memscope._validation import check_fraction, check_int, check_positive_number
from memscope.exceptions import InvalidArgumentTypeError
from memscope.snapshot import MemorySnapshot
from memscope.typing import CachePolicy

__all__ = [
    "DEFAULT_CACHE_POLICY",
    "ClearAlways",
    "ClearWhenUseful",
    "GCBackoff",
    "GCBackoffState",
]


@dataclass(frozen=True, slots=True)
class GCBackoff:
    """When to skip a threshold GC that would most likely free nothing.

    A collection is *fruitless* when it lowers usage by less than ``min_freed`` (a fraction
    of the device's capacity). After a fruitless collection the threshold GC stays off
    until one of these:

    - usage climbs ``margin`` above the level the last collection left (new garbage, or
      new tensors, have arrived: collect promptly);
    - usage drops below the threshold (pressure is gone; the next rise starts afresh);
    - a number of checks have passed, which doubles after every fruitless collection, up to
      ``max_interval`` (a safety net: 100 checks pinned above the threshold collect 6 times).

    A productive collection re-arms it at once.
    """

    margin: float = 0.05
    min_freed: float = 0.01
    max_interval: int = 64

    def __post_init__(self) -> None:
        check_fraction(self.margin, "margin")
        check_fraction(self.min_freed, "min_freed")
        check_int(self.max_interval, "max_interval", minimum=1)

    def new_state(self) -> GCBackoffState:
        """Fresh per-manager state that follows this policy."""
        return GCBackoffState(self)


class GCBackoffState:
    """The mutable side of :class:`GCBackoff`, one per manager; safe across threads.

    Made by :meth:`GCBackoff.new_state` for each manager given the policy; ``skipped``
    counts the collections it held back.
    """

    def __init__(self, policy: GCBackoff) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._armed = True
        self._floor = 0.0
        self._interval = 1
        self._checks_since_collection = 0
        self.skipped = 0

    def allows(self, usage: float) -> bool:
        """Whether a collection at ``usage`` (already at or above the threshold) may run."""
        with self._lock:
            if self._armed:
                return True
            self._checks_since_collection += 1
            if (
                usage >= self._floor + self.policy.margin
                or self._checks_since_collection >= self._interval
            ):
                return True
            self.skipped += 1
            return False

    def below_threshold(self) -> None:
        """Usage is under the threshold: the next time it rises, collect at once."""
        if self._armed and self._interval == 1:
            return  # the common case, every step below the threshold: nothing to change
        with self._lock:
            self._armed = True
            self._interval = 1

    def collected(self, usage_before: float, usage_after: float) -> None:
        """Record one collection and whether it freed enough to be worth repeating."""
        with self._lock:
            self._checks_since_collection = 0
            if usage_before - usage_after >= self.policy.min_freed:
                self._armed = True
                self._interval = 1
            else:
                self._armed = False
                self._floor = usage_after
                self._interval = min(self._interval * 2, self.policy.max_interval)


@dataclass(frozen=True, slots=True)
class ClearAlways:
    """Empty the cache at every cleanup step: what the MemoryManager API of the Cobra
    batch-processing system did after every image.

    Predictable: memory torch caches but no tensor uses goes back to the driver every
    cleanup, so other processes (and ``nvidia-smi``) see it. The cost is that the next
    allocations go to the driver again, which slows the allocator when done every item.
    """

    needs_snapshot: ClassVar[bool] = False

    def __call__(self, snapshot: MemorySnapshot | None, memory_threshold: float) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class ClearWhenUseful:
    """Empty the cache only when it can help: the toolkit's default.

    That is when the cache holds memory that no tensor uses (``reserved - allocated``, the
    *reclaimable* cache) of at least ``min_reclaimable`` of the device's total memory (10 %
    by default), or at least ``min_cached_bytes`` when that is given; and, while usage is at
    or above the threshold, when the reclaimable cache is at least ``under_pressure`` of the
    device (1 %). Under sustained pressure with nothing reclaimable, clearing would only send
    the allocator back to the driver for nothing, so it does not happen; new reclaimable
    cache is cleared at the next step. Otherwise the cached blocks stay for the next item to
    reuse. A device that reports no cache figures (the CPU) is "cleared": nothing is lost,
    and memscope counts no clear on a device without a cache.
    """

    needs_snapshot: ClassVar[bool] = True
    min_reclaimable: float = 0.1
    min_cached_bytes: int | None = None
    under_pressure: float = 0.01

    def __post_init__(self) -> None:
        check_fraction(self.min_reclaimable, "min_reclaimable")
        check_fraction(self.under_pressure, "under_pressure")
        if self.min_cached_bytes is not None:
            check_positive_number(self.min_cached_bytes, "min_cached_bytes", allow_zero=True)

    def __call__(self, snapshot: MemorySnapshot | None, memory_threshold: float) -> bool:
        if snapshot is None or snapshot.reserved is None:
            return True  # nothing to judge by, and nothing to lose
        reclaimable = snapshot.reserved - (snapshot.allocated or 0)
        under_pressure = snapshot.usage >= memory_threshold and bool(snapshot.total)
        if under_pressure and reclaimable >= self.under_pressure * (snapshot.total or 0):
            return True
        if self.min_cached_bytes is not None:
            return reclaimable >= self.min_cached_bytes
        if not snapshot.total:
            return reclaimable > 0
        return reclaimable >= self.min_reclaimable * snapshot.total


DEFAULT_CACHE_POLICY = ClearWhenUseful()
"""The cache policy of ``managed_batch`` and ``@auto_clear`` unless they are given one."""


def check_cache_policy(policy: object) -> CachePolicy:
    """A cache policy: a callable with a ``needs_snapshot`` flag."""
    if not callable(policy) or not isinstance(getattr(policy, "needs_snapshot", None), bool):
        raise InvalidArgumentTypeError(
            f"cache_policy must be a CachePolicy such as ClearWhenUseful(), got {policy!r}"
        )
    return policy  # type: ignore[return-value]
