"""The pytest plugin's markers read and checked, and what one test did to a device's memory.

Kept apart from :mod:`memscope.pytest_plugin`, which holds pytest's hooks and fixtures, so that
the measuring can be read without the plumbing around it.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from memscope._peak import peak_source, read_peak, start_peak
from memscope._validation import check_int
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.host import HostMemoryMonitor
from memscope.leaks import SuspectSearch
from memscope.manager import MemoryManager
from memscope.reports import LeakSuspect
from memscope.typing import DeviceLike
from memscope.units import format_bytes, parse_bytes

logger = logging.getLogger("memscope")

MEMORY_MARKER = "limit_device_memory"
LEAKS_MARKER = "limit_device_leaks"
FAKE_TOTAL_MARKER = "fake_device_total"

MARKER_HELP = {
    MEMORY_MARKER: (
        "limit_device_memory(limit, *, device=None): fail the test when its peak device "
        "memory exceeds limit (bytes, or a size such as '6 GiB'); on the CPU the growth of "
        "the process's peak resident memory (memscope)"
    ),
    LEAKS_MARKER: (
        "limit_device_leaks(tolerance, *, warmups=0, device=None): fail the test when more "
        "than tolerance of device memory is still allocated after it and memscope's cleanup; "
        "warmups runs the test body that many extra times first (memscope)"
    ),
    FAKE_TOTAL_MARKER: (
        "fake_device_total(total): the total memory of the fake_cuda and fake_mps "
        "fixtures' devices, such as '8 GiB' (memscope)"
    ),
}

SUSPECTS_SHOWN = 5
"""Groups of surviving tensors a leak failure names at most."""


class MarkerError(Exception):
    """A memscope marker with an argument it cannot use; the message names both."""


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """``@pytest.mark.limit_device_memory(limit, device=...)``, read."""

    limit: int
    device: DeviceLike


@dataclass(frozen=True, slots=True)
class LeakLimit:
    """``@pytest.mark.limit_device_leaks(tolerance, warmups=..., device=...)``, read."""

    tolerance: int
    warmups: int
    device: DeviceLike


@dataclass(frozen=True, slots=True)
class ItemChecks:
    """What memscope's markers ask of one test."""

    memory: MemoryLimit | None = None
    leaks: LeakLimit | None = None
    fake_total: int | None = None

    @property
    def measures(self) -> bool:
        return self.memory is not None or self.leaks is not None


def _check_device(device: object) -> DeviceLike:
    """A device as ``MemoryManager`` takes it. Whether it is present is only known when the
    test runs: a fixture such as ``fake_cuda`` may be what provides it."""
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, bool) or not isinstance(device, (int, str)):
        raise InvalidArgumentTypeError(
            f"device must be None, a torch.device, a str such as 'cuda:1' or an int CUDA "
            f"index, got {device!r} of type {type(device).__name__}"
        )
    if isinstance(device, int):
        if device < 0:
            raise InvalidArgumentError(f"device index must be >= 0, got {device!r}")
        return device
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise InvalidArgumentError(
            f"device {device!r} is not a device torch knows ({error})"
        ) from None
    return device


def _memory_limit(limit: object, *, device: object = None) -> MemoryLimit:
    return MemoryLimit(parse_bytes(limit, "limit"), _check_device(device))


def _leak_limit(tolerance: object, *, warmups: object = 0, device: object = None) -> LeakLimit:
    return LeakLimit(
        parse_bytes(tolerance, "tolerance"),
        check_int(warmups, "warmups", minimum=0),
        _check_device(device),
    )


def _fake_total(total: object) -> int:
    size = parse_bytes(total, "total")
    if size == 0:
        raise InvalidArgumentError(f"total must be more than 0 bytes, got {total!r}")
    return size


_READERS: dict[str, Callable[..., Any]] = {
    MEMORY_MARKER: _memory_limit,
    LEAKS_MARKER: _leak_limit,
    FAKE_TOTAL_MARKER: _fake_total,
}


def marker_text(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``@pytest.mark.limit_device_memory('6 GiB', device='cuda')``: the marker as written."""
    arguments = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
    return f"@pytest.mark.{name}({', '.join(arguments)})"


def read_marker(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The marker's arguments checked and read; :class:`MarkerError` naming it otherwise."""
    reader = _READERS[name]
    try:
        inspect.signature(reader).bind(*args, **kwargs)
    except TypeError as error:
        raise MarkerError(f"{marker_text(name, args, kwargs)}: {error}") from None
    try:
        return reader(*args, **kwargs)
    except (InvalidArgumentError, InvalidArgumentTypeError) as error:
        raise MarkerError(f"{marker_text(name, args, kwargs)}: {error}") from None


# Measuring ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one run of a test did to one device's memory, in bytes (``None``: not known).

    On an accelerator ``peak`` is the allocator's peak since the start of the run and
    ``held_before`` what was allocated when it started; on the CPU ``peak`` is how far the
    process's peak resident memory rose. ``left_behind`` is what is still held after the
    run, after ``gc.collect()`` and emptying the cache, less what was held before.
    """

    device: str
    peak: int | None
    held_before: int | None
    left_behind: int | None
    peak_is_lower_bound: bool = False

    @property
    def label(self) -> str:
        """``cuda:0``, or ``host memory`` where the process's resident memory was measured."""
        return "host memory" if self.device == "cpu" else self.device

    def to_row(self, nodeid: str) -> dict[str, Any]:
        """A row of the ``--memscope`` table: plain values, which pytest-xdist can send."""
        return {
            "nodeid": nodeid,
            "device": self.label,
            "peak": self.peak,
            "left_behind": self.left_behind,
        }


class DeviceProbe:
    """Reads one device's figures around a test: its allocator's, or the host's on the CPU."""

    def __init__(self, device: DeviceLike) -> None:
        self.manager = MemoryManager(device)
        self.device = str(self.manager.resolved_device)
        self._host: HostMemoryMonitor | None = None
        if self.manager.resolved_device.type == "cpu":
            try:
                self._host = HostMemoryMonitor()
            except Exception as error:
                logger.warning("cannot read this process's resident memory: %r", error)
        self._held_before: int | None = None
        self._peak_start: Any = None

    def held(self) -> int | None:
        """What is held now, after ``gc.collect()`` and emptying the cache."""
        gc.collect()
        try:
            self.manager.clear_cache()
        except Exception as error:
            # A cache that cannot be emptied must not hide the test's own outcome.
            logger.warning("could not empty the cache of %s: %r", self.device, error)
        if self._host is not None:
            try:
                return self._host.resident_bytes()
            except Exception as error:
                logger.warning("cannot read this process's resident memory: %r", error)
                return None
        return self.manager.snapshot().allocated

    @property
    def held_at_start(self) -> int | None:
        """What was allocated when :meth:`start_peak` ran (``None`` on the CPU)."""
        return self._held_before

    def start_peak(self) -> None:
        snapshot = self.manager.snapshot()
        self._held_before = snapshot.allocated
        self._peak_start = start_peak(
            self.manager, snapshot, peak_source(snapshot, host=self._host is not None)
        )

    def read_peak(self) -> tuple[int | None, bool]:
        """The peak since :meth:`start_peak`, and whether it is only a lower bound."""
        start = self._peak_start
        if start is None:
            # MPS keeps no peak statistics: what is allocated now is the most one can say.
            now = self.manager.snapshot().allocated
            if now is None or self._held_before is None:
                return None, False
            return max(now, self._held_before), True
        if start.source == "allocator":
            return self.manager.snapshot().peak_allocated, False
        peak: int | None = read_peak(self.manager, start)
        return peak, False


def exact(count: int) -> str:
    """``3.0 MiB (3,145,728 bytes)``."""
    return f"{format_bytes(count)} ({count:,} bytes)"


def memory_failure(limit: MemoryLimit, measured: Measurement) -> str | None:
    """The failure message when the peak is over the limit, else ``None``."""
    if measured.peak is None or measured.peak <= limit.limit:
        return None
    if measured.device == "cpu":
        what = f"the process's peak resident memory (host memory) rose by {exact(measured.peak)}"
    else:
        bound = "at least " if measured.peak_is_lower_bound else ""
        what = f"peak device memory {bound}{exact(measured.peak)} allocated on {measured.device}"
    message = f"{MEMORY_MARKER}: {what}, over the limit of {exact(limit.limit)}"
    if measured.device != "cpu" and measured.held_before:
        message += f"; {format_bytes(measured.held_before)} of it was allocated before the test"
    if measured.peak_is_lower_bound:
        message += (
            f" ({measured.device} keeps no peak statistics: this is what was allocated at "
            "the end of the test)"
        )
    return message


def leak_failure(
    limit: LeakLimit, measured: Measurement, suspects: tuple[LeakSuspect, ...]
) -> str | None:
    """The failure message when more than the tolerance stayed behind, else ``None``."""
    if measured.left_behind is None or measured.left_behind <= limit.tolerance:
        return None
    where = (
        "of host memory (the process's resident memory)"
        if measured.device == "cpu"
        else f"of {measured.device} memory"
    )
    runs = "" if limit.warmups == 0 else f", after {limit.warmups} warm-up run(s)"
    lines = [
        f"{LEAKS_MARKER}: {exact(measured.left_behind)} {where} still held after the test "
        f"(after gc.collect() and emptying the cache{runs}), over the tolerance of "
        f"{exact(limit.tolerance)}"
    ]
    if suspects:
        lines.append("tensors the test made that are still alive:")
        lines.extend(f"  {suspect}" for suspect in suspects)
    return "\n".join(lines)


def surviving_tensors(search: SuspectSearch) -> tuple[LeakSuspect, ...]:
    """The tensors made since ``search`` started that are still alive, grouped by holder."""
    try:
        search.take_candidates()
        return search.suspects(SUSPECTS_SHOWN)
    except Exception as error:
        logger.warning("could not name what holds the memory: %r", error)
        return ()
