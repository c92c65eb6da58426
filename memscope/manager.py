"""The MemoryManager: one device's cache clearing, usage checks, threshold GC and estimates.

It is a drop-in replacement for the ``MemoryManager`` of the Cobra batch-processing system
(``batch_processing.memory.MemoryManager``): change the import, nothing else.
"""

from __future__ import annotations

import gc
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch

from memscope import _manager_checks as checks
from memscope._devices import resolve_device
from memscope._ledger import Ledger
from memscope._outcome import CleanupOutcome
from memscope._validation import check_fraction
from memscope.backends import DeviceBackend, MemoryReading
from memscope.container import ContainerMemoryMonitor
from memscope.estimation import ImageMemoryModel, available_bytes
from memscope.exceptions import (
    MemoryFiguresUnavailableError,
)
from memscope.host import HostMemoryMonitor
from memscope.policies import ClearAlways, GCBackoff
from memscope.snapshot import MemorySnapshot
from memscope.typing import CachePolicy, DeviceLike, MemoryModel

__all__ = ["DEFAULT_MEMORY_THRESHOLD", "ManagerStats", "MemoryManager"]

DEFAULT_MEMORY_THRESHOLD = 0.8
"""The usage at or above which a threshold GC collects, unless told otherwise: the MemoryManager
API of the Cobra batch-processing system uses 0.8."""

logger = logging.getLogger("memscope")

CLEAR_ALWAYS = ClearAlways()
CONTAINER = checks.CONTAINER


class _Step:
    """The reading one cleanup step shares between its cache policy and its threshold GC."""

    __slots__ = ("measured",)

    def __init__(self, measured: _Measurement | None) -> None:
        self.measured = measured


# Set while MemoryManager.clean_up runs: the default trigger_gc_if_needed then uses the step's
# reading instead of reading the device again. A subclass's own trigger_gc_if_needed (the
# Cobra API's hook) ignores it and does what it does.
_current_step: ContextVar[_Step | None] = ContextVar("memscope_cleanup_step", default=None)


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """What a manager has done so far: a copy of its ledger's counts, taken when
    ``manager.stats`` is read."""

    cache_clears: int = 0
    gc_runs: int = 0
    gc_seconds: float = 0.0


class _Measurement(NamedTuple):
    """Everything one usage check read, so that a snapshot and its usage agree."""

    reading: MemoryReading
    usage: float
    host_resident: int | None = None
    budget_used: int | None = None


_NOTHING_MEASURED = _Measurement(MemoryReading(), 0.0)


_CLEANUP_HOOKS = ("clear_cache", "trigger_gc_if_needed", "check_memory_usage", "snapshot")


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
            the threshold, as the Cobra MemoryManager API does; managers that ``managed_batch`` and
            ``@auto_clear`` make for you use ``GCBackoff()``.
        host: ``True`` also watches this process's resident memory against the host's
            effective limit (the smallest of the RAM, the cgroup limit and
            ``RLIMIT_AS``/``RLIMIT_RSS``), read once, here; ``"container"`` watches the whole
            container instead, as the kernel counts it against its limit (DataLoader workers
            included, reclaimable page cache not; see
            :class:`~memscope.container.ContainerMemoryMonitor`), the limit re-read at each
            reading. Usage is then the larger of the device's and the host's. Raises
            :class:`~memscope.HostMemoryUnavailableError` where the figures cannot be read.
        budget: bytes this process may use (an int, or a string such as ``"6GiB"`` or
            ``"512MB"``); usage is then also measured against it. What counts against the
            budget is this process's own footprint: the memory torch's allocator holds on a
            device that reports it (CUDA, MPS, other accelerators), the resident memory on
            the CPU, where a budget turns host monitoring on. A budget larger than the
            device's capacity raises :class:`~memscope.InvalidArgumentError`.
    """

    overrides_cleanup: ClassVar[bool] = False
    """Whether this class overrides a method a cleanup step calls (the Cobra MemoryManager
    API's ``clear_cache``, ``trigger_gc_if_needed``, ``check_memory_usage``, or
    ``snapshot``): its steps then always call them, even where the step has nothing to do."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.overrides_cleanup = any(
            getattr(cls, name) is not getattr(MemoryManager, name) for name in _CLEANUP_HOOKS
        )

    def __init__(
        self,
        device: DeviceLike = None,
        memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
        *,
        memory_model: MemoryModel | None = None,
        gc_backoff: GCBackoff | None = None,
        host: bool | Literal["container"] = False,
        budget: int | str | None = None,
    ) -> None:
        self._memory_threshold = check_fraction(memory_threshold, "memory_threshold")
        self._backoff = None if gc_backoff is None else checks.gc_backoff(gc_backoff).new_state()
        host = checks.host(host)
        self._budget = None if budget is None else checks.budget(budget)
        self._device, self._backend = resolve_device(device)
        # Formatted once: every snapshot names its device.
        self._device_name = str(self._backend.device)
        self._no_figures = MemorySnapshot(self._device_name, 0.0)
        self.memory_model: MemoryModel = (
            ImageMemoryModel() if memory_model is None else checks.memory_model(memory_model)
        )
        self._ledger = Ledger()
        self._failing_queries: set[str] = set()
        self._budget_counts_host_memory = False
        device_capacity: int | None = None
        if self._budget is not None:
            device_capacity, self._budget_counts_host_memory = self._probe_device_for_budget()
        self._host_monitor: HostMemoryMonitor | None = None
        if host == CONTAINER:
            self._host_monitor = ContainerMemoryMonitor()
        elif host or self._budget_counts_host_memory:
            self._host_monitor = HostMemoryMonitor()
        if self._budget is not None:
            checks.budget_fits(
                budget,
                self._budget,
                device_capacity,
                self._host_monitor if self._budget_counts_host_memory else None,
                self.resolved_device,
            )
        # Known once: the CPU without host or budget figures has nothing to read at a step,
        # and, with no cache to clear and usage always 0, nothing to do at one (unless a
        # subclass does something of its own there).
        self._measures_nothing = (
            not self._backend.reports_memory and self._host_monitor is None and self._budget is None
        )
        self._steps_do_nothing = (
            self._measures_nothing
            and not self._backend.caches_memory
            and not type(self).overrides_cleanup
        )
        self._nothing_done = CleanupOutcome(0, 0, 0.0, self._no_figures)

    def __repr__(self) -> str:
        extras = ""
        if isinstance(self._host_monitor, ContainerMemoryMonitor):
            extras += f", host={CONTAINER!r}"
        elif self._host_monitor is not None:
            extras += ", host=True"
        if self._budget is not None:
            extras += f", budget={self._budget}"
        return (
            f"MemoryManager(device={str(self._backend.device)!r}, "
            f"memory_threshold={self._memory_threshold}{extras})"
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
    def budget(self) -> int | None:
        """The byte budget usage is also measured against, or ``None``."""
        return self._budget

    @property
    def host_monitor(self) -> HostMemoryMonitor | None:
        """What watches the host's memory, with its ``limit``; ``None`` when not watched."""
        return self._host_monitor

    @property
    def stats(self) -> ManagerStats:
        """Cache clears, GC runs and seconds spent in GC since the manager was made."""
        ledger = self._ledger
        with ledger.lock:
            return ManagerStats(ledger.cache_clears, ledger.gc_runs, ledger.gc_seconds)

    def clear_cache(self) -> None:
        """Return memory that torch caches but no tensor uses to the device.

        ``torch.cuda.empty_cache()`` on CUDA (it releases the cached blocks of every device
        this process has initialised), ``torch.mps.empty_cache()`` on MPS, the
        ``torch.accelerator`` equivalent elsewhere, nothing on the CPU.
        """
        backend = self._backend
        backend.empty_cache()
        if backend.caches_memory:  # the CPU has none: a call there is nothing, counted nowhere
            with self._ledger.lock:
                self._ledger.cache_clears += 1

    def clean_up(self, cache_policy: CachePolicy = CLEAR_ALWAYS) -> CleanupOutcome:
        """One cleanup step: ``clear_cache()`` if ``cache_policy`` says so, then
        ``trigger_gc_if_needed()``; returns what it did, counted exactly.

        This is the template every memscope cleanup goes through. One reading of the device
        serves the policy and the default threshold check; it is taken again only after a
        cache clear changed the figures. A subclass that overrides :meth:`clear_cache` or
        :meth:`trigger_gc_if_needed` (the Cobra MemoryManager API) has its methods called.
        """
        if self._steps_do_nothing:
            return self._nothing_done
        has_cache = self._backend.caches_memory
        # A device without a cache (the CPU) gives the policy nothing to judge by: it is asked
        # without a reading, and a clear there frees nothing, so the reading taken for the
        # threshold check is not taken twice.
        measured = self._measure() if has_cache and cache_policy.needs_snapshot else None
        cleared = cache_policy(
            None if measured is None else self._snapshot_of(measured), self._memory_threshold
        )
        if cleared:
            self.clear_cache()
        step = _Step(None if cleared and has_cache else measured)
        token = _current_step.set(step)
        started = time.perf_counter()
        try:
            collected = bool(self.trigger_gc_if_needed())
        finally:
            _current_step.reset(token)
        if collected:
            return CleanupOutcome(has_cache * (int(cleared) + 1), 1, time.perf_counter() - started)
        after = step.measured
        return CleanupOutcome(
            has_cache * int(cleared), 0, 0.0, None if after is None else self._snapshot_of(after)
        )

    def check_memory_usage(self) -> float:
        """Memory pressure on the device: the fraction its next allocation cannot have.

        On CUDA this is ``(total - free - (reserved - allocated)) / total``: memory other
        processes hold counts as used, blocks torch caches but no tensor uses count as free.
        On MPS it is the Metal driver's allocation over Metal's recommended working set.
        The CPU reports 0.0. With host monitoring, the host's usage (resident memory over
        the effective limit) counts too; with a budget, the footprint over the budget does;
        the largest figure wins. The result is clamped to [0, 1]. A failing query logs a
        warning and counts as 0.0: monitoring never raises.
        """
        return self._measure().usage

    def trigger_gc_if_needed(self) -> bool:
        """Collect garbage and clear the cache when usage is at or above the threshold.

        With a :class:`GCBackoff`, a collection that would most likely free nothing is
        skipped. Returns whether it collected.
        """
        step = _current_step.get()
        if step is None:
            return self._collect_if_above_threshold(self.check_memory_usage())
        if step.measured is None:
            step.measured = self._measure()
        return self._collect_if_above_threshold(step.measured.usage)

    def _collect_if_above_threshold(self, usage: float) -> bool:
        """:meth:`trigger_gc_if_needed` for a ``usage`` already measured (a cleanup step
        reads the device once for its cache policy and this check)."""
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
        with self._ledger.lock:
            self._ledger.gc_runs += 1
            self._ledger.gc_seconds += elapsed
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
        """The device's memory figures now; fields the device cannot tell are ``None``.

        The host figures are set when the host is monitored, the budget figures when there
        is a budget.
        """
        return self._snapshot_of(self._measure())

    def _snapshot_of(self, measurement: _Measurement) -> MemorySnapshot:
        if measurement is _NOTHING_MEASURED:
            return self._no_figures  # the same at every step: built once
        reading = measurement.reading
        resident = measurement.host_resident
        host_limit = host_usage = None
        if self._host_monitor is not None:
            host_limit = self._host_monitor.limit.size
            if resident is not None:
                host_usage = self._host_monitor.usage(resident)
        # Positional: a snapshot is taken on every cleanup step.
        return MemorySnapshot(
            self._device_name,
            measurement.usage,
            reading.allocated,
            reading.reserved,
            reading.free,
            reading.total,
            reading.used,
            reading.peak_allocated,
            reading.peak_reserved,
            reading.inactive_split,
            reading.alloc_retries,
            reading.allocator_ooms,
            self._budget,
            measurement.budget_used,
            resident,
            host_limit,
            host_usage,
        )

    def max_batch_size(self, image_size: tuple[int, int]) -> int:
        """How many images of ``image_size`` fit in the memory available now.

        Available memory is the smallest of what is left: of the device's capacity less what
        is used (cached-but-free blocks count as available); with host monitoring, of the
        host's limit less the resident memory; with a budget, of the budget less what the
        batch cannot reuse (torch's allocated memory on a device that reports it, as cached
        blocks are reused; the resident memory on the CPU). Raises
        :class:`~memscope.MemoryFiguresUnavailableError` where none of these is known, as on
        the CPU without ``host=True`` or a budget.
        """
        per_image = self.estimate_memory_required(image_size)
        available = available_bytes(self.snapshot())  # the rule the size search uses too
        if available is None:
            raise MemoryFiguresUnavailableError(
                f"max_batch_size needs the free memory of {self.resolved_device}, "
                "which does not report it; pass host=True or a budget to measure host memory"
            )
        return available // per_image

    def reset_peak_memory_stats(self) -> None:
        """Start the device's peak figures afresh; a no-op where the device keeps none."""
        try:
            self._backend.reset_peak_memory_stats()
        except Exception as error:
            self._report_query_failure("reset peak memory statistics", error)

    def _measure(self) -> _Measurement:
        if self._measures_nothing:
            return _NOTHING_MEASURED
        reading = self._read_memory()
        usages = [_fraction(reading.used, reading.total)]
        host_resident = None
        if self._host_monitor is not None:
            host_resident = self._read_host_resident(self._host_monitor)
            usages.append(_fraction(host_resident, self._host_monitor.limit.size))
        budget_used = None
        if self._budget is not None:
            budget_used = host_resident if self._budget_counts_host_memory else reading.reserved
            usages.append(_fraction(budget_used, self._budget))
        return _Measurement(reading, max(usages), host_resident, budget_used)

    def _read_memory(self) -> MemoryReading:
        try:
            reading = self._backend.read_memory()
        except Exception as error:
            self._report_query_failure("read memory figures", error)
            return MemoryReading()
        self._failing_queries.discard("read memory figures")
        return reading

    def _read_host_resident(self, monitor: HostMemoryMonitor) -> int | None:
        action = "read the host's resident memory"
        try:
            resident = monitor.resident_bytes()
        except Exception as error:
            self._report_query_failure(action, error)
            return None
        self._failing_queries.discard(action)
        return resident

    def _report_query_failure(self, action: str, error: Exception) -> None:
        # One warning when a query starts failing, not one per call of a hot loop.
        level = logging.DEBUG if action in self._failing_queries else logging.WARNING
        self._failing_queries.add(action)
        logger.log(level, "could not %s of %s: %r", action, self.resolved_device, error)

    def _probe_device_for_budget(self) -> tuple[int | None, bool]:
        """The device's capacity, and whether the budget must count host memory instead.

        A device that answers but reports no figures of its own (the CPU) keeps its tensors
        in host memory, so its footprint is the process's resident memory.
        """
        try:
            reading = self._backend.read_memory()
        except Exception as error:
            self._report_query_failure("read the capacity to check the budget", error)
            return None, False
        reports_nothing = reading.total is None and reading.reserved is None
        return reading.total, reports_nothing


def _fraction(part: int | None, whole: int | None) -> float:
    if part is None or not whole:
        return 0.0
    return min(max(part / whole, 0.0), 1.0)
