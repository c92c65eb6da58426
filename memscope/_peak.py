"""Measuring a peak: how far memory rose during a call, above what was in use before it.

Shared by sizing (:mod:`memscope.sizing`) and the pytest checks, so it sits at the top,
importing neither.

On CUDA and other accelerators, the allocator's peak statistics
(``MemoryManager.reset_peak_memory_stats`` and ``snapshot().peak_allocated``, exact to the
byte). On the CPU under Linux, the process's peak resident memory: writing ``5`` to
``/proc/self/clear_refs`` resets the high-water mark ``VmHWM`` of ``/proc/self/status`` to the
current resident memory, which is read afterwards (kB resolution; glibc's free heap is handed
back first with ``malloc_trim``, so memory a call reuses shows as growth). The resident
memory is the whole process's, so other threads' allocations count too. MPS keeps no peak
statistics, and other systems have no resettable high-water mark: there nothing is measured.
(Calibration on the CPU counts torch's allocations instead: :func:`memscope.sizing.calibrate`.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memscope.estimation import MeasuredManager
from memscope.host import status_bytes
from memscope.snapshot import MemorySnapshot

__all__ = ["PeakStart", "host_peak", "peak_source", "read_peak", "start_peak"]

logger = logging.getLogger("memscope")

_PROC_SELF = Path("/proc/self")


class _HostPeak:
    """The process's peak resident memory on Linux: reset through ``clear_refs``, read from
    ``VmHWM``. Works out once whether the system allows it."""

    def __init__(self, proc_self: Path = _PROC_SELF) -> None:
        self.proc_self = proc_self
        self._lock = threading.Lock()
        self._usable: bool | None = None
        # Looked up once the peak is usable: loading ctypes costs an import nothing else needs.
        self._trim: Callable[[int], int] | None = None

    def usable(self) -> bool:
        """Whether the peak can be reset and read here (tried once, then remembered)."""
        with self._lock:
            if self._usable is None:
                self._usable = self._reset() is not None and self._read("VmHWM") is not None
                self._trim = _malloc_trim() if self._usable else None
                if not self._usable:
                    logger.info(
                        "the peak resident memory cannot be reset and read here (it needs "
                        "Linux's /proc/self/clear_refs and VmHWM): nothing measured on the CPU"
                    )
            return self._usable

    def start(self) -> int | None:
        """Reset the peak to the resident memory now, and return that (the baseline)."""
        if not self.usable():
            return None
        if self._trim is not None:
            # Free heap memory glibc keeps would be reused without growing the resident
            # memory; handing it back first makes every byte a call needs show as growth.
            self._trim(0)
        return self._reset()

    def peak(self) -> int | None:
        """The peak resident memory since the last :meth:`start`."""
        return self._read("VmHWM")

    def _reset(self) -> int | None:
        try:
            (self.proc_self / "clear_refs").write_text("5")
        except OSError:
            return None
        return self._read("VmRSS")

    def _read(self, label: str) -> int | None:
        try:
            return status_bytes(self.proc_self / "status", label)
        except (OSError, ValueError):
            return None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where the C library has one."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


host_peak = _HostPeak()
"""The process's peak resident memory (one per process: the high-water mark is the process's)."""


@dataclass(frozen=True, slots=True)
class PeakStart:
    """A measurement begun: where the peak is read from, and the memory in use at the start."""

    source: str
    """``"allocator"`` (the device's allocator peak) or ``"host"`` (peak resident memory)."""
    baseline: int


def peak_source(snapshot: MemorySnapshot, *, host: bool) -> str | None:
    """Where a peak on ``snapshot``'s device can be measured: ``"allocator"`` where the device
    keeps peak statistics, ``"host"`` for a device that reports no figures (the CPU) when
    ``host`` allows it and the system can, else ``None``."""
    if snapshot.peak_allocated is not None and snapshot.allocated is not None:
        return "allocator"
    if host and snapshot.total is None and snapshot.allocated is None and host_peak.usable():
        return "host"
    return None


def start_peak(
    manager: MeasuredManager, snapshot: MemorySnapshot, source: str | None
) -> PeakStart | None:
    """Reset the peak from ``source`` and note the baseline; ``None`` when nothing can be
    measured. ``snapshot`` is the manager's, read just before (the caller folds its peaks
    into whatever must keep them before they are reset)."""
    if source == "allocator":
        assert snapshot.allocated is not None
        manager.reset_peak_memory_stats()
        return PeakStart("allocator", snapshot.allocated)
    if source == "host":
        baseline = host_peak.start()
        return None if baseline is None else PeakStart("host", baseline)
    return None


def read_peak(manager: MeasuredManager, start: PeakStart) -> int | None:
    """Bytes the peak rose above the baseline since ``start``; ``None`` if unreadable."""
    from_allocator = start.source == "allocator"
    peak = manager.snapshot().peak_allocated if from_allocator else host_peak.peak()
    if peak is None:
        return None
    return max(peak - start.baseline, 0)
