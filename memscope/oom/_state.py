"""What a size search has learned: one frozen snapshot, replaced whole under a lock.

The search's rules are pure functions from a snapshot (and the attempt just made) to the next
snapshot: which size to try, what a success teaches, what an out-of-memory error teaches.
:class:`AdaptiveBatchState` holds the current snapshot and swaps in the next one under its
lock, so concurrent calls never lose an update, and a reader (who needs no lock: reading one
reference is atomic) always sees figures that belong together.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, Generic, TypeVar, overload

from memscope.oom._options import SizingSettings

__all__ = ["AdaptiveBatchSnapshot", "AdaptiveBatchState"]

logger = logging.getLogger("memscope")

Value = TypeVar("Value")


@dataclass(frozen=True, slots=True)
class AdaptiveBatchSnapshot:
    """Everything an adaptive function had learned at one moment, read consistently.

    ``state.snapshot()`` returns one; the state's attributes of the same names read the
    current one.
    """

    start: int
    """The first size tried, and the largest regrowth ever goes to."""
    factor: float
    """What a size is multiplied by after an out-of-memory error."""
    min_size: int
    """The smallest size tried."""
    regrow_after: int | None
    """Successes in a row after which a larger size is tried; ``None``: never."""
    current_size: int
    """The size the next call starts with (unless it tries to regrow)."""
    sizes_tried: tuple[int, ...] = ()
    """Every size tried so far, each once, in the order first tried."""
    successes: int = 0
    """Calls (or chunks) that completed."""
    oom_count: int = 0
    """Out-of-memory errors caught, regrowth attempts included."""
    reductions: int = 0
    """How often ``current_size`` went down."""
    regrowths: int = 0
    """How often ``current_size`` went up after a run of successes."""
    failed_regrowths: int = 0
    """Regrowth attempts that ran out of memory (and went back to the smaller size)."""
    successes_in_a_row: int = 0
    """Successes at ``current_size`` since it last changed or memory last ran out."""
    failed_regrowth_sizes: tuple[int, ...] = ()
    """The size of each failed regrowth attempt, in order; each one doubles the wait before
    the next attempt at that size."""

    @classmethod
    def initial(cls, settings: SizingSettings) -> AdaptiveBatchSnapshot:
        """Nothing learned yet: the next call starts at ``start``."""
        return cls(
            start=settings.start,
            factor=settings.factor,
            min_size=settings.min_size,
            regrow_after=settings.regrow_after,
            current_size=settings.start,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One size to try."""

    size: int
    regrowing_from: int | None = None
    """The size that worked before, when this attempt tries a larger one."""


# The rules: pure functions of a snapshot. --------------------------------------------------


def _shrunk(snapshot: AdaptiveBatchSnapshot, size: int) -> int | None:
    """The size after ``size`` ran out of memory: always smaller, never below min_size."""
    if size <= snapshot.min_size:
        return None
    return max(snapshot.min_size, min(int(size * snapshot.factor), size - 1))


def _grown(snapshot: AdaptiveBatchSnapshot, size: int) -> int:
    return min(snapshot.start, max(size + 1, int(size / snapshot.factor)))


def _successes_needed_to_grow_to(snapshot: AdaptiveBatchSnapshot, size: int) -> int:
    assert snapshot.regrow_after is not None
    # Each failed attempt to grow to a size doubles the wait before the next one.
    return snapshot.regrow_after << snapshot.failed_regrowth_sizes.count(size)


def _with_tried(snapshot: AdaptiveBatchSnapshot, size: int) -> AdaptiveBatchSnapshot:
    if size in snapshot.sizes_tried:
        return snapshot
    return replace(snapshot, sizes_tried=(*snapshot.sizes_tried, size))


def choose_attempt(
    snapshot: AdaptiveBatchSnapshot, limit: int | None = None
) -> tuple[Attempt, AdaptiveBatchSnapshot]:
    """The next attempt, and the snapshot that records it; ``limit`` caps the size (the
    items left, for chunks)."""
    current = snapshot.current_size
    attempt = Attempt(current)
    if snapshot.regrow_after is not None and current < snapshot.start:
        grown = _grown(snapshot, current)
        if snapshot.successes_in_a_row >= _successes_needed_to_grow_to(snapshot, grown):
            attempt = Attempt(grown, regrowing_from=current)
    if limit is not None and attempt.size > limit:
        # A short tail proves nothing about a larger size, so it is never a regrowth.
        attempt = Attempt(min(current, limit))
    return attempt, _with_tried(snapshot, attempt.size)


def after_success(snapshot: AdaptiveBatchSnapshot, attempt: Attempt) -> AdaptiveBatchSnapshot:
    """What ``attempt`` completing teaches."""
    successes = snapshot.successes + 1
    if attempt.regrowing_from is not None:
        if snapshot.current_size != attempt.regrowing_from:
            # Another call changed the size meanwhile; its news is fresher.
            return replace(snapshot, successes=successes)
        return replace(
            snapshot,
            successes=successes,
            current_size=attempt.size,
            regrowths=snapshot.regrowths + 1,
            successes_in_a_row=1,
        )
    if attempt.size == snapshot.current_size:
        return replace(
            snapshot, successes=successes, successes_in_a_row=snapshot.successes_in_a_row + 1
        )
    return replace(snapshot, successes=successes)


def after_oom(
    snapshot: AdaptiveBatchSnapshot, attempt: Attempt
) -> tuple[int | None, AdaptiveBatchSnapshot]:
    """The size to retry at after ``attempt`` ran out of memory (``None``: no smaller size is
    allowed), and the snapshot that records the error."""
    failed = replace(snapshot, oom_count=snapshot.oom_count + 1, successes_in_a_row=0)
    if attempt.regrowing_from is not None:
        failed = replace(
            failed,
            failed_regrowths=failed.failed_regrowths + 1,
            failed_regrowth_sizes=(*failed.failed_regrowth_sizes, attempt.size),
        )
        retry = min(attempt.regrowing_from, failed.current_size)
        return retry, _with_tried(failed, retry)
    shrunk = _shrunk(failed, attempt.size)
    if shrunk is None:
        return None, failed
    if shrunk < failed.current_size:
        failed = replace(failed, current_size=shrunk, reductions=failed.reductions + 1)
    retry = min(shrunk, failed.current_size)
    return retry, _with_tried(failed, retry)


# The state: the current snapshot, and a lock to replace it under. -------------------------


class _Learned(Generic[Value]):
    """A read-only attribute of :class:`AdaptiveBatchState`: the current snapshot's field."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        if name not in {field.name for field in fields(AdaptiveBatchSnapshot)}:
            raise TypeError(f"AdaptiveBatchSnapshot has no field {name!r}")
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> _Learned[Value]: ...

    @overload
    def __get__(self, instance: AdaptiveBatchState, owner: type[Any] | None = None) -> Value: ...

    def __get__(
        self, instance: AdaptiveBatchState | None, owner: type[Any] | None = None
    ) -> _Learned[Value] | Value:
        if instance is None:
            return self
        value: Value = getattr(instance._snapshot, self.name)
        return value


class AdaptiveBatchState:
    """What an adaptive function has learned: the batch size to use, and what happened.

    One object per decorated function (for a method, shared by every instance), so a
    reference taken once stays current and concurrent calls share what any of them learns.
    Its attributes read the current :class:`AdaptiveBatchSnapshot`, which every update
    replaces whole; :meth:`snapshot` gives all of them at one moment.
    """

    __slots__ = ("__weakref__", "_initial", "_lock", "_snapshot")

    start = _Learned[int]()
    """The first size tried, and the largest regrowth ever goes to."""
    factor = _Learned[float]()
    """What a size is multiplied by after an out-of-memory error."""
    min_size = _Learned[int]()
    """The smallest size tried."""
    regrow_after = _Learned[int | None]()
    """Successes in a row after which a larger size is tried; ``None``: never."""
    current_size = _Learned[int]()
    """The size the next call starts with (unless it tries to regrow)."""
    sizes_tried = _Learned[tuple[int, ...]]()
    """Every size tried so far, each once, in the order first tried."""
    successes = _Learned[int]()
    """Calls (or chunks) that completed."""
    oom_count = _Learned[int]()
    """Out-of-memory errors caught, regrowth attempts included."""
    reductions = _Learned[int]()
    """How often ``current_size`` went down."""
    regrowths = _Learned[int]()
    """How often ``current_size`` went up after a run of successes."""
    failed_regrowths = _Learned[int]()
    """Regrowth attempts that ran out of memory (and went back to the smaller size)."""

    def __init__(
        self, *, start: int, factor: float = 0.5, min_size: int = 1, regrow_after: int | None = None
    ) -> None:
        settings = SizingSettings.checked(
            start=start, factor=factor, min_size=min_size, regrow_after=regrow_after
        )
        self._initial = AdaptiveBatchSnapshot.initial(settings)
        self._snapshot = self._initial
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        snapshot = self._snapshot
        return (
            f"AdaptiveBatchState(current_size={snapshot.current_size}, start={snapshot.start}, "
            f"min_size={snapshot.min_size}, oom_count={snapshot.oom_count}, "
            f"reductions={snapshot.reductions}, regrowths={snapshot.regrowths})"
        )

    def snapshot(self) -> AdaptiveBatchSnapshot:
        """Everything learned so far, as of now (later updates replace it, never change it)."""
        return self._snapshot

    def reset(self) -> None:
        """Forget everything learned: start again at ``start``, counters at zero."""
        with self._lock:
            self._snapshot = self._initial

    # The search's updates, each one atomic.

    def _choose(self, limit: int | None = None) -> Attempt:
        with self._lock:
            attempt, self._snapshot = choose_attempt(self._snapshot, limit)
        return attempt

    def _record_success(self, attempt: Attempt) -> None:
        with self._lock:
            before = self._snapshot
            self._snapshot = after_success(before, attempt)
            grew = self._snapshot.regrowths > before.regrowths
        if grew:
            logger.info("batch size grew back to %d", attempt.size)

    def _record_oom(self, attempt: Attempt) -> tuple[int | None, bool]:
        """The size to retry at (``None``: none left), and whether ``current_size`` went
        down because of this error."""
        with self._lock:
            before = self._snapshot
            retry, self._snapshot = after_oom(before, attempt)
            return retry, self._snapshot.reductions > before.reductions
