"""Every cleanup memscope makes, measured: the cadence's step and the recovery after an OOM.

Whoever cleans up (a batch, ``@auto_clear`` outside a batch, OOM recovery) goes through here
and gets a :class:`CleanupOutcome` with exact counts, so a batch's report can add up every
cache clear and every ``gc.collect()`` whatever caused it. A failing cleanup is logged and
never replaces the user's result or exception.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from memscope import _heap
from memscope.manager import MemoryManager
from memscope.policies import ClearAlways
from memscope.snapshot import MemorySnapshot
from memscope.typing import CachePolicy

__all__ = ["CleanupOutcome"]

logger = logging.getLogger("memscope")


@dataclass(frozen=True, slots=True)
class CleanupOutcome:
    """What one cleanup did.

    ``cache_clears`` counts ``clear_cache()`` calls (the policy's, plus the one a collection
    makes), ``gc_runs`` the ``gc.collect()`` calls, and ``gc_seconds`` the time they took.
    """

    cache_clears: int
    gc_runs: int
    gc_seconds: float
    figures_after: MemorySnapshot | None = None
    """The device's figures after the cleanup, when the reading it decided on still holds
    (nothing was freed after it); ``None`` when they must be read again."""

    @property
    def collected(self) -> bool:
        """Whether the cleanup ran a garbage collection."""
        return self.gc_runs > 0


CLEAR_ALWAYS = ClearAlways()


def run_cleanup(manager: MemoryManager, cache_policy: CachePolicy = CLEAR_ALWAYS) -> CleanupOutcome:
    """``manager.clear_cache()`` (if the policy says so), then ``trigger_gc_if_needed()``.

    One reading of the device serves the policy and the threshold check, and it is taken
    again only after a cache clear changed the figures: a CUDA reading costs a driver call
    and a walk through the allocator's statistics, and most steps free nothing.
    """
    snapshot = manager.snapshot() if cache_policy.needs_snapshot else None
    cleared = cache_policy(snapshot, manager.memory_threshold)
    if cleared:
        manager.clear_cache()
    started = time.perf_counter()
    if type(manager).trigger_gc_if_needed is MemoryManager.trigger_gc_if_needed:
        if snapshot is None or cleared:
            snapshot = manager.snapshot()
        collected = manager._collect_if_above_threshold(snapshot.usage)
    else:
        # A subclass's own trigger_gc_if_needed (the Cobra MemoryManager API) is honoured.
        collected = bool(manager.trigger_gc_if_needed())
        if cleared:
            snapshot = None
    elapsed = time.perf_counter() - started
    return CleanupOutcome(
        cache_clears=int(cleared) + int(collected),
        gc_runs=int(collected),
        gc_seconds=elapsed if collected else 0.0,
        figures_after=None if collected else snapshot,
    )


def run_cleanup_safely(
    manager: MemoryManager, where: str, cache_policy: CachePolicy = CLEAR_ALWAYS
) -> CleanupOutcome | None:
    """:func:`run_cleanup`, but a failure is logged as a warning and gives ``None``.

    Cleanup runs after the user's code; its failure must never replace their result or
    their exception.
    """
    try:
        outcome = run_cleanup(manager, cache_policy)
    except Exception:
        failures.failed(f"memory cleanup after {where}")
        return None
    failures.succeeded()
    return outcome


def reclaim(manager: MemoryManager) -> CleanupOutcome | None:
    """``gc.collect()``, then ``manager.clear_cache()``: the recovery after an OOM.

    Unlike the cadence's step this collects whatever the usage, since the device has just
    said it is full. Never raises: a failure is logged and gives ``None``, because it must
    not replace the error being handled.
    """
    started = time.perf_counter()
    try:
        _heap.collect_including_frozen()
        manager.clear_cache()
    except Exception:
        failures.failed("freeing memory after an out-of-memory error")
        return None
    failures.succeeded()
    return CleanupOutcome(cache_clears=1, gc_runs=1, gc_seconds=time.perf_counter() - started)


class FailureLog:
    """Logs failing cleanups without flooding the log.

    The first failure is a warning with its traceback; further ones are warnings with a
    running count at the 2nd, 3rd, 10th, 100th, 1,000th, ... failure (six warnings for 1,000
    failing calls), and DEBUG records otherwise. A cleanup that works again resets the count
    and says so.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Failures since the last cleanup that worked."""
        return self._count

    def failed(self, what: str) -> None:
        """Record a failure of ``what``; call it from the ``except`` block that caught it."""
        with self._lock:
            self._count += 1
            count = self._count
        if count == 1:
            logger.warning("%s failed", what, exc_info=True)
        elif count <= 3 or _is_power_of_ten(count):
            logger.warning(
                "%s failed again: %d cleanups in a row have failed (the first one's traceback "
                "was logged; the rest are logged at DEBUG)",
                what,
                count,
            )
        else:
            logger.debug("%s failed (%d in a row)", what, count, exc_info=True)

    def succeeded(self) -> None:
        """Record a cleanup that worked."""
        if self._count:  # read without the lock: the common case costs nothing
            with self._lock:
                count, self._count = self._count, 0
            if count:
                logger.info("memory cleanup works again after %d failures", count)


def _is_power_of_ten(number: int) -> bool:
    while number % 10 == 0:
        number //= 10
    return number == 1


failures = FailureLog()
"""The process's one record of failing cleanups."""
