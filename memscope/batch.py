"""``managed_batch()``: keep memory in check around a whole batch loop."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Sized
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from memscope import _context as context
from memscope import _heap as heap
from memscope._cleanup import CleanupOutcome, run_cleanup_safely
from memscope._counter import AtomicCounter
from memscope._devices import as_torch_device
from memscope._validation import check_fraction, check_int
from memscope.exceptions import BatchStateError, InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom._detection import is_oom_error
from memscope.oom._diagnosis import add_oom_note
from memscope.oom._history import MemoryHistoryRecorder
from memscope.policies import ClearAlways, GCBackoff, check_cache_policy
from memscope.reports import BatchReport, TimelineEntry, with_process_rank
from memscope.typing import CachePolicy, DeviceLike
from memscope.units import parse_bytes

__all__ = ["ManagedBatch", "current_batch", "managed_batch"]

logger = logging.getLogger("memscope")

Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_HISTORY_FOLDER = "memscope-memory-history"

PROGRESS_MISSING = (
    "progress=True needs tqdm, which is not installed: pip install 'memscope[progress]'"
)


def _load_tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(PROGRESS_MISSING) from None
    return tqdm


_batch_serials = itertools.count()


def _first_sighting(error: BaseException, batch_serial: int) -> bool:
    """Whether this batch meets ``error`` for the first time.

    An error can pass through several memscope layers (a decorator's retries, then the
    batch's exit); it is counted once. Exceptions take no weak references, and keeping a
    strong one would keep the failed call's memory alive, so the mark goes on the error.
    """
    seen: set[int] = getattr(error, "_memscope_counted_by", set())
    if batch_serial in seen:
        return False
    # An exception type without a __dict__ cannot be marked; it may then count twice.
    with contextlib.suppress(AttributeError):
        error._memscope_counted_by = seen | {batch_serial}  # type: ignore[attr-defined]
    return True


def _larger(current: int | None, candidate: int | None) -> int | None:
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


class ManagedBatch:
    """Keep memory in check around a batch loop; ``managed_batch`` is this class.

    It is a sync and an async context manager. Inside it, ``track()`` and ``step()`` count
    items and clean up every ``every`` items, and functions decorated with ``@auto_clear``
    clean up through the batch's manager and count into its report. On exit, whatever the
    cause, it runs a final cleanup and leaves its :class:`BatchReport` in ``report``.

    Entering and leaving happen in one thread; ``step()``, ``track()`` and decorated
    functions may be used from many (see :meth:`bind`), with exact counts.

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
        freeze_heap: freeze the objects that exist when the batch starts (``gc.freeze()``),
            so each collection inside the batch traverses only what the batch created; the
            heap is unfrozen when the last batch ends, whatever the cause.
        cache_policy: when a cleanup empties the cache: :class:`ClearAlways` (the default)
            or :class:`ClearWhenUseful`.
        host: watch this process's resident memory too (see :class:`MemoryManager`).
        budget: measure usage against this many bytes (an int or ``"6GiB"``); on the CPU
            this watches the host's memory. ``host`` and ``budget`` configure the manager
            the batch makes, so they cannot be combined with ``manager``.
        record_history: on CUDA, record the allocation history during the batch and, when
            an out-of-memory error leaves it, write a snapshot file into ``history_folder``
            (it opens in https://pytorch.org/memory_viz), named in the error's note.
        history_folder: where snapshot files go; created when the first one is written.
        timeline: record one memory reading per item into ``report.timeline`` (for
            ``report.to_csv`` and ``report.plot``); off by default, as it costs a device
            query per item.
    """

    def __init__(
        self,
        device: DeviceLike = None,
        *,
        memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
        manager: MemoryManager | None = None,
        every: int = 1,
        progress: bool = False,
        freeze_heap: bool = True,
        cache_policy: CachePolicy | None = None,
        host: bool = False,
        budget: int | str | None = None,
        record_history: bool = False,
        history_folder: str | PathLike[str] = DEFAULT_HISTORY_FOLDER,
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
        if manager is not None and (host or budget is not None):
            raise InvalidArgumentError(
                "host and budget configure the manager managed_batch makes; with manager=, "
                f"pass them to your MemoryManager instead (got host={host!r}, budget={budget!r})"
            )
        if not isinstance(host, bool):
            raise InvalidArgumentTypeError(f"host must be a bool, got {host!r}")
        if budget is not None:
            parse_bytes(budget, "budget")
        if not isinstance(record_history, bool):
            raise InvalidArgumentTypeError(f"record_history must be a bool, got {record_history!r}")
        if not isinstance(history_folder, (str, PathLike)):
            raise InvalidArgumentTypeError(
                f"history_folder must be a str or a path, got {history_folder!r}"
            )
        if not isinstance(freeze_heap, bool):
            raise InvalidArgumentTypeError(f"freeze_heap must be a bool, got {freeze_heap!r}")
        if not isinstance(timeline, bool):
            raise InvalidArgumentTypeError(f"timeline must be a bool, got {timeline!r}")
        self._device = device
        self._memory_threshold = check_fraction(memory_threshold, "memory_threshold")
        self._explicit_manager = manager
        self._host = host
        self._budget = budget
        self.record_history = record_history
        self.history_folder = Path(history_folder)
        self._recorder: MemoryHistoryRecorder | None = None
        self.every = check_int(every, "every", minimum=1)
        self._tqdm = _load_tqdm() if progress else None
        self.freeze_heap = freeze_heap
        self.cache_policy = (
            ClearAlways() if cache_policy is None else check_cache_policy(cache_policy)
        )
        self._records_timeline = timeline

        self._serial = next(_batch_serials)
        self._lock = threading.Lock()
        self._tokens: list[contextvars.Token[context.ActiveBatch | None]] = []
        self._manager: MemoryManager | None = None
        self._parent: ManagedBatch | None = None
        self._report: BatchReport | None = None
        self._open_tracks: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()
        self._reset_counters()

    def _reset_counters(self) -> None:
        # Items and calls are counted on hot paths, so without a lock; the rest are rare.
        self._items = AtomicCounter()
        self._calls = AtomicCounter()
        self._failures = 0
        self._cleanup_failures = 0
        self._cache_clears = 0
        self._gc_runs = 0
        self._gc_seconds = 0.0
        self._peak_allocated: int | None = None
        self._peak_reserved: int | None = None
        self._ooms = 0
        self._oom_retries = 0
        self._batch_size_reductions = 0
        self._usage_start = 0.0
        self._host_resident_start: int | None = None
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
        return self._items.value

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
            self._finish(exc_type, exc)

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
        if self.freeze_heap:
            heap.hold_frozen_heap()
        parent = current_batch()
        self._parent = parent
        self._manager = self._resolve_manager(parent)
        self._report = None
        self._reset_counters()
        start = self._manager.snapshot()
        if parent is not None and parent.manager.resolved_device == self._manager.resolved_device:
            # Resetting the device's peak erases what the outer batch has seen so far.
            parent._observe_peak(start.peak_allocated, start.peak_reserved)
        self._manager.reset_peak_memory_stats()
        if self.record_history:
            self._recorder = MemoryHistoryRecorder(
                self._manager.resolved_device, self.history_folder, manager=self._manager
            )
            self._recorder.start()
        self._usage_start = start.usage
        self._host_resident_start = start.host_resident
        self._started = time.perf_counter()

    def _resolve_manager(self, parent: ManagedBatch | None) -> MemoryManager:
        if self._explicit_manager is not None:
            return self._explicit_manager
        if (
            parent is not None
            and not self._host
            and self._budget is None
            and parent.manager.memory_threshold == self._memory_threshold
            and (self._device is None or as_torch_device(self._device) == parent.manager.device)
        ):
            return parent.manager
        return MemoryManager(
            self._device,
            self._memory_threshold,
            # Resident memory rarely falls after a collection (the C allocator keeps freed
            # pages), so with host figures "freed nothing" cannot be judged: no backoff.
            gc_backoff=None if self._host or self._budget is not None else GCBackoff(),
            host=self._host,
            budget=self._budget,
        )

    def _finish(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        try:
            if exc is not None and is_oom_error(exc):
                self._diagnose_escaping_oom(exc)
            self._finish_report(exc_type)
        finally:
            if self._recorder is not None:
                self._recorder.stop()
            if self.freeze_heap:
                heap.release_frozen_heap()

    def _diagnose_escaping_oom(self, error: BaseException) -> None:
        # Runs before the final cleanup, so the note shows the figures of the failure.
        self._record_oom(error, retried=False)
        snapshot_path = None
        if self._recorder is not None:
            snapshot_path = self._recorder.dump()
        add_oom_note(error, self.manager, snapshot_path=snapshot_path)

    def _finish_report(self, exc_type: type[BaseException] | None) -> None:
        manager = self.manager
        for generator in list(self._open_tracks):
            try:
                generator.close()
            except Exception:
                logger.debug("could not close an abandoned track() generator", exc_info=True)
        self._record_cleanup(run_cleanup_safely(manager, "the batch", self.cache_policy))
        end = manager.snapshot()
        self._observe_peak(end.peak_allocated, end.peak_reserved)
        with self._lock:
            self._report = BatchReport(
                device=str(manager.resolved_device),
                items=self._items.value,
                calls=self._calls.value,
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
                host_resident_start=self._host_resident_start,
                host_resident_end=end.host_resident,
                host_limit=end.host_limit,
                budget=end.budget,
                ooms=self._ooms,
                oom_retries=self._oom_retries,
                batch_size_reductions=self._batch_size_reductions,
                memory_snapshots=tuple(
                    str(path) for path in (self._recorder.snapshot_paths if self._recorder else ())
                ),
                memory_threshold=manager.memory_threshold,
                timeline=tuple(self._timeline),
            )
            self._report = with_process_rank(self._report)
        parent = self._parent
        if (
            parent is not None
            and parent.active
            and parent.manager.resolved_device == (manager.resolved_device)
        ):
            parent._observe_peak(self._peak_allocated, self._peak_reserved)
        logger.info("batch finished: %s", self._report.summary())

    # Counting --------------------------------------------------------------------------

    def _require_active(self, action: str) -> None:
        if not self._tokens:
            raise BatchStateError(f"{action} needs the batch to be entered (use it in `with`)")

    def step(self) -> None:
        """Count one finished item, and clean up if it completes a run of ``every``."""
        self._require_active("batch.step()")
        item = self._items.increment()
        if item % self.every == 0:
            outcome = run_cleanup_safely(self.manager, f"batch item {item}", self.cache_policy)
            self._record_cleanup(outcome)
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

    def _record_call(self, *, failed: bool) -> None:
        """Count a call of an ``@auto_clear`` function made inside this batch."""
        self._calls.increment()
        if failed:
            with self._lock:
                self._failures += 1

    def _record_items(self, count: int) -> None:
        """Count ``count`` items that chunked work finished in this batch."""
        for _ in range(count):
            self.step()

    def _record_oom(
        self, error: BaseException, *, retried: bool, batch_size_reduced: bool = False
    ) -> None:
        """Count an out-of-memory error met inside this batch, and what was done about it."""
        with self._lock:
            if _first_sighting(error, self._serial):
                self._ooms += 1
            self._oom_retries += int(retried)
            self._batch_size_reductions += int(batch_size_reduced)

    def _record_cleanup(self, outcome: CleanupOutcome | None) -> None:
        """Count a cleanup made through this batch's manager; ``None`` means it failed."""
        with self._lock:
            if outcome is None:
                self._cleanup_failures += 1
                return
            self._cache_clears += outcome.cache_clears
            self._gc_runs += outcome.gc_runs
            self._gc_seconds += outcome.gc_seconds

    def _observe_peak(self, allocated: int | None, reserved: int | None) -> None:
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


def current_batch() -> ManagedBatch | None:
    """The innermost ``managed_batch`` active in this context, if any."""
    batch = context.active_batch.get()
    return batch if isinstance(batch, ManagedBatch) else None


# contextlib's style: a lowercase name for the context manager people call, the class for
# isinstance checks and type hints. One signature, so the two can never drift apart.
managed_batch = ManagedBatch
