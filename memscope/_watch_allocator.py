"""The caching allocator's own account of a batch: its OOMs, its retries, its fragments.

An out-of-memory error that torch or cuDNN catches and retries internally (cuDNN trying a
smaller workspace, say) never reaches memscope as an exception, yet it is the first sign of
a device near its limit. Where torch offers an out-of-memory observer
(``torch._C._cuda_attach_out_of_memory_observer``), memscope attaches one, once per
process, and each batch's :class:`AllocatorWatch` records every OOM the allocator raised on
its device: the size requested and the figures at that moment. Elsewhere the count comes
from the allocator's statistics (``num_ooms``) at the batch's start and end.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memscope.backends import DeviceBackend, MemoryReading
from memscope.units import format_bytes
from memscope.watch import WatchedBatch, Watcher

if TYPE_CHECKING:
    from memscope.snapshot import MemorySnapshot

__all__: list[str] = []

logger = logging.getLogger("memscope")


@dataclass(frozen=True, slots=True)
class AllocatorOom:
    """One out-of-memory error of the allocator, as its observer saw it (bytes)."""

    device: str
    requested: int
    total: int
    free: int
    allocated: int | None
    reserved: int | None


class _Observers:
    """The process's one observer per backend class (torch cannot detach one), handing each
    OOM to the innermost batch watching that device."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attached: weakref.WeakKeyDictionary[type[DeviceBackend], bool] = (
            weakref.WeakKeyDictionary()
        )
        self._watches: list[tuple[DeviceBackend, AllocatorWatch]] = []

    def listen(self, watch: AllocatorWatch, backend: DeviceBackend) -> bool:
        """Hand ``watch`` the OOMs of ``backend``'s device; whether torch can tell them."""
        kind = type(backend)
        with self._lock:
            attached = self._attached.get(kind)
            if attached is None:
                try:
                    attached = backend.attach_oom_observer(functools.partial(self._seen, kind))
                except Exception:
                    logger.warning("could not attach an out-of-memory observer", exc_info=True)
                    attached = False
                self._attached[kind] = attached
            if attached:
                self._watches.append((backend, watch))
        return attached

    def stop(self, watch: AllocatorWatch) -> None:
        with self._lock:
            self._watches = [entry for entry in self._watches if entry[1] is not watch]

    def _seen(
        self, kind: type[DeviceBackend], index: int, requested: int, total: int, free: int
    ) -> None:
        # torch calls this from inside an allocation; it must never raise into torch.
        try:
            with self._lock:
                matching = [
                    entry
                    for entry in self._watches
                    if type(entry[0]) is kind and entry[0].index == index
                ]
            if not matching:
                return
            backend, watch = matching[-1]
            try:
                reading = backend.read_memory()
            except Exception:
                logger.debug("could not read the figures at an allocator OOM", exc_info=True)
                reading = MemoryReading()
            oom = AllocatorOom(
                str(backend.device), requested, total, free, reading.allocated, reading.reserved
            )
            watch.ooms.append(oom)
            logger.info(
                "%s: the allocator could not allocate %s (%s free of %s, %s reserved)",
                oom.device,
                format_bytes(requested),
                format_bytes(free),
                format_bytes(total),
                format_bytes(reading.reserved),
            )
        except Exception:
            logger.debug("could not record an allocator out-of-memory error", exc_info=True)


observers = _Observers()


class AllocatorWatch(Watcher):
    """Counts the allocator's OOMs (and how many the batch survived), its retries, and the
    memory it holds in fragments when the batch ends."""

    def __init__(self) -> None:
        self.ooms: list[AllocatorOom] = []
        self.observing = False
        self._start: MemorySnapshot | None = None
        self._ended_by_oom = False

    def started(self, batch: WatchedBatch) -> None:
        self._start = batch.start_figures
        if self._start.inactive_split is not None:
            self.observing = observers.listen(self, batch.manager.backend)

    def oom_seen(self, batch: WatchedBatch, error: BaseException, *, leaving: bool) -> None:
        if leaving:
            self._ended_by_oom = True

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        start = self._start
        if start is None or start.inactive_split is None:
            return {}  # no allocator statistics here (not CUDA, or cudaMallocAsync)
        end = batch.memory_now()
        if self.observing:
            ooms: int | None = len(self.ooms)
        else:
            ooms = _grown(start.allocator_ooms, end.allocator_ooms)
        recovered = None if ooms is None else max(ooms - int(self._ended_by_oom), 0)
        return {
            "allocator_ooms": ooms,
            "allocator_ooms_recovered": recovered,
            "largest_oom_request": max((oom.requested for oom in self.ooms), default=None),
            "alloc_retries": _grown(start.alloc_retries, end.alloc_retries),
            "cached_but_free_end": end.cached_but_free,
            "inactive_split_end": end.inactive_split,
        }

    def finished(self, batch: WatchedBatch, error: BaseException | None) -> None:
        observers.stop(self)

    def __repr__(self) -> str:
        return "AllocatorWatch()"


def _grown(start: int | None, end: int | None) -> int | None:
    if start is None or end is None:
        return None
    return max(end - start, 0)
