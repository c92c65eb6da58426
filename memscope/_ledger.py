"""The one record of what happened in a batch: every count, kept where it happens.

A batch's figures (items, decorated calls, cleanups, cache clears, collections, OOMs) are
written here once, by whichever layer did the thing, and the report reads them from here.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from dataclasses import dataclass, field, fields
from typing import Any

from memscope._outcome import CleanupOutcome

__all__ = ["CleanupStats", "Ledger", "LedgerCount"]


def _larger(current: int | None, candidate: int | None) -> int | None:
    if candidate is None:
        return current
    return candidate if current is None else max(current, candidate)


class LedgerCount:
    """A read-only attribute of a view that is one count of the view's ``_ledger``."""

    def __init__(self, field: str, doc: str) -> None:
        self.field = field
        self.__doc__ = doc

    def __get__(self, view: object, owner: type | None = None) -> int:
        if view is None:
            return self  # type: ignore[return-value]  # the class's own attribute: the docs'
        return getattr(view._ledger, self.field)  # type: ignore[attr-defined,no-any-return]


_serials = itertools.count()


@dataclass(eq=False, slots=True)
class Ledger:
    """A batch's counts, under one lock (items finish in many threads)."""

    items: int = 0
    calls: int = 0
    failures: int = 0
    cleanups: int = 0
    cleanup_failures: int = 0
    cache_clears: int = 0
    gc_runs: int = 0
    gc_seconds: float = 0.0
    ooms: int = 0
    oom_retries: int = 0
    batch_size_reductions: int = 0
    skipped: int = 0
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    serial: int = field(default_factory=lambda: next(_serials), repr=False)
    """This ledger's number, marked on the errors it counted (see :meth:`oom`)."""

    def cleanup(self, outcome: CleanupOutcome | None) -> None:
        """A cleanup memscope made; ``None`` means it failed."""
        with self.lock:
            if outcome is None:
                self.cleanup_failures += 1
                return
            if outcome.failed:
                self.cleanup_failures += 1
            else:
                self.cleanups += 1
            self.cache_clears += outcome.cache_clears
            self.gc_runs += outcome.gc_runs
            self.gc_seconds += outcome.gc_seconds

    def collection(self, gc_seconds: float, cache_clears: int) -> None:
        """A collection memscope ran outside a cleanup step (one the leak watch asked for)."""
        with self.lock:
            self.gc_runs += 1
            self.gc_seconds += gc_seconds
            self.cache_clears += cache_clears

    def oom(self, error: BaseException, *, retried: bool, reduced: bool = False) -> bool:
        """An out-of-memory error met; returns whether it is new to this ledger (one failure
        seen by several layers counts once)."""
        with self.lock:
            new = _first_sighting(error, self.serial)
            self.ooms += int(new)
            self.oom_retries += int(retried)
            self.batch_size_reductions += int(reduced)
        return new

    def peaks(self, allocated: int | None, reserved: int | None) -> None:
        """Fold peak figures seen elsewhere (a nested batch, a reset) into the batch's."""
        with self.lock:
            self.peak_allocated = _larger(self.peak_allocated, allocated)
            self.peak_reserved = _larger(self.peak_reserved, reserved)

    def figures(self) -> dict[str, Any]:
        """The counts, as the report's fields."""
        with self.lock:
            return {name: getattr(self, name) for name in _COUNTS}


# The ledger's counts: every field but its lock and its number, in the order declared.
_COUNTS = tuple(
    counted.name for counted in fields(Ledger) if counted.name not in ("lock", "serial")
)


def _first_sighting(error: BaseException, serial: int) -> bool:
    """Whether the ledger numbered ``serial`` meets ``error`` for the first time.

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
    seen_before = any(serial in getattr(link, "_memscope_counted_by", ()) for link in chain)
    marks: frozenset[int] = getattr(error, "_memscope_counted_by", frozenset())
    # An exception type without a __dict__ cannot be marked; it may then count twice.
    with contextlib.suppress(AttributeError):
        error._memscope_counted_by = marks | {serial}  # type: ignore[attr-defined]
    return not seen_before


class CleanupStats:
    """What ``@auto_clear`` has done for one decorated function: a live, read-only view.

    One view per decorated function, of the function's own ledger, so a reference taken
    once (by an outer decorator, say) stays current. Inside a ``managed_batch`` the
    cleanups are the batch's and appear in its report, not here.
    """

    __slots__ = ("_ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    calls = LedgerCount("calls", "Calls finished (returned or raised).")
    errors = LedgerCount("failures", "Calls that raised.")
    cleanups = LedgerCount("cleanups", "Cleanup steps the function ran itself.")
    gc_runs = LedgerCount("gc_runs", "``gc.collect()`` calls its cleanups made.")
    cleanup_failures = LedgerCount("cleanup_failures", "Cleanups that failed (logged).")
    ooms = LedgerCount("ooms", "Out-of-memory failures of its calls, retried or not.")
    oom_retries = LedgerCount("oom_retries", "Calls made again after an out-of-memory error.")

    def as_dict(self) -> dict[str, int]:
        """The counts as a dict."""
        return {name: getattr(self, name) for name in _STATS_ORDER}

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value}" for name, value in self.as_dict().items())
        return f"CleanupStats({fields})"


# The view's counts, in the order the class declares them.
_STATS_ORDER = tuple(
    name for name, value in vars(CleanupStats).items() if isinstance(value, LedgerCount)
)
