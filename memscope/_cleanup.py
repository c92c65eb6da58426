"""One cleanup step: clear the cache, then collect garbage if usage is at the threshold.

Whether the cache is cleared is up to a :class:`~memscope.policies.CachePolicy`
(:class:`~memscope.policies.ClearAlways` by default).

The decorator and the batch context manager both clean up through here, so the two behave
the same and a failing cleanup is handled in one place.
"""

from __future__ import annotations

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

    ``cache_clears`` counts ``clear_cache()`` calls: the policy's, plus the one a collection
    makes.
    ``gc_seconds`` is the time spent in the threshold GC step when it collected.
    """

    cache_clears: int
    collected: bool
    gc_seconds: float


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
        collected=collected,
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
