"""How a watcher looks to a type checker: usage that ``mypy --strict`` accepts.

``.ci/run`` runs ``mypy --strict tests/typing``; this file is never imported. A line marked
``# type: ignore[<code>]`` is a mistake the types must catch.
"""

from __future__ import annotations

from typing_extensions import assert_type

from memscope import managed_batch
from memscope.snapshot import MemorySnapshot
from memscope.typing import BatchCounts
from memscope.watch import CleanupStep, WatchedBatch, Watcher


class CountCollections(Watcher):
    def __init__(self) -> None:
        self.collections = 0

    def cleaned(self, batch: WatchedBatch, step: CleanupStep) -> None:
        assert_type(batch.counts, BatchCounts)
        assert_type(batch.memory_now(), MemorySnapshot)
        assert_type(batch.every, int | None)
        self.collections += step.gc_runs


# A managed_batch is what a watcher's hooks see.
watched: WatchedBatch = managed_batch("cpu", watchers=[CountCollections()])

# A watcher reads the batch; it does not drive it.
watched.track([1, 2])  # type: ignore[attr-defined]
