"""The toolkit's one recovery after an out-of-memory error, shared by the batch, the
decorator and the size search: free what the failed call held, count it where it happened."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memscope._cleanup import CleanupOutcome, reclaim
from memscope.manager import MemoryManager
from memscope.oom import release_exception_frames

if TYPE_CHECKING:
    from memscope._context import ActiveBatch

__all__ = ["recover_from_oom"]


def recover_from_oom(
    error: BaseException, manager: MemoryManager, batch: ActiveBatch | None
) -> CleanupOutcome | None:
    """Free the memory a call that raised ``error`` held, before it is called again.

    :func:`release_exception_frames`, then ``gc.collect()`` and ``manager.clear_cache()``
    (measured by :func:`memscope._cleanup.reclaim`); inside a batch, the cleanup counts
    into its report. Call it outside the ``except`` block that caught ``error``. Never
    raises; gives ``None`` when freeing failed (and was logged).
    """
    release_exception_frames(error)
    outcome = reclaim(manager)
    if batch is not None:
        batch._record_cleanup(outcome)
    return outcome
