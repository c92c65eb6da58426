"""``managed_batch()``: keep memory in check around a whole batch loop."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sized
from types import TracebackType
from typing import Any, TypeVar

from memscope import context
from memscope._validation import check_fraction, check_int
from memscope.cleanup import CleanupOutcome, run_cleanup_safely
from memscope.devices import DeviceLike, as_torch_device
from memscope.exceptions import BatchStateError, InvalidArgumentTypeError
from memscope.manager import MemoryManager
from memscope.report import BatchReport
from memscope.timeline import TimelineEntry

__all__ = ["ManagedBatch", "managed_batch"]

logger = logging.getLogger("memscope")

Item = TypeVar("Item")
Result = TypeVar("Result")

PROGRESS_MISSING = (
    "progress=True needs tqdm, which is not installed: pip install 'memscope[progress]'"
)


def _load_tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(PROGRESS_MISSING) from None
    return tqdm


def _larger(current: int | None, candidate: int | None) -> int | None:
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


class ManagedBatch:
    """A batch loop under memory management; made by :func:`managed_batch`.

    It is a sync and an async context manager. Inside it, ``track()`` and ``step()`` count
    items and clean up every ``every`` items, and functions decorated with ``@auto_clear``
    clean up through the batch's manager and count into its report. On exit, whatever the
    cause, it runs a final cleanup and leaves its :class:`BatchReport` in ``report``.

    Entering and leaving happen in one thread; ``step()``, ``track()`` and decorated
    functions may be used from many (see :meth:`bind`), with exact counts.
    """

    def __init__(
        self,
        device: DeviceLike = None,
        *,
        memory_threshold: float = 0.8,
        manager: MemoryManager | None = None,
        every: int = 1,
        progress: bool = False,
        timeline: bool = False,
    ) -> None:
        if device is not None:
            as_torch_device(device)
        if manager is not None and not isinstance(manager, MemoryManager):
            raise InvalidArgumentTypeError(
                f"manager must be a MemoryManager or None, got {manager!r}"
            )
        if not isinstance(progress, bool):
            raise InvalidArgumentTypeError(f"progress must be a bool, got {progress!r}")
        if not isinstance(timeline, bool):
            raise InvalidArgumentTypeError(f"timeline must be a bool, got {timeline!r}")
        self._device = device
        self._memory_threshold = check_fraction(memory_threshold, "memory_threshold")
        self._explicit_manager = manager
        self.every = check_int(every, "every", minimum=1)
        self._tqdm = _load_tqdm() if progress else None
        self._records_timeline = timeline

        self._lock = threading.Lock()
        self._tokens: list[contextvars.Token[ManagedBatch | None]] = []
        self._manager: MemoryManager | None = None
        self._parent: ManagedBatch | None = None
        self._report: BatchReport | None = None
        self._open_tracks: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._items = 0
        self._calls = 0
        self._failures = 0
        self._cleanup_failures = 0
        self._cache_clears = 0
        self._gc_runs = 0
        self._gc_seconds = 0.0
        self._peak_allocated: int | None = None
        self._peak_reserved: int | None = None
        self._usage_start = 0.0
        self._started = 0.0
        self._timeline: list[TimelineEntry] = []
        self._gc_runs_at_last_entry = 0

    # Public state ----------------------------------------------------------------------

    @property
    def manager(self) -> MemoryManager:
        """The MemoryManager in use, set when the batch is entered."""
        if self._manager is None:
            raise BatchStateError("batch.manager is set when the batch is entered")
        return self._manager

    @property
    def report(self) -> BatchReport:
        """The batch's report, available once the batch has ended."""
        if self._report is None:
            raise BatchStateError("batch.report is available once the batch has ended")
        return self._report

    @property
    def active(self) -> bool:
        """Whether the batch has been entered and not yet left."""
        return bool(self._tokens)

    @property
    def items(self) -> int:
        """Items completed so far."""
        return self._items

    # Entering and leaving --------------------------------------------------------------

    def __enter__(self) -> ManagedBatch:
        if not self._tokens:
            self._start()
        self._tokens.append(context.active_batch.set(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        context.active_batch.reset(self._tokens.pop())
        if not self._tokens:
            self._finish(exc_type)

    async def __aenter__(self) -> ManagedBatch:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def _start(self) -> None:
        parent = context.active_batch.get()
        self._parent = parent
        self._manager = self._resolve_manager(parent)
        self._report = None
        self._reset_counters()
        start = self._manager.snapshot()
        if parent is not None and parent.manager.resolved_device == self._manager.resolved_device:
            # Resetting the device's peak erases what the outer batch has seen so far.
            parent.observe_peak(start.peak_allocated, start.peak_reserved)
        self._manager.reset_peak_memory_stats()
        self._usage_start = start.usage
        self._started = time.perf_counter()

    def _resolve_manager(self, parent: ManagedBatch | None) -> MemoryManager:
        if self._explicit_manager is not None:
            return self._explicit_manager
        if (
            parent is not None
            and parent.manager.memory_threshold == self._memory_threshold
            and (self._device is None or as_torch_device(self._device) == parent.manager.device)
        ):
            return parent.manager
        return MemoryManager(self._device, self._memory_threshold)

    def _finish(self, exc_type: type[BaseException] | None) -> None:
        manager = self.manager
        for generator in list(self._open_tracks):
            try:
                generator.close()
            except Exception:
                logger.debug("could not close an abandoned track() generator", exc_info=True)
        self.record_cleanup(run_cleanup_safely(manager, "the batch"))
        end = manager.snapshot()
        self.observe_peak(end.peak_allocated, end.peak_reserved)
        with self._lock:
            self._report = BatchReport(
                device=str(manager.resolved_device),
                items=self._items,
                calls=self._calls,
                failures=self._failures,
                cleanup_failures=self._cleanup_failures,
                elapsed_seconds=time.perf_counter() - self._started,
                usage_start=self._usage_start,
                usage_end=end.usage,
                peak_allocated=self._peak_allocated,
                peak_reserved=self._peak_reserved,
                cache_clears=self._cache_clears,
                gc_runs=self._gc_runs,
                gc_seconds=self._gc_seconds,
                ended_by=None if exc_type is None else exc_type.__name__,
                memory_threshold=manager.memory_threshold,
                timeline=tuple(self._timeline),
            )
        parent = self._parent
        if (
            parent is not None
            and parent.active
            and parent.manager.resolved_device == (manager.resolved_device)
        ):
            parent.observe_peak(self._peak_allocated, self._peak_reserved)
        logger.info("batch finished: %s", self._report.summary())

    # Counting --------------------------------------------------------------------------

    def _require_active(self, action: str) -> None:
        if not self._tokens:
            raise BatchStateError(f"{action} needs the batch to be entered (use it in `with`)")

    def step(self) -> None:
        """Count one finished item, and clean up if it completes a run of ``every``."""
        self._require_active("batch.step()")
        with self._lock:
            self._items += 1
            item = self._items
        if item % self.every == 0:
            self.record_cleanup(run_cleanup_safely(self.manager, f"batch item {item}"))
        if self._records_timeline:
            self._record_timeline(item)

    def _record_timeline(self, item: int) -> None:
        snapshot = self.manager.snapshot()
        seconds = time.perf_counter() - self._started
        with self._lock:
            self._timeline.append(
                TimelineEntry(
                    item=item,
                    seconds=seconds,
                    usage=snapshot.usage,
                    allocated=snapshot.allocated,
                    reserved=snapshot.reserved,
                    gc_ran=self._gc_runs > self._gc_runs_at_last_entry,
                )
            )
            self._gc_runs_at_last_entry = self._gc_runs

    def track(self, iterable: Iterable[Item]) -> Generator[Item, None, None]:
        """Yield the items of ``iterable``, counting each once its loop body is done.

        With ``progress=True`` a tqdm bar shows items/s and the device's memory usage;
        its total comes from ``len(iterable)`` where there is one.
        """
        self._require_active("batch.track()")
        total = len(iterable) if isinstance(iterable, Sized) else None
        generator = self._track(iterable, total)
        self._open_tracks.add(generator)
        return generator

    def _track(self, iterable: Iterable[Item], total: int | None) -> Generator[Item, None, None]:
        bar = None
        if self._tqdm is not None:
            bar = self._tqdm(total=total, unit="item", desc=str(self.manager.resolved_device))
        try:
            for item in iterable:
                yield item
                # Reached only when the loop asks for the next item: the body is done.
                self.step()
                if bar is not None:
                    bar.set_postfix_str(
                        f"memory {self.manager.check_memory_usage():.0%}", refresh=False
                    )
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def record_call(self, *, failed: bool) -> None:
        """Count a call of an ``@auto_clear`` function made inside this batch."""
        with self._lock:
            self._calls += 1
            self._failures += int(failed)

    def record_cleanup(self, outcome: CleanupOutcome | None) -> None:
        """Count a cleanup made through this batch's manager; ``None`` means it failed."""
        with self._lock:
            if outcome is None:
                self._cleanup_failures += 1
                return
            self._cache_clears += outcome.cache_clears
            self._gc_runs += int(outcome.collected)
            self._gc_seconds += outcome.gc_seconds

    def observe_peak(self, allocated: int | None, reserved: int | None) -> None:
        """Fold peak figures seen elsewhere (a nested batch, say) into this batch's peaks."""
        with self._lock:
            self._peak_allocated = _larger(self._peak_allocated, allocated)
            self._peak_reserved = _larger(self._peak_reserved, reserved)

    # Threads ---------------------------------------------------------------------------

    def bind(self, function: Callable[..., Result]) -> Callable[..., Result]:
        """``function``, made to run with this batch active in whatever thread calls it.

        New threads do not inherit the caller's context, so a function handed to a thread
        pool would not see the batch: ``pool.map(batch.bind(colorize), images)`` makes its
        ``@auto_clear`` calls count into this batch.
        """

        @functools.wraps(function)
        def run_in_batch(*args: Any, **kwargs: Any) -> Result:
            token = context.active_batch.set(self)
            try:
                return function(*args, **kwargs)
            finally:
                context.active_batch.reset(token)

        return run_in_batch


def managed_batch(
    device: DeviceLike = None,
    *,
    memory_threshold: float = 0.8,
    manager: MemoryManager | None = None,
    every: int = 1,
    progress: bool = False,
    timeline: bool = False,
) -> ManagedBatch:
    """Keep memory in check around a batch loop.

    ::

        with managed_batch("cuda", every=5) as batch:
            for image in batch.track(images):
                colorize(image)
        print(batch.report)

    Args:
        device: the device, as for :class:`MemoryManager`; ``None`` auto-detects (inside
            another batch: that batch's device).
        memory_threshold: the GC threshold of the manager the batch makes.
        manager: use this manager instead of making one. Without it, a batch nested in
            another with the same device and threshold shares the outer batch's manager.
        every: clean up (clear the cache, threshold GC) after every this many items.
        progress: show a tqdm progress bar in ``track()`` (``pip install
            'memscope[progress]'``).
        timeline: record the device's memory as each item finishes, for
            ``report.timeline``, ``report.to_csv()`` and ``report.plot()``. One memory
            snapshot per item: negligible next to an image, but several times the cost of
            an empty ``step()``, hence off by default.
    """
    return ManagedBatch(
        device,
        memory_threshold=memory_threshold,
        manager=manager,
        every=every,
        progress=progress,
        timeline=timeline,
    )
