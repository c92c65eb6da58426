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

from memscope import _heap
from memscope._outcome import CleanupOutcome
from memscope.manager import CLEAR_ALWAYS, MemoryManager
from memscope.typing import CachePolicy

__all__ = ["CleanupOutcome", "run_cleanup_safely"]

logger = logging.getLogger("memscope")


def run_cleanup_safely(
    manager: MemoryManager, where: str | int, cache_policy: CachePolicy = CLEAR_ALWAYS
) -> CleanupOutcome | None:
    """One cleanup step through ``manager`` (:meth:`MemoryManager.clean_up`), but a failure
    is logged as a warning and gives ``None``; ``where`` says after what (an int: after that
    item of a batch).

    Cleanup runs after the user's code; its failure must never replace their result or
    their exception.
    """
    try:
        outcome = manager.clean_up(cache_policy)
    except Exception:
        failures.failed(f"memory cleanup after {_place(where)}")
        return None
    failures.succeeded()
    return outcome


def _place(where: str | int) -> str:
    return f"batch item {where}" if isinstance(where, int) else where


def reclaim(manager: MemoryManager) -> CleanupOutcome | None:
    """``gc.collect()``, then ``manager.clear_cache()``: the recovery after an OOM.

    Unlike the cadence's step this collects whatever the usage, since the device has just
    said it is full. Never raises: a failure is logged, because it must not replace the
    error being handled. A collection whose cache clear fails is still counted (the outcome
    says ``failed``); ``None`` means nothing ran.
    """
    started = time.perf_counter()
    try:
        _heap.collect_including_frozen()
    except Exception:
        failures.failed("freeing memory after an out-of-memory error")
        return None
    gc_seconds = time.perf_counter() - started
    try:
        manager.clear_cache()
        cleared = manager.backend.caches_memory
    except Exception:
        failures.failed("clearing the cache after an out-of-memory error")
        return CleanupOutcome(cache_clears=0, gc_runs=1, gc_seconds=gc_seconds, failed=True)
    failures.succeeded()
    return CleanupOutcome(cache_clears=int(cleared), gc_runs=1, gc_seconds=gc_seconds)


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
