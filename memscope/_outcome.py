"""What one cleanup did, counted exactly, so a report can add up every clear and collection."""

from __future__ import annotations

from typing import NamedTuple

from memscope.snapshot import MemorySnapshot

__all__ = ["CleanupOutcome"]


class CleanupOutcome(NamedTuple):
    """What one cleanup did (a tuple: one is made on every cleanup step).

    ``cache_clears`` counts ``clear_cache()`` calls on a device that has a cache (the
    policy's, plus the one a collection makes), ``gc_runs`` the ``gc.collect()`` calls, and
    ``gc_seconds`` the time they took. ``failed`` says part of it failed (a collection whose
    cache clear raised, say): what did run is still counted.
    """

    cache_clears: int
    gc_runs: int
    gc_seconds: float
    figures_after: MemorySnapshot | None = None
    """The device's figures after the cleanup, when the reading it decided on still holds
    (nothing was freed after it); ``None`` when they must be read again."""
    failed: bool = False

    @property
    def collected(self) -> bool:
        """Whether the cleanup ran a garbage collection."""
        return self.gc_runs > 0
