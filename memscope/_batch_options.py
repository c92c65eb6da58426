"""What ``managed_batch`` was told, checked once, and the watchers its options build.

Every option is checked when the batch is made, before anything runs; a combination that
cannot apply is an error naming both parts, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING

from memscope import _context as context, _manager_checks as manager_checks
from memscope._devices import as_torch_device
from memscope._validation import check_fraction, check_int
from memscope._watch_allocator import AllocatorWatch
from memscope._watch_history import HistoryWatch
from memscope._watch_host import host_watch_for
from memscope._watch_journal import JournalWatch
from memscope._watch_leaks import CountOnlyLeakWatcher, LeakWatcher
from memscope._watch_progress import ProgressBar, load_tqdm
from memscope._watch_timeline import TimelineWatch
from memscope.exceptions import InvalidArgumentTypeError
from memscope.journal import Journal
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom import MemoryHistory
from memscope.policies import DEFAULT_CACHE_POLICY, GCBackoff, check_cache_policy
from memscope.typing import CachePolicy, DeviceLike
from memscope.watch import HOOKS, Watcher

if TYPE_CHECKING:
    import torch

__all__: list[str] = []


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """A batch's options, checked."""

    device: torch.device | None
    manager: MemoryManager | None
    memory_threshold: float | None
    budget: int | str | None
    every: int | None
    cache_policy: CachePolicy
    freeze_heap: bool
    progress: bool
    timeline: bool
    journal: Journal | None
    history: MemoryHistory | None
    watchers: tuple[Watcher, ...]

    @classmethod
    def checked(
        cls,
        *,
        device: DeviceLike,
        manager: object,
        memory_threshold: object,
        budget: object,
        every: object,
        cache_policy: object,
        freeze_heap: object,
        progress: object,
        timeline: object,
        journal: object,
        history: object,
        watchers: object,
    ) -> BatchOptions:
        """The options, or an error naming the first bad one."""
        torch_device = None if device is None else as_torch_device(device)
        checked_manager = context.check_manager(
            manager, device=device, memory_threshold=memory_threshold, budget=budget
        )
        threshold = (
            None
            if memory_threshold is None
            else check_fraction(memory_threshold, "memory_threshold")
        )
        if budget is not None:
            manager_checks.budget(budget)  # the manager's own check, before any manager exists
        if progress:
            load_tqdm()  # a missing tqdm is said now, not at the first item
        return cls(
            device=torch_device,
            manager=checked_manager,
            memory_threshold=threshold,
            budget=budget,  # type: ignore[arg-type]
            every=None if every is None else check_int(every, "every", minimum=1),
            cache_policy=(
                DEFAULT_CACHE_POLICY if cache_policy is None else check_cache_policy(cache_policy)
            ),
            freeze_heap=_check_bool(freeze_heap, "freeze_heap"),
            progress=_check_bool(progress, "progress"),
            timeline=_check_bool(timeline, "timeline"),
            journal=_check_journal(journal),
            history=_check_history(history),
            watchers=_check_watchers(watchers),
        )

    def manager_for(self, parent: context.ActiveBatch | None) -> MemoryManager:
        """The manager a run of the batch uses: the given one; the outer batch's when this
        one asks for nothing else; a new one otherwise."""
        if self.manager is not None:
            return self.manager
        threshold = (
            DEFAULT_MEMORY_THRESHOLD if self.memory_threshold is None else self.memory_threshold
        )
        if (
            parent is not None
            and self.budget is None
            and parent.manager.memory_threshold == threshold
            and (self.device is None or context.same_device(self.device, parent.manager))
        ):
            return parent.manager
        return MemoryManager(
            self.device,
            threshold,
            # Resident memory rarely falls after a collection (the C allocator keeps freed
            # pages), so with host figures "freed nothing" cannot be judged: no backoff.
            gc_backoff=None if self.budget is not None else GCBackoff(),
            budget=self.budget,
        )

    def new_watchers(self, manager: MemoryManager) -> tuple[Watcher, ...]:
        """Fresh watchers for one run of the batch on ``manager``, in the order their hooks
        run."""
        host = host_watch_for(manager)
        watchers: list[Watcher] = []
        journal_watch = None
        if self.journal is not None:
            journal_watch = JournalWatch(self.journal)
            watchers.append(journal_watch)
        watchers.append(host)
        if self.history is not None:
            watchers.append(HistoryWatch(self.history))
        if self.timeline:
            watchers.append(TimelineWatch(host, journal_watch))
        # Counting only, the leak watch judges the timeline's readings: without one it has
        # nothing to do on an item, and no per-item hook.
        counting_only = self.every is None and self.timeline
        leak_watcher = CountOnlyLeakWatcher if counting_only else LeakWatcher
        watchers.append(
            leak_watcher(
                host,
                after_cleanup=self.every is not None,
                history_recorded=self.history is not None,
                offset=journal_watch,
            )
        )
        watchers.append(AllocatorWatch())
        if self.progress:
            watchers.append(ProgressBar(host))
        return tuple(watchers)


def _check_journal(journal: object) -> Journal | None:
    if journal is None or isinstance(journal, Journal):
        return journal
    if isinstance(journal, (str, PathLike)):
        return Journal(journal)
    raise InvalidArgumentTypeError(
        f"journal must be a Journal, a path or None, got {journal!r} of type "
        f"{type(journal).__name__}"
    )


def _check_history(history: object) -> MemoryHistory | None:
    if history is None or history is False:
        return None
    if history is True:
        return MemoryHistory()
    if isinstance(history, MemoryHistory):
        return history
    raise InvalidArgumentTypeError(
        f"history must be a MemoryHistory, True, False or None, got {history!r}"
    )


def _check_watchers(watchers: object) -> tuple[Watcher, ...]:
    if isinstance(watchers, (str, bytes)) or not isinstance(watchers, Sequence):
        raise InvalidArgumentTypeError(
            f"watchers must be a list of Watcher objects, got {watchers!r}"
        )
    for watcher in watchers:
        if not any(callable(getattr(watcher, hook, None)) for hook in HOOKS):
            raise InvalidArgumentTypeError(
                f"watchers must hold Watcher objects (see memscope.watch), got {watcher!r}"
            )
    return tuple(watchers)
