"""Measuring attempts: what the device has available before one, and how far its peak rose.

Before an attempt the search reads the manager's snapshot (what is available, where a peak
can be measured), folds the peak figures seen so far into the active batch (resetting them
would erase what the batch has seen), and resets the peak. After a success it reads the peak
again: its rise above the memory in use before the attempt is what the attempt needed. Peaks
go through the manager (``reset_peak_memory_stats``, ``snapshot().peak_allocated``), so every
backend that keeps peak statistics is measured the same way; on the CPU, where the manager
watches the host, the process's peak resident memory stands in (see
:mod:`memscope._peak`).

A device has one peak. Two attempts measured at once on it (threads, or async tasks that
interleave) would reset each other's: an attempt that starts while another is measured on
the same device measures nothing and resets nothing, and the one in flight learns nothing
either.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from memscope import _context as context
from memscope._peak import PeakStart, peak_source, read_peak, start_peak
from memscope.estimation import available_bytes
from memscope.manager import MemoryManager
from memscope.snapshot import MemorySnapshot

__all__: list[str] = []


@dataclass(frozen=True, slots=True)
class Reading:
    """What the device said just before an attempt."""

    available: int | None
    """Bytes a batch may use (``None``: the device does not tell)."""
    measurable: bool
    """Whether the attempt's peak is being measured."""


class _Measurement:
    """One attempt being measured on one peak; others that overlap it spoil it."""

    __slots__ = ("key", "spoiled", "start")

    def __init__(self, key: str) -> None:
        self.key = key
        self.spoiled = False
        self.start: PeakStart | None = None


_in_flight: dict[str, list[_Measurement]] = {}
_in_flight_lock = threading.Lock()


def _enter(key: str) -> tuple[_Measurement, bool]:
    """Register a measurement on ``key``'s peak; whether it is the only one."""
    measurement = _Measurement(key)
    with _in_flight_lock:
        others = _in_flight.setdefault(key, [])
        alone = not others
        for other in others:
            other.spoiled = True
        measurement.spoiled = not alone
        others.append(measurement)
    return measurement, alone


def _leave(measurement: _Measurement) -> bool:
    """Unregister ``measurement``; whether another overlapped it."""
    with _in_flight_lock:
        others = _in_flight.get(measurement.key, [])
        if measurement in others:
            others.remove(measurement)
        if not others:
            _in_flight.pop(measurement.key, None)
        return measurement.spoiled


def _fold_peak_into(
    batch: context.ActiveBatch | None, manager: MemoryManager, snapshot: MemorySnapshot
) -> None:
    """Give the batch the peak figures it would lose when ``manager``'s device's peak is reset
    (a batch on another device keeps its own)."""
    if batch is None or batch.manager.resolved_device != manager.resolved_device:
        return
    batch._observe_peak(snapshot.peak_allocated, snapshot.peak_reserved)


class AttemptMeter:
    """Reads the figures before each attempt of one search, and measures the attempt.

    ``measure``: reset and read peaks (sizing from measurement); ``figures``: read what is
    available even without measuring (chunks sized by a memory model). With neither, nothing
    is asked of the device.
    """

    def __init__(
        self,
        manager: MemoryManager,
        batch: context.ActiveBatch | None,
        *,
        measure: bool,
        figures: bool,
    ) -> None:
        self.manager = manager
        self.batch = batch
        self.measure = measure
        self.figures = figures or measure
        self._current: _Measurement | None = None

    def start(self) -> Reading:
        """Read the figures before an attempt, and start measuring it where possible."""
        self._finish_unread()
        if not self.figures:
            return Reading(None, measurable=False)
        snapshot = self.manager.snapshot()
        available = available_bytes(snapshot)
        if not self.measure:
            return Reading(available, measurable=False)
        # On the CPU the peak resident memory is measured only where the manager watches the
        # host: without the host's limit nothing could be predicted from it.
        source = peak_source(snapshot, host=snapshot.host_limit is not None)
        if source is None:
            return Reading(available, measurable=False)
        key = "host" if source == "host" else str(self.manager.resolved_device)
        measurement, alone = _enter(key)
        self._current = measurement
        if alone:
            if source == "allocator":
                _fold_peak_into(self.batch, self.manager, snapshot)
            measurement.start = start_peak(self.manager, snapshot, source)
        return Reading(available, measurable=measurement.start is not None)

    def finish(self) -> int | None:
        """After a success: how far the peak rose above the memory in use before the
        attempt; ``None`` when it was not measured, or another measurement overlapped it."""
        measurement, self._current = self._current, None
        if measurement is None:
            return None
        used = None if measurement.start is None else read_peak(self.manager, measurement.start)
        spoiled = _leave(measurement)
        return None if spoiled else used

    def abandon(self) -> None:
        """After a failure: stop measuring, reading nothing."""
        self._finish_unread()

    def _finish_unread(self) -> None:
        measurement, self._current = self._current, None
        if measurement is not None:
            _leave(measurement)
