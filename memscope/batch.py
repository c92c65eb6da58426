"""``managed_batch()``: keep memory in check around a whole batch loop.

The batch is a small core: it enters and leaves, counts items, runs one cleanup cadence,
and is what the toolkit's clients (``@auto_clear``, ``@adaptive_batch``,
``process_in_chunks``, OOM recovery) report to. Everything else it can do is a watcher
(:mod:`memscope.watch`) in a module of its own, built from the batch's options.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from os import PathLike
from typing import Any, TypeVar

from memscope import _context as context, _heap as heap, _loops as loops
from memscope._batch_options import BatchOptions
from memscope._cleanup import CleanupOutcome, reclaim, run_cleanup_safely
from memscope._context_manager import SyncAndAsyncContextManager
from memscope._ledger import Ledger
from memscope._loops import Loop
from memscope._reporting import assemble_report, finish_watchers, tell_failure
from memscope.exceptions import BatchStateError
from memscope.journal import Journal
from memscope.manager import MemoryManager
from memscope.oom import MemoryHistory, add_oom_note, is_oom_error
from memscope.reports import BatchReport, ItemFailure
from memscope.snapshot import MemorySnapshot
from memscope.typing import BatchCounts, CachePolicy, DeviceLike
from memscope.watch import CleanupStep, Hooks, Watcher

__all__ = ["ManagedBatch", "current_batch", "managed_batch"]

logger = logging.getLogger("memscope")

Item = TypeVar("Item")
Result = TypeVar("Result")


class ManagedBatch(SyncAndAsyncContextManager):
    """Keep memory in check around a batch loop; ``managed_batch`` is this class.

    A sync and an async context manager; while it is active it is the one owner of cleanup
    and the one record of what happened. ``track()``, ``map()`` and ``step()`` count items
    and clean up after every ``every`` items; the toolkit inside it reports to it and runs
    no cadence of its own (an item is counted by the outermost memscope layer that sees
    it). On exit it runs a final cleanup and leaves its :class:`BatchReport` in ``report``.

    ::

        with managed_batch(every=5) as batch:
            for image in batch.track(images):
                colorize(image)
        print(batch.report)

    Args:
        device: the device, as for :class:`MemoryManager`; ``None`` auto-detects (inside
            another batch: that batch's device).
        manager: use this manager instead of making one; then ``memory_threshold`` and
            ``budget`` belong to it and cannot be given here.
        memory_threshold: the GC threshold of the manager the batch makes (0.8 if not given).
        budget: measure usage against this many bytes (an int or ``"6GiB"``); on the CPU
            this watches the host's memory.
        every: clean up (the cache policy's clear, then the threshold GC) after every this
            many items; ``None`` is count-only mode (counts and reports, never cleans up).
        cache_policy: when a cleanup empties the cache (default :class:`ClearWhenUseful`).
        freeze_heap: freeze the objects alive when the batch starts, so collections inside
            it traverse only what the batch created; unfrozen when the last batch ends.
        progress: a tqdm progress bar of items (``pip install 'memscope[progress]'``).
        timeline: record memory after every item into ``report.timeline`` (with a journal,
            streamed into the journal's file instead).
        journal: a :class:`~memscope.journal.Journal` (or a path for one with its defaults):
            durable records of finished and failed items, so a rerun skips them.
        history: a :class:`~memscope.oom.MemoryHistory` (or ``True`` for its defaults): on
            CUDA, record the allocation history and write a snapshot when an OOM ends the
            batch.
        watchers: more :class:`~memscope.watch.Watcher` objects to plug in.
    """

    def __init__(
        self,
        device: DeviceLike = None,
        *,
        manager: MemoryManager | None = None,
        memory_threshold: float | None = None,
        budget: int | str | None = None,
        every: int | None = 5,
        cache_policy: CachePolicy | None = None,
        freeze_heap: bool = True,
        progress: bool = False,
        timeline: bool = False,
        journal: Journal | str | PathLike[str] | None = None,
        history: MemoryHistory | bool | None = None,
        watchers: Sequence[Watcher] = (),
    ) -> None:
        self.options = BatchOptions.checked(
            device=device,
            manager=manager,
            memory_threshold=memory_threshold,
            budget=budget,
            every=every,
            cache_policy=cache_policy,
            freeze_heap=freeze_heap,
            progress=progress,
            timeline=timeline,
            journal=journal,
            history=history,
            watchers=watchers,
        )
        self.every = self.options.every
        self.cache_policy: CachePolicy = self.options.cache_policy
        self._holds = 0
        self._manager: MemoryManager | None = None
        self._parent: context.ActiveBatch | None = None
        self._report: BatchReport | None = None
        self._open_loops: weakref.WeakSet[Loop[Any]] = weakref.WeakSet()
        self._start_watching(())

    def _start_watching(self, watchers: Sequence[Watcher]) -> None:
        """(Re)set what one run of the batch holds: its ledger and its watchers' hooks."""
        self._ledger = Ledger()
        self._failed_items: list[ItemFailure] = []
        self._reading: MemorySnapshot | None = None
        self._started = 0.0
        self.watchers = tuple(watchers)
        """The watchers of the current run: the options' own, then ``watchers=``."""
        self._hooks = Hooks(watchers)

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
        """Whether the batch has been entered (or opened) and not yet left."""
        return self._holds > 0

    @property
    def parent(self) -> context.ActiveBatch | None:
        """The batch that was active where this one started, if any."""
        return self._parent

    @property
    def items(self) -> int:
        """Items completed so far in this run."""
        return self._ledger.items

    @property
    def counts(self) -> BatchCounts:
        """The run's counts so far, live (items, calls, cleanups, collections, OOMs...): for
        watchers to read; only the batch writes them."""
        return self._ledger

    @property
    def started_at(self) -> float:
        """``time.perf_counter()`` when the batch started."""
        return self._started

    # Opening and closing ---------------------------------------------------------------

    def open(self) -> ManagedBatch:
        """Start the batch without making it active here; for a batch that must outlive
        one call (a worker's, say): run calls in it with :meth:`bind`, end it with
        :meth:`close`. ``with`` does both around its block and makes it active there."""
        if self._holds == 0:
            self._start()
        self._holds += 1
        return self

    def close(self, error: BaseException | None = None) -> None:
        """Let go of one :meth:`open`; the last one ends the batch (``error``: what ended
        it, if anything), runs the final cleanup and sets :attr:`report`."""
        if self._holds == 0:
            raise BatchStateError("the batch was closed more often than it was opened")
        self._holds -= 1
        if self._holds == 0:
            self._finish(error)

    def __enter__(self) -> ManagedBatch:
        self.open()
        context.enter(self)
        return self

    def _leave(self, error: BaseException | None) -> None:
        if self._holds == 0:
            raise BatchStateError("batch.__exit__ was called without a matching __enter__")
        context.leave(self)
        self.close(error)

    def _start(self) -> None:
        parent = context.current()
        manager = self.options.manager_for(parent)
        self._parent = parent
        self._manager = manager
        self._report = None
        self._start_watching((*self.options.new_watchers(manager), *self.options.watchers))
        if self.options.freeze_heap:
            heap.hold_frozen_heap()
        try:
            start = manager.snapshot()
            # Resetting the device's peak erases what the outer batch has seen so far.
            self._share_peaks(start.peak_allocated, start.peak_reserved)
            manager.reset_peak_memory_stats()
            self.start_figures = start
            """The device's figures when the batch started."""
            self._started = time.perf_counter()
            for started in self._hooks.started:
                started(self)
        except BaseException as error:
            # A batch that never started must not leave the heap frozen or watchers holding
            # what they acquired.
            self._release(error)
            raise

    def _finish(self, error: BaseException | None) -> None:
        interrupted: BaseException | None = None
        part_failures: list[Exception] = []  # raised after the end, if nothing else is
        try:
            if error is not None and is_oom_error(error):
                # Before the final cleanup, so the note shows the figures of the failure.
                try:
                    self._record_oom(error, retried=False, leaving=True)
                except Exception as failure:  # a watcher's: never instead of the user's error
                    tell_failure(error, failure, "a watcher of the out-of-memory error")
                add_oom_note(error, self.manager)
            for loop in list(self._open_loops):
                loop.end()
            if self.every is not None:
                try:
                    self._clean_up("the batch")
                except BaseException as stop:
                    if error is not None and isinstance(stop, Exception):
                        tell_failure(error, stop, "a watcher of the final cleanup")
                    else:  # raised once the report is made (KeyboardInterrupt, say)
                        interrupted = stop
            self._report = report = assemble_report(
                self,
                self._ledger,
                tuple(self._failed_items),
                _ended_by(error, interrupted),
                ending=error if error is not None else interrupted,
                failures=part_failures,
            )
            self._share_peaks(report.peak_allocated, report.peak_reserved)
            logger.info("batch finished: %s", report.summary())
        except BaseException as failure:
            if error is not None and failure is not error:
                failure.__context__ = error
            raise
        finally:
            self._release(error)
        if interrupted is not None:
            _raise_after(interrupted, error)
        if error is None and part_failures:
            raise part_failures[0]

    def _share_peaks(self, allocated: int | None, reserved: int | None) -> None:
        """Fold this batch's peaks into the outer batch's, where it watches the same device."""
        parent = self._parent
        if parent is None or not parent.active:
            return
        if parent.manager.resolved_device == self.manager.resolved_device:
            parent._observe_peak(allocated, reserved)

    def _release(self, error: BaseException | None) -> None:
        try:
            finish_watchers(self, error)
        finally:
            if self.options.freeze_heap:
                heap.release_frozen_heap()

    def report_so_far(self) -> BatchReport:
        """The figures up to now, while the batch runs: what :attr:`report` would hold if the
        batch ended now, less the final cleanup (``ended_by`` is ``None``)."""
        self._require_active("batch.report_so_far()")
        return assemble_report(self, self._ledger, tuple(self._failed_items), None)

    # Counting --------------------------------------------------------------------------

    def _require_active(self, action: str) -> None:
        if self._holds == 0:
            raise BatchStateError(f"{action} needs the batch to be entered (use it in `with`)")

    def step(self) -> None:
        """Count one finished item, and clean up if it completes a run of ``every``."""
        self._require_active("batch.step()")
        self._advance(1)

    def _advance(self, count: int, calls: int = 0) -> None:
        """Count ``count`` finished items (and ``calls`` decorated calls, under the same lock);
        clean up once if the items complete a run of ``every``."""
        ledger = self._ledger
        lock = ledger.lock
        lock.acquire()  # `+=` cannot raise, and this spares the `with` protocol
        ledger.calls += calls
        before = ledger.items
        ledger.items = after = before + count
        lock.release()
        self._reading = None
        every = self.every
        if every is not None and after // every > before // every:
            self._clean_up(after)  # the reason, formatted only if the step fails
        for items_done in self._hooks.items_done:
            items_done(self, after, count)

    def clean_up(self, reason: str = "batch.clean_up()") -> None:
        """Run one cleanup step now, counted in the report and shown to the watchers; a
        failing step is logged (``reason`` says after what) and counted, never raised."""
        self._require_active("batch.clean_up()")
        self._clean_up(reason)

    def _clean_up(self, reason: str | int) -> None:
        manager = self._manager
        assert manager is not None  # set while the batch runs
        outcome = run_cleanup_safely(manager, reason, self.cache_policy)
        self._ledger.cleanup(outcome)
        if outcome is None:
            return
        self._reading = outcome.figures_after
        if self._hooks.cleaned:
            step = CleanupStep(
                self, self._ledger.items, outcome.cache_clears, outcome.gc_runs, self._reading
            )
            for cleaned in self._hooks.cleaned:
                cleaned(self, step)

    def collect(self) -> None:
        """Collect garbage and empty the cache now, whatever the usage (what the recovery
        after an OOM does), counted in the report; a failure is logged, never raised."""
        self._require_active("batch.collect()")
        outcome = reclaim(self.manager)
        self._reading = None
        if outcome is not None:
            self._ledger.collection(outcome.gc_seconds, outcome.cache_clears)

    def memory_now(self, *, fresh: bool = False) -> MemorySnapshot:
        """The device's figures now; within one item, the reading already taken (by its
        cleanup step or another watcher) is shared instead of read again. ``fresh``: read
        anew (after something changed them) and share that one from here on."""
        reading = self._reading
        if reading is None or fresh:
            self._reading = reading = self.manager.snapshot()
        return reading

    def memory_if_read(self) -> MemorySnapshot | None:
        """The reading :meth:`memory_now` would share, or ``None`` when none was taken."""
        return self._reading

    # Loops -----------------------------------------------------------------------------

    def track(
        self, iterable: Iterable[Item], *, key: Callable[[Item], object] | None = None
    ) -> Iterator[Item]:
        """Yield the items of ``iterable``, counting each once its loop body is done.

        While a loop body runs, decorated calls and chunked work inside it are part of that
        item. With a journal, each item's key (the item itself, or ``key(item)``) is checked
        before its body runs and journaled once it is done; items an earlier run finished
        are skipped.
        """
        self._require_active("batch.track()")
        return self._loop(loops.tracked(self, loops.keyed(self, iterable, key, name="iterable")))

    def map(
        self,
        function: Callable[[Item], Result],
        items: Iterable[Item],
        *,
        on_error: str = "raise",
        key: Callable[[Item], object] | None = None,
    ) -> Iterator[Result]:
        """``function(item)`` for each item, yielding the results lazily, in order.

        Each call is one tracked item. ``on_error="raise"`` lets an exception end the loop
        as the function raised it; ``on_error="skip"`` records an item whose call raises
        (any ``Exception``, an out-of-memory error included, its memory freed before the
        next item) in ``report.failed_items`` and the journal, and goes on.
        ``KeyboardInterrupt`` and ``SystemExit`` always propagate. Keys and skipping work as
        for :meth:`track`; without a key a failure is recorded under the item's position.
        """
        self._require_active("batch.map()")
        skip_errors = loops.check_map(function, on_error)
        keyed = loops.keyed(self, items, key, name="items")
        return self._loop(loops.mapped(self, function, keyed, skip_errors=skip_errors))

    def _loop(self, generator: Generator[Any, None, None]) -> Loop[Any]:
        loop: Loop[Any] = Loop(generator)
        self._open_loops.add(loop)  # ended with the batch
        return loop

    # What the toolkit reports (the ActiveBatch protocol) ---------------------------------

    def _record_call(self, *, failed: bool) -> None:
        """Count a call of an ``@auto_clear`` function made inside this batch."""
        if self._holds == 0:
            return  # a call that outlived its batch counts into no batch
        if not failed and context.tracked_item.get() is not self:
            self._advance(1, calls=1)  # the hot path: one lock for the call and its item
            return
        ledger = self._ledger
        with ledger.lock:
            ledger.calls += 1
            ledger.failures += int(failed)
        if failed and self.every is not None and context.tracked_item.get() is not self:
            # A failed call is no finished item, but what it left behind is worth freeing.
            self._clean_up("a failed call")

    def _record_items(self, count: int) -> None:
        """Count ``count`` items that chunked work finished in this batch."""
        if self._holds and context.tracked_item.get() is not self:
            self._advance(count)

    def _record_oom(
        self,
        error: BaseException,
        *,
        retried: bool,
        batch_size_reduced: bool = False,
        leaving: bool = False,
    ) -> None:
        """Count an out-of-memory error met inside this batch, and what was done about it."""
        new = self._ledger.oom(error, retried=retried, reduced=batch_size_reduced)
        if new or leaving:
            for oom_seen in self._hooks.oom_seen:
                oom_seen(self, error, leaving=leaving)

    def _record_cleanup(self, outcome: CleanupOutcome | None) -> None:
        """Count a cleanup memscope made during this batch; ``None`` means it failed."""
        self._ledger.cleanup(outcome)

    def _observe_peak(self, allocated: int | None, reserved: int | None) -> None:
        """Fold peak figures seen elsewhere (a nested batch, say) into this batch's peaks."""
        self._ledger.peaks(allocated, reserved)

    # Threads ---------------------------------------------------------------------------

    def bind(self, function: Callable[..., Result]) -> Callable[..., Result]:
        """``function``, made to run with this batch active in whatever thread calls it.

        New threads do not inherit the caller's context, so a function handed to a thread
        pool would not see the batch: ``pool.map(batch.bind(colorize), images)`` makes its
        ``@auto_clear`` calls count into this batch, one item per call.
        """

        return context.run_in(self, function)


def _raise_after(interrupted: BaseException, error: BaseException | None) -> None:
    """Raise what interrupted the final cleanup, chained to what ended the batch."""
    if interrupted.__context__ is None and error not in (None, interrupted):
        interrupted.__context__ = error
    try:
        raise interrupted
    finally:
        del interrupted


def _ended_by(error: BaseException | None, interrupted: BaseException | None) -> str | None:
    if error is not None:
        return type(error).__name__
    return None if interrupted is None else type(interrupted).__name__


def current_batch() -> ManagedBatch | None:
    """The innermost ``managed_batch`` running in this context, if any."""
    batch = context.current()
    return batch if isinstance(batch, ManagedBatch) else None


# contextlib's style: a lowercase name for the context manager people call, the class for
# isinstance checks and type hints. One signature, so the two can never drift apart.
managed_batch = ManagedBatch
