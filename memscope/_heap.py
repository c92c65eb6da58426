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

# Some Python 3.12 builds keep static objects of their own in the permanent generation from
# start-up (375 tuples on a 3.12.3, even with -S -I), and can put them back after
# gc.unfreeze(). A freeze of a loaded program holds hundreds of thousands of objects; only a
# permanent generation larger than this allowance is someone else's freeze.
INTERPRETER_FROZEN_OBJECTS = 10_000

_lock = threading.Lock()
_holders = 0
_frozen_by_memscope = False
_foreign_freeze_reported = False


def hold_frozen_heap() -> None:
    """Freeze the heap for one more batch; the first holder freezes it."""
    global _holders, _frozen_by_memscope
    with _lock:
        if _holders == 0:
            # Someone else froze objects (before a fork, say): unfreezing at the end would
            # undo their freeze, so leave the heap alone for this batch.
            already_frozen = gc.get_freeze_count()
            _frozen_by_memscope = already_frozen <= INTERPRETER_FROZEN_OBJECTS
            if _frozen_by_memscope:
                gc.freeze()
            else:
                _report_foreign_freeze(already_frozen)
        _holders += 1


def _report_foreign_freeze(already_frozen: int) -> None:
    # Servers and training scripts freeze the heap on purpose (vLLM after warm-up, a parent
    # before fork); some freeze a few hundred objects at start-up, which leaves almost the
    # whole heap to every collection. Either way the batch's collections cost what they cost
    # without memscope, and the user should know why, once.
    global _foreign_freeze_reported
    if _foreign_freeze_reported:
        logger.debug("the heap is already frozen by other code: not freezing it")
        return
    _foreign_freeze_reported = True
    logger.warning(
        "%d objects were frozen (gc.freeze()) by other code before this batch; memscope "
        "leaves that freeze alone and freezes nothing more, so collections inside the batch "
        "still traverse every object created after it. Pass freeze_heap=False to the batch "
        "to keep the heap as it is without this message.",
        already_frozen,
    )


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


def heap_is_unfrozen() -> bool:
    """Whether nobody holds the heap frozen: the permanent generation holds at most what the
    interpreter itself keeps there."""
    return gc.get_freeze_count() <= INTERPRETER_FROZEN_OBJECTS


def heap_holders() -> int:
    """How many batches currently hold the heap frozen."""
    return _holders
