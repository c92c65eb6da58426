"""The MemoryManager: one device's cache clearing, usage checks, threshold GC and estimates.

It is a drop-in replacement for the seed ``batch_processing.memory.MemoryManager``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, replace

import torch

from memscope._validation import check_fraction
from memscope.backends import DeviceBackend, MemoryReading
from memscope.devices import DeviceLike, resolve_device
from memscope.estimation import ImageMemoryModel
from memscope.exceptions import InvalidArgumentTypeError, MemoryFiguresUnavailableError
from memscope.policies import GCBackoff
from memscope.snapshot import MemorySnapshot

__all__ = ["ManagerStats", "MemoryManager"]

logger = logging.getLogger("memscope")


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """What a manager has done so far: a copy, taken when ``manager.stats`` is read."""

    cache_clears: int = 0
    gc_runs: int = 0
    gc_seconds: float = 0.0


class MemoryManager:
    """Clears caches, measures usage and collects garbage for one device.

    Args:
        device: a ``torch.device``, a string such as ``"cuda:1"`` or ``"mps"``, an int CUDA
            index, or ``None`` to auto-detect (CUDA, then MPS, then another accelerator,
            then the CPU). A device that is not present raises
            :class:`~memscope.DeviceUnavailableError` here, not at first use.
        memory_threshold: usage (0 < t <= 1) at or above which
            :meth:`trigger_gc_if_needed` collects garbage.
        memory_model: the assumptions behind :meth:`estimate_memory_required`.
        gc_backoff: skip threshold collections that would most likely free nothing (see
            :class:`GCBackoff`). ``None``, the default, collects at every check at or above
            the threshold, as the seed did; managers that ``managed_batch`` and
            ``@auto_clear`` make for you use ``GCBackoff()``.
    """

    def __init__(
        self,
        device: DeviceLike = None,
        memory_threshold: float = 0.8,
        *,
        memory_model: ImageMemoryModel | None = None,
        gc_backoff: GCBackoff | None = None,
    ) -> None:
        self._memory_threshold = check_fraction(memory_threshold, "memory_threshold")
        if gc_backoff is not None and not isinstance(gc_backoff, GCBackoff):
            raise InvalidArgumentTypeError(
                f"gc_backoff must be a GCBackoff or None, got {gc_backoff!r}"
            )
        self._backoff = None if gc_backoff is None else gc_backoff.new_state()
        self._device, self._backend = resolve_device(device)
        self.memory_model = ImageMemoryModel() if memory_model is None else memory_model
        self._stats = ManagerStats()
        self._stats_lock = threading.Lock()
        self._query_failing = False

    def __repr__(self) -> str:
        return (
            f"MemoryManager(device={str(self._backend.device)!r}, "
            f"memory_threshold={self._memory_threshold})"
        )

    @property
    def device(self) -> torch.device:
        """The device as the caller gave it (``torch.device("cuda")`` stays index-free)."""
        return self._device

    @property
    def resolved_device(self) -> torch.device:
        """The concrete device every query targets, such as ``cuda:1``."""
        return self._backend.device

    @property
    def backend(self) -> DeviceBackend:
        """The backend that talks to the device."""
        return self._backend

    @property
    def memory_threshold(self) -> float:
        """Usage at or above which :meth:`trigger_gc_if_needed` collects."""
        return self._memory_threshold

    @memory_threshold.setter
    def memory_threshold(self, value: float) -> None:
        self._memory_threshold = check_fraction(value, "memory_threshold")

    @property
    def gc_backoff(self) -> GCBackoff | None:
        """The policy that skips fruitless collections, or ``None`` (collect every time)."""
        return None if self._backoff is None else self._backoff.policy

    @property
    def stats(self) -> ManagerStats:
        """Cache clears, GC runs and seconds spent in GC since the manager was made."""
        return self._stats

    def clear_cache(self) -> None:
        """Return memory that torch caches but no tensor uses to the device.

        ``torch.cuda.empty_cache()`` on CUDA (it releases the cached blocks of every device
        this process has initialised), ``torch.mps.empty_cache()`` on MPS, the
        ``torch.accelerator`` equivalent elsewhere, nothing on the CPU.
        """
        self._backend.empty_cache()
        with self._stats_lock:
            self._stats = replace(self._stats, cache_clears=self._stats.cache_clears + 1)

    def check_memory_usage(self) -> float:
        """Memory pressure on the device: the fraction its next allocation cannot have.

        On CUDA this is ``(total - free - (reserved - allocated)) / total``: memory other
        processes hold counts as used, blocks torch caches but no tensor uses count as free.
        On MPS it is the Metal driver's allocation over Metal's recommended working set.
        The CPU reports 0.0. The result is clamped to [0, 1]. A failing query logs a
        warning and returns 0.0: monitoring never raises.
        """
        return self._usage(self._read_memory())

    def trigger_gc_if_needed(self) -> bool:
        """Collect garbage and clear the cache when usage is at or above the threshold.

        With a :class:`GCBackoff`, a collection that would most likely free nothing is
        skipped. Returns whether it collected.
        """
        usage = self.check_memory_usage()
        backoff = self._backoff
        if usage < self._memory_threshold:
            if backoff is not None:
                backoff.below_threshold()
            return False
        if backoff is not None and not backoff.allows(usage):
            logger.debug(
                "%s: usage %.1f%% >= threshold, but the last collection freed nothing: skipped",
                self.resolved_device,
                usage * 100,
            )
            return False
        started = time.perf_counter()
        gc.collect()
        elapsed = time.perf_counter() - started
        self.clear_cache()
        with self._stats_lock:
            self._stats = replace(
                self._stats,
                gc_runs=self._stats.gc_runs + 1,
                gc_seconds=self._stats.gc_seconds + elapsed,
            )
        if backoff is None and not logger.isEnabledFor(logging.DEBUG):
            return True
        usage_after = self.check_memory_usage()
        if backoff is not None:
            backoff.collected(usage, usage_after)
        logger.debug(
            "%s: usage %.1f%% >= threshold %.1f%%: collected garbage in %.1f ms, usage now %.1f%%",
            self.resolved_device,
            usage * 100,
            self._memory_threshold * 100,
            elapsed * 1000,
            usage_after * 100,
        )
        return True

    def estimate_memory_required(self, image_size: tuple[int, int]) -> int:
        """Bytes needed to process one image of ``(width, height)`` pixels.

        With the default :class:`ImageMemoryModel`: 512x512 -> 23,887,872 bytes,
        1024x1024 -> 95,551,488, 2048x2048 -> 382,205,952.
        """
        return self.memory_model.estimate(image_size)

    def snapshot(self) -> MemorySnapshot:
        """The device's memory figures now; fields the device cannot tell are ``None``."""
        reading = self._read_memory()
        return MemorySnapshot(
            device=str(self.resolved_device),
            usage=self._usage(reading),
            allocated=reading.allocated,
            reserved=reading.reserved,
            free=reading.free,
            total=reading.total,
            used=reading.used,
            peak_allocated=reading.peak_allocated,
            peak_reserved=reading.peak_reserved,
        )

    def max_batch_size(self, image_size: tuple[int, int]) -> int:
        """How many images of ``image_size`` fit in the memory available now.

        Available memory is the device's capacity less what is used (cached-but-free blocks
        count as available). Raises :class:`~memscope.MemoryFiguresUnavailableError` on a
        device that reports no capacity, such as the CPU.
        """
        per_image = self.estimate_memory_required(image_size)
        reading = self._read_memory()
        if reading.total is None or reading.used is None:
            raise MemoryFiguresUnavailableError(
                f"max_batch_size needs the free memory of {self.resolved_device}, "
                "which does not report it"
            )
        available = max(reading.total - reading.used, 0)
        return available // per_image

    def reset_peak_memory_stats(self) -> None:
        """Start the device's peak figures afresh; a no-op where the device keeps none."""
        try:
            self._backend.reset_peak_memory_stats()
        except Exception as error:
            self._report_query_failure("reset peak memory statistics", error)

    def _read_memory(self) -> MemoryReading:
        try:
            reading = self._backend.read_memory()
        except Exception as error:
            self._report_query_failure("read memory figures", error)
            return MemoryReading()
        self._query_failing = False
        return reading

    def _report_query_failure(self, action: str, error: Exception) -> None:
        # One warning when queries start failing, not one per call of a hot loop.
        level = logging.DEBUG if self._query_failing else logging.WARNING
        self._query_failing = True
        logger.log(level, "could not %s of %s: %r", action, self.resolved_device, error)

    @staticmethod
    def _usage(reading: MemoryReading) -> float:
        if reading.used is None or not reading.total:
            return 0.0
        return min(max(reading.used / reading.total, 0.0), 1.0)
