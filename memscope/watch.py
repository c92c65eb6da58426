"""Watchers: what plugs into a ``managed_batch`` to see what it does.

The batch itself only enters and leaves, counts, and runs its cleanup cadence. Everything
else it can do (the journal, the timeline, the leak watch, the progress bar, host memory,
CUDA's memory history) is a :class:`Watcher` in a module of its own, and a watcher of yours
plugs in the same way, through ``managed_batch(watchers=[...])``::

    from memscope import managed_batch
    from memscope.watch import CleanupStep, Watcher


    class CountCollections(Watcher):
        def __init__(self) -> None:
            self.collections = 0

        def cleaned(self, batch, step: CleanupStep) -> None:
            self.collections += step.gc_runs


    watcher = CountCollections()
    with managed_batch("cpu", every=2, watchers=[watcher]) as batch:
        for _ in batch.track(range(6)):
            pass
    print(watcher.collections)

A watcher overrides only the hooks it needs; the batch calls a hook only on the watchers
whose class defines it, so a watcher with nothing to do on an item costs nothing there.
Hooks run in the batch's threads; one that raises during the batch propagates like the
user's own code would (a journal that cannot write must stop the run), except while the
batch ends (:meth:`Watcher.oom_seen` for the error ending it, :meth:`Watcher.cleaned` for
the final cleanup, :meth:`Watcher.report_part` for the final report,
:meth:`Watcher.finished`): there a failure never replaces the user's exception. It is
logged and attached to that exception as a note, the report is made (without a failing
part), and the failure is raised only when the batch ends without an exception of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from memscope.manager import MemoryManager
    from memscope.reports import BatchReport, ItemFailure
    from memscope.snapshot import MemorySnapshot
    from memscope.typing import BatchCounts, ItemKey

__all__ = ["HOOKS", "CleanupStep", "Hooks", "WatchedBatch", "Watcher", "defined_hooks"]

HOOKS = (
    "started",
    "items_done",
    "item_finished",
    "item_failed",
    "item_skipped",
    "skips",
    "iterating",
    "cleaned",
    "oom_seen",
    "report_part",
    "finished",
)
"""The hooks a watcher may define, in the order a batch's life reaches them."""


class WatchedBatch(Protocol):
    """The batch as its watchers see it: what a hook may read of it or ask of it.

    A ``managed_batch`` is one; watchers depend on this socket, never on the batch's class,
    so the batch and its features stay apart.
    """

    @property
    def manager(self) -> MemoryManager:
        """The batch's MemoryManager (set when the batch starts)."""
        ...

    @property
    def every(self) -> int | None:
        """The cleanup cadence in items (``None``: count-only)."""
        ...

    @property
    def counts(self) -> BatchCounts:
        """The run's counts so far, live."""
        ...

    @property
    def started_at(self) -> float:
        """``time.perf_counter()`` when the batch started."""
        ...

    @property
    def start_figures(self) -> MemorySnapshot:
        """The device's figures when the batch started."""
        ...

    @property
    def watchers(self) -> Sequence[Watcher]:
        """The watchers of the current run."""
        ...

    def memory_now(self, *, fresh: bool = False) -> MemorySnapshot:
        """The device's figures now, shared within one item."""
        ...

    def memory_if_read(self) -> MemorySnapshot | None:
        """The reading :meth:`memory_now` would share, or ``None`` when none was taken."""
        ...

    def collect(self) -> None:
        """Collect garbage and empty the cache now, counted in the batch's report."""
        ...

    def report_so_far(self) -> BatchReport:
        """The batch's report as it stands."""
        ...


class CleanupStep:
    """One cleanup step of a batch, as its watchers see it.

    ``figures()`` are the device's figures after the step: the reading the step itself
    took when nothing was freed after it, otherwise read once, on first demand, and shared
    by every watcher of the step.
    """

    __slots__ = ("_batch", "_figures", "cache_clears", "gc_runs", "item")

    def __init__(
        self,
        batch: WatchedBatch,
        item: int,
        cache_clears: int,
        gc_runs: int,
        figures: MemorySnapshot | None,
    ) -> None:
        self._batch = batch
        self.item = item
        """The batch's item count at the step (0 before the first item)."""
        self.cache_clears = cache_clears
        """``clear_cache()`` calls the step made."""
        self.gc_runs = gc_runs
        """``gc.collect()`` calls the step made (0 or 1)."""
        self._figures = figures

    @property
    def collected(self) -> bool:
        """Whether the step collected garbage."""
        return self.gc_runs > 0

    def figures(self) -> MemorySnapshot:
        """The device's figures after the step, read at most once per step."""
        if self._figures is None:
            self._figures = self._batch.memory_now()
        return self._figures


class Watcher:
    """The base of every watcher: each hook does nothing until a subclass defines it."""

    defined_hooks: ClassVar[frozenset[str]] = frozenset()
    """The hooks this class defines; the batch calls only these."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defined_hooks = frozenset(
            name for name in HOOKS if getattr(cls, name) is not getattr(Watcher, name)
        )

    def started(self, batch: WatchedBatch) -> None:
        """The batch was entered; ``batch.manager`` is set."""

    def items_done(self, batch: WatchedBatch, item: int, count: int) -> None:
        """``count`` items finished; ``item`` is the batch's count now. After any cleanup."""

    def item_finished(self, batch: WatchedBatch, key: ItemKey) -> None:
        """A keyed item (``track`` or ``map`` with a journal or ``key=``) finished."""

    def item_failed(self, batch: WatchedBatch, failure: ItemFailure) -> None:
        """An item of ``map(on_error="skip")`` failed and was recorded."""

    def item_skipped(self, batch: WatchedBatch, key: ItemKey) -> None:
        """An item was skipped because a watcher's :meth:`skips` said so."""

    def skips(self, batch: WatchedBatch, key: ItemKey) -> bool:
        """Whether the item with ``key`` should be skipped (an earlier run did it)."""
        return False

    def iterating(self, batch: WatchedBatch, total: int | None) -> None:
        """``track`` or ``map`` started on ``total`` items (``None``: not known)."""

    def cleaned(self, batch: WatchedBatch, step: CleanupStep) -> None:
        """The batch ran a cleanup step."""

    def oom_seen(self, batch: WatchedBatch, error: BaseException, *, leaving: bool) -> None:
        """An out-of-memory error met the batch; ``leaving``: it is ending the batch (and
        runs before the batch's final cleanup, so the device still shows the failure)."""

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        """This watcher's fields of the batch's report (``figures``: the fields so far).

        A watcher of yours returns its own figures as ``{"extras": {name: value}}``; they
        land in ``report.extras`` (JSON values; a name another watcher gave too is an
        error). Asked when the batch ends and by ``batch.report_so_far()``; it must not
        release anything, :meth:`finished` does that.
        """
        return {}

    def finished(self, batch: WatchedBatch, error: BaseException | None) -> None:
        """The batch is ending (``error``: the exception ending it, if any): release what
        :meth:`started` acquired. A failure here never replaces the user's exception."""


class Hooks:
    """The hooks one run's watchers define, by hook, in the watchers' order: what the batch
    calls (a hook no watcher defines is an empty tuple, and costs nothing)."""

    __slots__ = (*HOOKS, "keys_needed")

    started: tuple[Callable[..., Any], ...]
    items_done: tuple[Callable[..., Any], ...]
    item_finished: tuple[Callable[..., Any], ...]
    item_failed: tuple[Callable[..., Any], ...]
    item_skipped: tuple[Callable[..., Any], ...]
    skips: tuple[Callable[..., Any], ...]
    iterating: tuple[Callable[..., Any], ...]
    cleaned: tuple[Callable[..., Any], ...]
    oom_seen: tuple[Callable[..., Any], ...]
    report_part: tuple[Callable[..., Any], ...]
    finished: tuple[Callable[..., Any], ...]

    def __init__(self, watchers: Sequence[object]) -> None:
        for name in HOOKS:
            setattr(
                self, name, tuple(getattr(w, name) for w in watchers if name in defined_hooks(w))
            )
        self.keys_needed = bool(self.skips or self.item_finished)
        """Whether an item's key must be made (a watcher skips or records keyed items)."""


def defined_hooks(watcher: object) -> frozenset[str]:
    """The hooks ``watcher`` defines: its class's own for a :class:`Watcher`, every hook
    method it has for any other object (a watcher need not derive from the base)."""
    hooks = getattr(type(watcher), "defined_hooks", None)
    if isinstance(hooks, frozenset):
        return hooks
    return frozenset(name for name in HOOKS if callable(getattr(watcher, name, None)))
