"""Heap freezing: make each collection inside a batch traverse only what the batch created.

A full ``gc.collect()`` traverses every object the collector tracks: about 60 ms once torch
is imported and about 200 ms once a diffusers pipeline is loaded. Almost all of those objects
(the model, the libraries) live for the whole batch and can never become garbage during it.
``gc.freeze()`` moves them to a permanent generation that collections skip, so a threshold
GC inside the batch costs about a millisecond. ``gc.unfreeze()`` at the end of the batch gives
them back to the collector.

The trade-off: a reference cycle that was already garbage when the batch started waits until
the batch ends to be collected.
"""

from __future__ import annotations

import gc
import logging
import threading

logger = logging.getLogger("memscope")

_lock = threading.Lock()
_holders = 0
_frozen_by_memscope = False


def hold_frozen_heap() -> None:
    """Freeze the heap for one more batch; the first holder freezes it."""
    global _holders, _frozen_by_memscope
    with _lock:
        if _holders == 0:
            # Someone else froze objects (before a fork, say): unfreezing at the end would
            # undo their freeze, so leave the heap alone for this batch.
            _frozen_by_memscope = gc.get_freeze_count() == 0
            if _frozen_by_memscope:
                gc.freeze()
            else:
                logger.debug("the heap is already frozen by someone else: not freezing it")
        _holders += 1


def release_frozen_heap() -> None:
    """One batch no longer needs the frozen heap; the last holder unfreezes it."""
    global _holders, _frozen_by_memscope
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _frozen_by_memscope:
            gc.unfreeze()
            _frozen_by_memscope = False


def collect_including_frozen() -> None:
    """``gc.collect()``, frozen objects included: unfreeze, collect, freeze again.

    After an out-of-memory error, garbage made of objects that predate the batch (a
    pipeline's cache that let go of tensors, say) is otherwise out of reach exactly when the
    memory is needed. Objects alive after the collection stay frozen until the batch ends.
    """
    with _lock:
        if _frozen_by_memscope:
            gc.unfreeze()
            try:
                gc.collect()
            finally:
                gc.freeze()
            return
    gc.collect()


def heap_holders() -> int:
    """How many batches currently hold the heap frozen."""
    return _holders
