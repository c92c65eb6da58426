"""Out-of-memory errors: recognise them, recover from them, and size batches around them.

- :func:`is_oom_error` recognises an out-of-memory error on every backend;
  :func:`call_catching_oom`, :func:`release_exception_frames` and :func:`reclaim_memory` are
  the pieces of a recovery that really frees the failed call's memory.
- :func:`adaptive_batch` and :func:`process_in_chunks` (also at the top level), and
  :func:`iter_chunks` (which yields each chunk's result as it completes), run a
  function at a batch size predicted from the memory measured per item (by factor where
  nothing can be measured), smaller when memory runs out; chunks can also be sized by a
  memory model. :class:`AdaptiveBatchState` is what an adaptive function learned, and
  :class:`AdaptiveBatchSnapshot` all of it at one moment. :class:`AdaptiveBatchFunction`,
  :class:`AdaptiveBatchMethod` and :class:`AdaptiveBatchClassMethod` are what a decorated
  function is to a type checker.
- :func:`add_oom_note` adds the device's figures to an error; :class:`MemoryHistoryRecorder`
  records CUDA's allocation history and writes a snapshot when an error leaves it.

The code lives in private modules, one per job: ``_detection`` (recognising and recovering),
``_options`` (checking the sizing options), ``_state`` (what a search learned, and the sizing
rules), ``_measure`` (the device's figures before an attempt, its peak after), ``_search``
(the one decision step of the size search, and its sync and async drivers),
``_decoration`` (``@adaptive_batch``), ``_chunks`` (``process_in_chunks``), ``_diagnosis``
and ``_history``.
"""

from memscope.oom._chunks import (
    iter_chunks,
    iter_chunks_async,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.oom._decoration import (
    AdaptiveBatchClassMethod,
    AdaptiveBatchDecorator,
    AdaptiveBatchFunction,
    AdaptiveBatchMethod,
    adaptive_batch,
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
from memscope.oom._history import MemoryHistory, MemoryHistoryRecorder
from memscope.oom._state import AdaptiveBatchSnapshot, AdaptiveBatchState

__all__ = [
    "AdaptiveBatchClassMethod",
    "AdaptiveBatchDecorator",
    "AdaptiveBatchFunction",
    "AdaptiveBatchMethod",
    "AdaptiveBatchSnapshot",
    "AdaptiveBatchState",
    "CaughtOom",
    "MemoryHistory",
    "MemoryHistoryRecorder",
    "adaptive_batch",
    "add_oom_note",
    "call_catching_oom",
    "call_catching_oom_async",
    "is_oom_error",
    "iter_chunks",
    "iter_chunks_async",
    "process_in_chunks",
    "process_in_chunks_async",
    "reclaim_memory",
    "release_exception_frames",
]
