"""Batch sizing: run work at the largest batch size that fits, learned from measurement.

- :func:`adaptive_batch` supplies a function's batch size; :func:`process_in_chunks` and
  :func:`iter_chunks` (and their async forms) run a function over chunks of items. All of
  them take one :class:`Sizing`, the sizing options checked once (or its fields as
  keywords: ``adaptive_batch(start=32)``).
- :class:`AdaptiveBatchState` is what a search learned, :class:`AdaptiveBatchSnapshot` all
  of it at one moment; :class:`AdaptiveBatchFunction`, :class:`AdaptiveBatchMethod` and
  :class:`AdaptiveBatchClassMethod` are what a decorated function is to a type checker.

This layer sits beside recovery (:mod:`memscope.oom`: recognising out-of-memory errors and
freeing what a failed call held), which it uses. Its private modules, one per job:
``_options`` (:class:`Sizing`), ``_fit`` (the memory curve fitted to the measurements),
``_snapshot`` and ``_rules`` (what a search learned, and the sizing rules), ``_state`` (the
learned state under a lock), ``_measure`` (the device's figures before an attempt, its peak
after), ``_search`` (the one decision step and its sync and async drivers), ``_decoration``
(``@adaptive_batch``), ``_items``, ``_chunk_search`` and ``_chunks`` (``process_in_chunks``)
and ``_calibration`` (:func:`calibrate`, :func:`fit_samples`). Reading a call's peak is the
private top-level ``memscope._peak``'s, which the pytest checks share. The pure memory models
stay in :mod:`memscope.estimation`.
"""

from memscope.sizing._calibration import calibrate, fit_samples
from memscope.sizing._chunk_search import ChunkKeywords
from memscope.sizing._chunks import (
    iter_chunks,
    iter_chunks_async,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.sizing._decoration import (
    AdaptiveBatchClassMethod,
    AdaptiveBatchDecorator,
    AdaptiveBatchFunction,
    AdaptiveBatchMethod,
    adaptive_batch,
)
from memscope.sizing._options import Sizing, SizingKeywords
from memscope.sizing._state import AdaptiveBatchSnapshot, AdaptiveBatchState

__all__ = [
    "AdaptiveBatchClassMethod",
    "AdaptiveBatchDecorator",
    "AdaptiveBatchFunction",
    "AdaptiveBatchMethod",
    "AdaptiveBatchSnapshot",
    "AdaptiveBatchState",
    "ChunkKeywords",
    "Sizing",
    "SizingKeywords",
    "adaptive_batch",
    "calibrate",
    "fit_samples",
    "iter_chunks",
    "iter_chunks_async",
    "process_in_chunks",
    "process_in_chunks_async",
]
