"""Every cleanup memscope makes, measured: the cadence's step and the recovery after an OOM.

Whoever cleans up (a batch, ``@auto_clear`` outside a batch, OOM recovery) goes through here
and gets a :class:`CleanupOutcome` with exact counts, so a batch's report can add up every
cache clear and every ``gc.collect()`` whatever caused it. A failing cleanup is logged and
never replaces the user's result or exception.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass

from memscope.manager import MemoryManager
from memscope.policies import ClearAlways
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

    @property
    def collected(self) -> bool:
        """Whether the cleanup ran a garbage collection."""
        return self.gc_runs > 0


CLEAR_ALWAYS = ClearAlways()


def run_cleanup(manager: MemoryManager, cache_policy: CachePolicy = CLEAR_ALWAYS) -> CleanupOutcome:
    """``manager.clear_cache()`` (if the policy says so), then ``trigger_gc_if_needed()``."""
    snapshot = manager.snapshot() if cache_policy.needs_snapshot else None
    cleared = cache_policy(snapshot, manager.memory_threshold)
    if cleared:
        manager.clear_cache()
    started = time.perf_counter()
    collected = bool(manager.trigger_gc_if_needed())
    elapsed = time.perf_counter() - started
    return CleanupOutcome(
        cache_clears=int(cleared) + int(collected),
        gc_runs=int(collected),
        gc_seconds=elapsed if collected else 0.0,
    )


def run_cleanup_safely(
    manager: MemoryManager, where: str, cache_policy: CachePolicy = CLEAR_ALWAYS
) -> CleanupOutcome | None:
    """:func:`run_cleanup`, but a failure is logged as a warning and gives ``None``.

    Cleanup runs after the user's code; its failure must never replace their result or
    their exception.
    """
    try:
        return run_cleanup(manager, cache_policy)
    except Exception:
        logger.warning("memory cleanup after %s failed", where, exc_info=True)
        return None


def reclaim(manager: MemoryManager) -> CleanupOutcome | None:
    """``gc.collect()``, then ``manager.clear_cache()``: the recovery after an OOM.

    Unlike the cadence's step this collects whatever the usage, since the device has just
    said it is full. Never raises: a failure is logged and gives ``None``, because it must
    not replace the error being handled.
    """
    gc_runs = cache_clears = 0
    started = time.perf_counter()
    try:
        gc.collect()
        gc_runs = 1
        manager.clear_cache()
        cache_clears = 1
    except Exception:
        logger.warning("freeing memory after an out-of-memory error failed", exc_info=True)
        return None
    return CleanupOutcome(cache_clears, gc_runs, time.perf_counter() - started)
