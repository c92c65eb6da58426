"""One cleanup step: clear the cache, then collect garbage if usage is at the threshold.

The decorator and the batch context manager both clean up through here, so the two behave
the same and a failing cleanup is handled in one place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from memscope.manager import MemoryManager

__all__ = ["CleanupOutcome"]

logger = logging.getLogger("memscope")


@dataclass(frozen=True, slots=True)
class CleanupOutcome:
    """What one cleanup did.

    ``cache_clears`` counts ``clear_cache()`` calls: one, plus the one a collection makes.
    ``gc_seconds`` is the time spent in the threshold GC step when it collected.
    """

    cache_clears: int
    collected: bool
    gc_seconds: float


def run_cleanup(manager: MemoryManager) -> CleanupOutcome:
    """``manager.clear_cache()`` then ``manager.trigger_gc_if_needed()``."""
    manager.clear_cache()
    started = time.perf_counter()
    collected = bool(manager.trigger_gc_if_needed())
    elapsed = time.perf_counter() - started
    return CleanupOutcome(
        cache_clears=2 if collected else 1,
        collected=collected,
        gc_seconds=elapsed if collected else 0.0,
    )


def run_cleanup_safely(manager: MemoryManager, where: str) -> CleanupOutcome | None:
    """:func:`run_cleanup`, but a failure is logged as a warning and gives ``None``.

    Cleanup runs after the user's code; its failure must never replace their result or
    their exception.
    """
    try:
        return run_cleanup(manager)
    except Exception:
        logger.warning("memory cleanup after %s failed", where, exc_info=True)
        return None
