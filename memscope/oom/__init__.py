"""Out-of-memory errors: recognise them and recover from them (the recovery layer).

- :func:`is_oom_error` recognises an out-of-memory error on every backend;
  :func:`call_catching_oom`, :func:`release_exception_frames` and :func:`reclaim_memory` are
  the pieces of a recovery that really frees the failed call's memory.
- :func:`add_oom_note` adds the device's figures to an error; :class:`MemoryHistoryRecorder`
  records CUDA's allocation history and writes a snapshot when an error leaves it.

Batch sizing (``adaptive_batch``, ``process_in_chunks``, ``iter_chunks``, their async forms,
``AdaptiveBatchState``...) lives in :mod:`memscope.sizing`, beside this layer; the names
it had here still import from here (docs/changelog.md lists them), read from
:mod:`memscope.sizing` when first asked for, so that recovery never imports sizing.

The code lives in private modules, one per job: ``_detection`` (recognising and recovering),
``_diagnosis`` and ``_history``.
"""

from typing import TYPE_CHECKING, Any

from memscope._homes import moved_attribute
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

if TYPE_CHECKING:
    # Explicit re-exports (``as``), for type checkers: the sizing names memscope.oom had.
    from memscope.sizing import (
        AdaptiveBatchClassMethod as AdaptiveBatchClassMethod,
        AdaptiveBatchDecorator as AdaptiveBatchDecorator,
        AdaptiveBatchFunction as AdaptiveBatchFunction,
        AdaptiveBatchMethod as AdaptiveBatchMethod,
        AdaptiveBatchSnapshot as AdaptiveBatchSnapshot,
        AdaptiveBatchState as AdaptiveBatchState,
        adaptive_batch as adaptive_batch,
        iter_chunks as iter_chunks,
        iter_chunks_async as iter_chunks_async,
        process_in_chunks as process_in_chunks,
        process_in_chunks_async as process_in_chunks_async,
    )


def __getattr__(name: str) -> Any:
    # The sizing names this module had, read when first asked for (memscope._homes): sizing
    # imports this layer, which never imports sizing.
    return moved_attribute(__name__, name)


__all__ = [
    "CaughtOom",
    "MemoryHistory",
    "MemoryHistoryRecorder",
    "add_oom_note",
    "call_catching_oom",
    "call_catching_oom_async",
    "is_oom_error",
    "reclaim_memory",
    "release_exception_frames",
]
