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
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from memscope import _context as context
from memscope import _heap as heap
from memscope import journal as journals
from memscope._cleanup import CleanupOutcome, run_cleanup_safely
from memscope._context_manager import SyncAndAsyncContextManager
from memscope._devices import as_torch_device
from memscope._validation import check_fraction, check_int
from memscope.exceptions import (
    BatchStateError,
    HostMemoryUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope.host import HostMemoryMonitor
from memscope.journal import Journal, JournalSummary, Key
from memscope.leaks import LeakWatch
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom._detection import is_oom_error, recover_from_oom
from memscope.oom._diagnosis import add_oom_note
from memscope.oom._history import MemoryHistoryRecorder
from memscope.policies import DEFAULT_CACHE_POLICY, GCBackoff, check_cache_policy
from memscope.reports import BatchReport, ItemFailure, TimelineEntry, with_process_rank
from memscope.snapshot import MemorySnapshot
from memscope.typing import CachePolicy, DeviceLike
from memscope.units import format_bytes, parse_bytes

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

    An error can pass through several memscope layers (a decorator's retries, an adaptive
    function that gives up and raises ``BatchSizeExhaustedError`` from it, then the batch's
    exit); it is counted once. An error whose cause or context chain holds one already seen
    is the same failure. Exceptions take no weak references, and keeping a strong one would
    keep the failed call's memory alive, so the mark goes on the errors themselves.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 64 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    seen_before = any(batch_serial in getattr(link, "_memscope_counted_by", ()) for link in chain)
    marks: frozenset[int] = getattr(error, "_memscope_counted_by", frozenset())
    # An exception type without a __dict__ cannot be marked; it may then count twice.
    with contextlib.suppress(AttributeError):
        error._memscope_counted_by = marks | {batch_serial}  # type: ignore[attr-defined]
    return not seen_before


def _larger(current: int | None, candidate: int | None) -> int | None:
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


class ManagedBatch(SyncAndAsyncContextManager):
    """Keep memory in check around a batch loop; ``managed_batch`` is this class.

    It is a sync and an async context manager, and while it is active it is the one owner of
    cleanup and the one record of what happened. ``track()`` and ``step()`` count items and
    clean up every ``every`` items. ``@auto_clear``, ``@adaptive_batch``, ``process_in_chunks``
    and OOM retries inside it report to it and run no cadence of their own: a decorated call
    made outside a tracked item counts as one item, a chunk of n items as n, and calls or
    chunks inside a tracked item add nothing (the tracked item is the unit). On exit, whatever
    the cause, it runs a final cleanup and leaves its :class:`BatchReport` in ``report``, whose
    ``cache_clears`` and ``gc_runs`` count every clear and collection memscope made during the
    batch, whatever the cause.

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
        every: clean up (the cache policy's clear, then the threshold GC) after every this
            many items. ``None`` is count-only mode: the batch counts and reports, and never
            cleans up (OOM recovery that a retry needs still runs).
        progress: show a tqdm progress bar of items (``pip install 'memscope[progress]'``).
        freeze_heap: freeze the objects that exist when the batch starts (``gc.freeze()``),
            so each collection inside the batch traverses only what the batch created; the
            heap is unfrozen when the last batch ends, whatever the cause.
        cache_policy: when a cleanup empties the cache: :class:`ClearWhenUseful` (the
            default: only when the cache holds a share of the device that no tensor uses, or
            usage is at the threshold) or :class:`ClearAlways`.
        host: watch this process's resident memory too (see :class:`MemoryManager`). On the
            CPU the batch reports host memory anyway, when it can read it.
        budget: measure usage against this many bytes (an int or ``"6GiB"``); on the CPU
            this watches the host's memory. ``host`` and ``budget`` configure the manager
            the batch makes, so they cannot be combined with ``manager``.
        record_history: on CUDA, record the allocation history during the batch and, when
            an out-of-memory error leaves it, write a snapshot file into ``history_folder``
            (it opens in https://pytorch.org/memory_viz), named in the error's note.
        history_folder: where snapshot files go; created when the first one is written.
        timeline: record one memory reading per item (per chunk for chunked work) into
            ``report.timeline`` (for ``report.to_csv`` and ``report.plot``); off by default,
            as it costs a device query per item.
        journal: a file (JSON lines) that records each finished and failed item's key
            durably, so that rerunning the same code with the same journal skips the items
            it names (see :mod:`memscope.journal`: nothing is lost, the item in flight at a
            crash may run twice). Items need keys: ``track()`` and ``map()`` take ``key=``.
        journal_job: a name for the job, kept in the journal's header; a journal written
            under another name is refused rather than mixed.
        journal_sync_every: ``os.fsync`` the journal every this many items (1: every item,
            the safest; more: faster, and up to that many finished items may run again after
            a power loss or kernel crash).
        retry_failed: on a rerun, process again the items the journal records as failed
            (by default they are skipped like finished ones, and their failures carried
            into the report).
    """

    def __init__(
        self,
        device: DeviceLike = None,
        *,
        memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
        manager: MemoryManager | None = None,
        every: int | None = 1,
        progress: bool = False,
        freeze_heap: bool = True,
        cache_policy: CachePolicy | None = None,
        host: bool = False,
        budget: int | str | None = None,
        record_history: bool = False,
        history_folder: str | PathLike[str] = DEFAULT_HISTORY_FOLDER,
        timeline: bool = False,
        journal: str | PathLike[str] | None = None,
        journal_job: str | None = None,
        journal_sync_every: int = 1,
        retry_failed: bool = False,
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
        self.every = None if every is None else check_int(every, "every", minimum=1)
        self._tqdm = _load_tqdm() if progress else None
        self.freeze_heap = freeze_heap
        self.cache_policy: CachePolicy = (
            DEFAULT_CACHE_POLICY if cache_policy is None else check_cache_policy(cache_policy)
        )
        self._records_timeline = timeline
        if not isinstance(retry_failed, bool):
            raise InvalidArgumentTypeError(f"retry_failed must be a bool, got {retry_failed!r}")
        self._journal = (
            None
            if journal is None
            else Journal(journal, job=journal_job, sync_every=journal_sync_every)
        )
        self.retry_failed = retry_failed

        self._serial = next(_batch_serials)
        self._lock = threading.Lock()
        self._tokens: list[contextvars.Token[context.ActiveBatch | None]] = []
        self._manager: MemoryManager | None = None
        self._parent: ManagedBatch | None = None
        self._report: BatchReport | None = None
        self._open_tracks: weakref.WeakSet[_TrackedItems[Any]] = weakref.WeakSet()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._items = 0
        self._calls = 0
        self._failures = 0
        self._cleanups = 0
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
        self._host_monitor: HostMemoryMonitor | None = None
        self._host_resident_start: int | None = None
        self._host_resident_peak: int | None = None
        self._last_host_resident: int | None = None
        self._device_has_figures = True
        self._started = 0.0
        self._timeline: list[TimelineEntry] = []
        self._gc_runs_at_last_entry = 0
        self._bar: Any = None
        self._skipped = 0
        self._failed_items: list[ItemFailure] = []
        self._finished_keys: set[Key] = set()
        self._carried_failures: dict[Key, ItemFailure] = {}
        self._carried_items = 0
        self._carried_seconds = 0.0
        self._leak_watch: LeakWatch | None = None

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
        if not self._tokens:
            raise BatchStateError("batch.__exit__ was called without a matching __enter__")
        self._leave_context(self._tokens.pop())
        if not self._tokens:
            self._finish(exc_type, exc)

    def _leave_context(self, token: contextvars.Token[context.ActiveBatch | None]) -> None:
        try:
            context.active_batch.reset(token)
        except ValueError:
            # Left from another context than the one it was entered in: an async generator
            # whose set-up and tear-down run in different tasks, an ExitStack closed in
            # another thread. The token cannot be used here; where this context still sees
            # the batch, it gets the batch that was active before.
            if context.active_batch.get() is self:
                previous = token.old_value
                context.active_batch.set(None if previous is token.MISSING else previous)

    def _start(self) -> None:
        parent = current_batch()
        manager = self._resolve_manager(parent)
        self._parent = parent
        self._manager = manager
        self._report = None
        self._reset_counters()
        if self.freeze_heap:
            heap.hold_frozen_heap()
        try:
            self._begin_measuring(manager, parent)
        except BaseException:
            # Whatever was acquired is released: a batch that never started must not leave
            # the heap frozen or the allocation history recording.
            self._release()
            raise

    def _begin_measuring(self, manager: MemoryManager, parent: ManagedBatch | None) -> None:
        if self._journal is not None:
            self._resume(self._journal.open())
        start = manager.snapshot()
        self._device_has_figures = start.total is not None or start.allocated is not None
        if parent is not None and parent.manager.resolved_device == manager.resolved_device:
            # Resetting the device's peak erases what the outer batch has seen so far.
            parent._observe_peak(start.peak_allocated, start.peak_reserved)
        manager.reset_peak_memory_stats()
        if self.record_history:
            self._recorder = MemoryHistoryRecorder(
                manager.resolved_device, self.history_folder, manager=manager
            )
            self._recorder.start()
        self._host_monitor = manager.host_monitor or _host_monitor_for(manager)
        self._leak_watch = self._new_leak_watch(manager, start)
        self._usage_start = start.usage
        self._host_resident_start = self._sample_host()
        if self._tqdm is not None:
            self._bar = self._tqdm(total=None, unit="item", desc=str(manager.resolved_device))
        self._started = time.perf_counter()

    def _resume(self, previous: JournalSummary) -> None:
        """Carry what earlier runs journaled into this run: what to skip, and the figures."""
        self._finished_keys = set(previous.done)
        if not self.retry_failed:
            self._carried_failures = dict(previous.failed)
        self._carried_items = len(previous.done)
        self._carried_seconds = previous.elapsed_seconds
        if previous.runs:
            logger.info(
                "resuming from %s: %d items done, %d failed in %d earlier run(s)",
                previous.path,
                len(previous.done),
                len(previous.failed),
                previous.runs,
            )

    def _new_leak_watch(self, manager: MemoryManager, start: MemorySnapshot) -> LeakWatch | None:
        """A watch of the memory that stays after cleanups: the device's tensors, or on the
        CPU the process's resident memory; none where neither can be read."""
        if self._device_has_figures:
            return LeakWatch(
                manager.resolved_device,
                capacity=start.total,
                sampled="allocated",
                history_recorded=self.record_history,
                after_cleanup=self.every is not None,
            )
        if self._host_monitor is not None:
            return LeakWatch(
                manager.resolved_device,
                capacity=self._host_monitor.limit.size,
                sampled="resident",
                after_cleanup=self.every is not None,
            )
        return None

    def _observe_growth(self, item: int, snapshot: MemorySnapshot | None = None) -> None:
        """Give the leak watch the memory that stayed after the cleanup at ``item``."""
        watch = self._leak_watch
        if watch is None:
            return
        if self._device_has_figures:
            retained = (snapshot or self.manager.snapshot()).allocated
        else:
            retained = self._last_host_resident
        try:
            watch.observe(self._carried_items + item, retained)
        except Exception:
            # Watching is a diagnosis: it never stops the batch.
            logger.debug("the leak watch failed", exc_info=True)

    def _release(self) -> None:
        """Let go of what entering acquired: the journal, the bar, the recorder, the heap."""
        try:
            if self._journal is not None:
                self._journal.close(time.perf_counter() - self._started if self._started else 0.0)
            if self._bar is not None:
                self._bar.close()
            if self._recorder is not None:
                self._recorder.stop()
        finally:
            if self.freeze_heap:
                heap.release_frozen_heap()

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
            self._finish_report(exc_type, exc)
        finally:
            self._release()

    def _diagnose_escaping_oom(self, error: BaseException) -> None:
        # Runs before the final cleanup, so the note shows the figures of the failure.
        self._record_oom(error, retried=False)
        snapshot_path = None
        if self._recorder is not None:
            snapshot_path = self._recorder.dump()
        add_oom_note(error, self.manager, snapshot_path=snapshot_path)

    def _finish_report(
        self, exc_type: type[BaseException] | None, exc: BaseException | None
    ) -> None:
        manager = self.manager
        for tracked in list(self._open_tracks):
            tracked.end()
        interrupted: BaseException | None = None
        if self.every is not None:
            try:
                self._clean_up("the batch")
            except BaseException as error:  # KeyboardInterrupt, SystemExit: report, then raise
                interrupted = error
        self._report = self._report_now(manager, _ended_by(exc_type, interrupted))
        parent = self._parent
        if (
            parent is not None
            and parent.active
            and parent.manager.resolved_device == manager.resolved_device
        ):
            parent._observe_peak(self._peak_allocated, self._peak_reserved)
        logger.info("batch finished: %s", self._report.summary())
        if interrupted is not None:
            # The user's exception, if any, stays reachable as the interrupt's context.
            if interrupted.__context__ is None and exc not in (None, interrupted):
                interrupted.__context__ = exc
            try:
                raise interrupted
            finally:
                del interrupted

    def report_so_far(self) -> BatchReport:
        """The batch's figures up to now, while it runs: what :attr:`report` would hold if the
        batch ended now, less the final cleanup (``ended_by`` is ``None``).

        For a batch that lives as long as a worker (one per Ray actor, say), which must report
        while it runs and may be killed without ending. It reads the device's memory once.
        """
        self._require_active("batch.report_so_far()")
        return self._report_now(self.manager, None)

    def _report_now(self, manager: MemoryManager, ended_by: str | None) -> BatchReport:
        end = manager.snapshot()
        self._observe_peak(end.peak_allocated, end.peak_reserved)
        host_resident_end = self._sample_host()
        monitor = self._host_monitor
        with self._lock:
            report = BatchReport(
                device=str(manager.resolved_device),
                items=self._carried_items + self._items,
                calls=self._calls,
                failures=self._failures,
                cleanup_failures=self._cleanup_failures,
                elapsed_seconds=self._carried_seconds + time.perf_counter() - self._started,
                usage_start=self._usage_start,
                usage_end=end.usage,
                peak_allocated=self._peak_allocated,
                peak_reserved=self._peak_reserved,
                cache_clears=self._cache_clears,
                gc_runs=self._gc_runs,
                gc_seconds=self._gc_seconds,
                cleanups=self._cleanups,
                every=self.every,
                ended_by=ended_by,
                host_resident_start=self._host_resident_start,
                host_resident_end=host_resident_end,
                host_resident_peak=self._host_resident_peak,
                host_limit=None if monitor is None else monitor.limit.size,
                budget=end.budget,
                ooms=self._ooms,
                oom_retries=self._oom_retries,
                batch_size_reductions=self._batch_size_reductions,
                memory_snapshots=tuple(
                    str(path) for path in (self._recorder.snapshot_paths if self._recorder else ())
                ),
                memory_threshold=manager.memory_threshold,
                timeline=tuple(self._timeline),
                skipped=self._skipped,
                memory_growth_per_item=(
                    None if self._leak_watch is None else self._leak_watch.growth_per_item
                ),
                leak=None if self._leak_watch is None else self._leak_watch.finding,
                timeline_file=(
                    str(self._journal.path)
                    if self._journal is not None and self._records_timeline
                    else None
                ),
                failed_items=(*self._carried_failures.values(), *self._failed_items),
            )
        return with_process_rank(report)

    # Counting --------------------------------------------------------------------------

    def _require_active(self, action: str) -> None:
        if not self._tokens:
            raise BatchStateError(f"{action} needs the batch to be entered (use it in `with`)")

    def step(self) -> None:
        """Count one finished item, and clean up if it completes a run of ``every``."""
        self._require_active("batch.step()")
        self._advance(1)

    def _advance(self, count: int, calls: int = 0) -> None:
        """Count ``count`` finished items (and ``calls`` decorated calls, under the same lock);
        clean up once if the items complete a run of ``every``."""
        with self._lock:
            self._calls += calls
            before = self._items
            self._items = after = before + count
        every = self.every
        if every is not None and after // every > before // every:
            self._observe_growth(after, self._clean_up(f"batch item {after}"))
        if self._records_timeline:
            self._record_timeline(after)
        if self._bar is not None:
            self._bar.set_postfix_str(self._memory_postfix(), refresh=False)
            self._bar.update(count)

    def _clean_up(self, where: str) -> MemorySnapshot | None:
        """One cleanup step, counted; returns the device's figures after it, where the
        reading it made still holds."""
        outcome = run_cleanup_safely(self.manager, where, self.cache_policy)
        self._record_cleanup(outcome)
        # Resident memory is sampled where the batch already pays for a cleanup, so the
        # report's peak costs nothing on the per-item path.
        self._sample_host()
        return None if outcome is None else outcome.figures_after

    def _sample_host(self) -> int | None:
        """The process's resident memory now, folded into the batch's peak."""
        monitor = self._host_monitor
        if monitor is None:
            return None
        try:
            resident = monitor.resident_bytes()
        except Exception:
            logger.debug("could not read the process's resident memory", exc_info=True)
            return None
        with self._lock:
            self._host_resident_peak = _larger(self._host_resident_peak, resident)
            self._last_host_resident = resident
        return resident

    def _memory_postfix(self) -> str:
        if not self._device_has_figures and self._host_monitor is not None:
            return f"host memory {format_bytes(self._sample_host())}"
        return f"memory {self.manager.check_memory_usage():.0%}"

    def _record_timeline(self, item: int) -> None:
        snapshot = self.manager.snapshot()
        host_resident = self._sample_host()
        seconds = time.perf_counter() - self._started
        with self._lock:
            entry = TimelineEntry(
                item=self._carried_items + item,
                seconds=self._carried_seconds + seconds,
                usage=snapshot.usage,
                allocated=snapshot.allocated,
                reserved=snapshot.reserved,
                gc_ran=self._gc_runs > self._gc_runs_at_last_entry,
                host_resident=host_resident,
            )
            self._gc_runs_at_last_entry = self._gc_runs
            if self._journal is None:
                self._timeline.append(entry)
            else:
                # Streamed, so a run of a million items holds no timeline in memory.
                self._journal.timeline(entry)
        if self.every is None:
            # Count-only mode cleans nothing; the timeline's reading is the sample it has.
            self._observe_growth(item, snapshot)

    def track(
        self, iterable: Iterable[Item], *, key: Callable[[Item], object] | None = None
    ) -> Iterator[Item]:
        """Yield the items of ``iterable``, counting each once its loop body is done.

        While a loop body runs, decorated calls and chunked work inside it are part of that
        item and add no items of their own. With ``progress=True`` the bar's total grows by
        ``len(iterable)`` where there is one. With a journal, each item's key (the item
        itself, or ``key(item)``) is journaled once its body is done, and items an earlier
        run finished are skipped; for a list, tuple or range every key is made before the
        first item is yielded, so an item without a usable key fails before any work.
        """
        self._require_active("batch.track()")
        keyed = self._keyed(iterable, key)
        tracked = _TrackedItems(self._track(keyed))
        self._open_tracks.add(tracked)
        return tracked

    def _track(self, keyed: Iterable[tuple[Item, Key | None]]) -> Generator[Item, None, None]:
        tracked_item = context.tracked_item
        for item, item_key in keyed:
            if item_key is not None and self._skips(item_key):
                continue
            # Generators share their caller's context, so this marks the loop body.
            outer = tracked_item.get()
            tracked_item.set(self)
            try:
                yield item
            finally:
                tracked_item.set(outer)
            # Reached only when the loop asks for the next item: the body is done.
            if item_key is not None and self._journal is not None:
                self._journal.done(item_key)
            self._advance(1)

    def map(
        self,
        function: Callable[[Item], Result],
        items: Iterable[Item],
        *,
        on_error: str = "raise",
        key: Callable[[Item], object] | None = None,
    ) -> Iterator[Result]:
        """``function(item)`` for each item, yielding the results lazily, in order.

        Each call is one tracked item. ``on_error="raise"`` lets an exception end the loop, as
        a for-loop would; ``on_error="skip"`` records an item whose call raises (any
        ``Exception``: an out-of-memory error that retries did not cure included, its memory
        freed before the next item) in ``report.failed_items`` (key, type, message, notes)
        and in the journal, and goes on. ``KeyboardInterrupt`` and ``SystemExit`` always
        propagate. Keys and skipping work as for :meth:`track`; without a key, a failure is
        recorded under the item's position.
        """
        self._require_active("batch.map()")
        if not callable(function):
            raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
        if on_error not in ("raise", "skip"):
            raise InvalidArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        keyed = self._keyed(items, key)
        tracked = _TrackedItems(self._map(function, keyed, skip_errors=on_error == "skip"))
        self._open_tracks.add(tracked)
        return tracked

    def _map(
        self,
        function: Callable[[Item], Result],
        keyed: Iterable[tuple[Item, Key | None]],
        *,
        skip_errors: bool,
    ) -> Generator[Result, None, None]:
        for position, (item, item_key) in enumerate(keyed):
            if item_key is not None and self._skips(item_key):
                continue
            failure: Exception | None = None
            outer = context.tracked_item.get()
            context.tracked_item.set(self)
            try:
                result = function(item)
            except Exception as error:
                if not skip_errors:
                    raise
                failure = error
            finally:
                context.tracked_item.set(outer)
            if failure is not None:
                self._item_failed(position if item_key is None else item_key, failure)
                del failure
                continue
            self._item_done(item_key)
            yield result

    def _keyed(
        self, items: Iterable[Item], key: Callable[[Item], object] | None
    ) -> Iterable[tuple[Item, Key | None]]:
        if key is not None and not callable(key):
            raise InvalidArgumentTypeError(f"key must be a function or None, got {key!r}")
        if self._bar is not None and isinstance(items, Sized):
            self._bar.total = (self._bar.total or 0) + len(items)
            self._bar.refresh()
        if self._journal is None and key is None:
            return zip(items, itertools.repeat(None))
        if isinstance(items, (list, tuple, range)):
            # Every key now, before any work: a bad one fails the loop before it starts.
            return [(item, journals.item_key(item, key)) for item in items]
        return ((item, journals.item_key(item, key)) for item in items)

    def _skips(self, item_key: Key) -> bool:
        """Whether an earlier run already finished (or, unless retried, failed) this item."""
        if item_key not in self._finished_keys and item_key not in self._carried_failures:
            return False
        with self._lock:
            self._skipped += 1
        if self._bar is not None:
            self._bar.update(1)
        return True

    def _item_done(self, item_key: Key | None) -> None:
        if self._journal is not None and item_key is not None:
            self._journal.done(item_key)
        self._advance(1)

    def _item_failed(self, item_key: Key, error: Exception) -> None:
        failure = ItemFailure.of(item_key, error)
        with self._lock:
            self._failed_items.append(failure)
        if self._journal is not None:
            self._journal.failed(failure)
        logger.warning(
            "item %r failed and is skipped: %s: %s", item_key, failure.error_type, failure.message
        )
        if is_oom_error(error):
            self._record_oom(error, retried=False)
            recover_from_oom(error, self.manager, self)
        elif self.every is not None:
            self._clean_up(f"the failed item {item_key!r}")
        if self._bar is not None:
            self._bar.update(1)

    # What the toolkit reports (the ActiveBatch protocol) ---------------------------------

    def _inside_tracked_item(self) -> bool:
        return context.tracked_item.get() is self

    def _record_call(self, *, failed: bool) -> None:
        """Count a call of an ``@auto_clear`` function made inside this batch."""
        if not failed and context.tracked_item.get() is not self:
            self._advance(1, calls=1)  # the hot path: one lock for the call and its item
            return
        with self._lock:
            self._calls += 1
            self._failures += int(failed)
        if failed and self.every is not None and not self._inside_tracked_item():
            # A failed call is no finished item, but what it left behind is worth freeing.
            self._clean_up("a failed call")

    def _record_items(self, count: int) -> None:
        """Count ``count`` items that chunked work finished in this batch."""
        if not self._inside_tracked_item():
            self._advance(count)

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
        """Count a cleanup memscope made during this batch; ``None`` means it failed."""
        with self._lock:
            if outcome is None:
                self._cleanup_failures += 1
                return
            self._cleanups += 1
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
        ``@auto_clear`` calls count into this batch, one item per call.
        """

        @functools.wraps(function)
        def run_in_batch(*args: Any, **kwargs: Any) -> Result:
            token = context.active_batch.set(self)
            try:
                return function(*args, **kwargs)
            finally:
                context.active_batch.reset(token)

        return run_in_batch


class _TrackedItems(Iterator[Item]):
    """What ``track()`` returns: the tracking generator, and an error once the batch ended.

    Leaving the batch closes every tracking loop (so the iterable's own clean-up runs even
    after a ``break``); a loop still running then, in a worker thread say, must not stop
    early in silence, so its next step raises.
    """

    def __init__(self, generator: Generator[Item, None, None]) -> None:
        self._generator = generator
        self._ended = False

    def __iter__(self) -> _TrackedItems[Item]:
        return self

    def __next__(self) -> Item:
        if self._ended:
            raise BatchStateError(
                "batch.track(): the batch ended while this loop was still running (in another "
                "thread?); finish the loops before leaving the batch"
            )
        return next(self._generator)

    def close(self) -> None:
        """Stop tracking, as ``generator.close()`` would."""
        self._generator.close()

    def end(self) -> None:
        """The batch ended: close the loop; a later step raises ``BatchStateError``."""
        self._ended = True
        try:
            self._generator.close()
        except ValueError:
            # Running in another thread at this moment; its next step raises.
            logger.debug("a track() loop was running while its batch ended", exc_info=True)


def _ended_by(
    exc_type: type[BaseException] | None, interrupted: BaseException | None
) -> str | None:
    if exc_type is not None:
        return exc_type.__name__
    return None if interrupted is None else type(interrupted).__name__


_host_figures_missing_said = False


def _host_monitor_for(manager: MemoryManager) -> HostMemoryMonitor | None:
    """On the CPU, a monitor of the process's memory, so the report has figures."""
    global _host_figures_missing_said
    if manager.resolved_device.type != "cpu":
        return None
    try:
        return HostMemoryMonitor()
    except HostMemoryUnavailableError:
        if not _host_figures_missing_said:
            _host_figures_missing_said = True
            logger.warning(
                "the CPU reports no memory figures and this process's resident memory cannot "
                "be read here; pip install 'memscope[host]' (psutil) for host memory figures"
            )
        return None


def current_batch() -> ManagedBatch | None:
    """The innermost ``managed_batch`` active in this context, if any."""
    batch = context.current()
    return batch if isinstance(batch, ManagedBatch) else None


# contextlib's style: a lowercase name for the context manager people call, the class for
# isinstance checks and type hints. One signature, so the two can never drift apart.
managed_batch = ManagedBatch
