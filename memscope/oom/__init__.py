"""Out-of-memory errors: recognise them, recover from them, and size batches around them.

- :func:`is_oom_error` recognises an out-of-memory error on every backend;
  :func:`call_catching_oom`, :func:`release_exception_frames` and :func:`reclaim_memory` are
  the pieces of a recovery that really frees the failed call's memory.
- :func:`~memscope.adaptive_batch` and :func:`~memscope.process_in_chunks` (also at the top
  level) run a function at a batch size that shrinks when memory runs out;
  :class:`AdaptiveBatchState` is what they learned.
- :func:`add_oom_note` adds the device's figures to an error; :class:`MemoryHistoryRecorder`
  records CUDA's allocation history and writes a snapshot when an error leaves it.
"""

from memscope.oom._adaptive import (
    AdaptiveBatchFunction,
    AdaptiveBatchState,
    adaptive_batch,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.oom._detection import (
    CaughtOom,
    call_catching_oom,
    call_catching_oom_async,
    is_oom_error,
    reclaim_memory,
    release_exception_frames,
)
from memscope.oom._diagnosis import add_oom_note
from memscope.oom._history import MemoryHistoryRecorder

__all__ = [
    "AdaptiveBatchFunction",
    "AdaptiveBatchState",
    "CaughtOom",
    "MemoryHistoryRecorder",
    "adaptive_batch",
    "add_oom_note",
    "call_catching_oom",
    "call_catching_oom_async",
    "is_oom_error",
    "process_in_chunks",
    "process_in_chunks_async",
    "reclaim_memory",
    "release_exception_frames",
]
