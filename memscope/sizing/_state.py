"""What a size search has learned: one frozen snapshot, replaced whole under a lock.

:class:`AdaptiveBatchState` holds the current :class:`AdaptiveBatchSnapshot` and swaps in the
next one (the rules of :mod:`memscope.sizing._rules`) under its lock, so concurrent calls
never lose an update, and a reader (who needs no lock: reading one reference is atomic)
always sees figures that belong together.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from memscope.sizing._options import Sizing, SizingKeywords, resolve_sizing
from memscope.sizing._rules import after_oom, after_success, choose_attempt
from memscope.sizing._snapshot import (
    UNLIMITED,
    AdaptiveBatchSnapshot,
    Attempt,
    Work,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AdaptiveBatchSnapshot", "AdaptiveBatchState"]

logger = logging.getLogger("memscope")

Value = TypeVar("Value")


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

    __slots__ = ("__weakref__", "_initial", "_lock", "_sizing", "_snapshot")

    start = _Learned[int]()
    """The first size tried, and the largest ever used."""
    factor = _Learned[float]()
    """What a size is multiplied by after an out-of-memory error, where nothing is measured."""
    min_size = _Learned[int]()
    """The smallest size tried."""
    regrow_after = _Learned[int | None]()
    """Successes in a row after which a larger size is tried; ``None``: never."""
    headroom = _Learned[float]()
    """The share of the available memory that predicted sizes leave unused."""
    measure = _Learned[bool]()
    """Whether sizes are predicted from measured memory where the device can be measured."""
    current_size = _Learned[int]()
    """The size in use: the last prediction, or the size the next call starts with."""
    sizes_tried = _Learned[tuple[int, ...]]()
    """Every size tried so far, each once, in the order first tried."""
    successes = _Learned[int]()
    """Calls (or chunks) that completed."""
    oom_count = _Learned[int]()
    """Out-of-memory errors caught, regrowth attempts included."""
    reductions = _Learned[int]()
    """How often an out-of-memory error made ``current_size`` go down."""
    regrowths = _Learned[int]()
    """How often the size went up after a run of successes (past a size that had failed)."""
    failed_regrowths = _Learned[int]()
    """Regrowth attempts that ran out of memory (and went back to the smaller size)."""
    memory_per_item = _Learned[float | None]()
    """Bytes one item added to the peak, as last measured; ``None``: nothing measured yet."""
    measurements = _Learned[int]()
    """Successes whose peak memory was measured."""
    predicted_size = _Learned[int | None]()
    """The size of the last attempt chosen from a prediction; ``None``: none yet."""
    predictions = _Learned[int]()
    """Attempts whose size came from a prediction."""
    wrong_predictions = _Learned[int]()
    """Predicted sizes that ran out of memory."""
    memory_per_item_floor = _Learned[float | None]()
    """The least memory per item the wrong predictions prove; predictions never assume less."""
    smallest_failed_size = _Learned[int | None]()
    """The smallest size that ran out of memory; predictions stay below it."""

    def __init__(self, sizing: Sizing | None = None, /, **options: Unpack[SizingKeywords]) -> None:
        """``AdaptiveBatchState(Sizing(start=64))``, or ``AdaptiveBatchState(start=64)``."""
        checked = resolve_sizing("AdaptiveBatchState", sizing, options)
        self._sizing = checked
        self._initial = AdaptiveBatchSnapshot.initial(checked)
        self._snapshot = self._initial
        self._lock = threading.Lock()

    @property
    def sizing(self) -> Sizing:
        """The sizing options the state was made with."""
        return self._sizing

    def __repr__(self) -> str:
        snapshot = self._snapshot
        learned = ""
        if snapshot.memory_per_item is not None:
            learned = (
                f", memory_per_item={snapshot.memory_per_item:.0f}, "
                f"predicted_size={snapshot.predicted_size}, "
                f"wrong_predictions={snapshot.wrong_predictions}"
            )
        return (
            f"AdaptiveBatchState(current_size={snapshot.current_size}, start={snapshot.start}, "
            f"min_size={snapshot.min_size}, oom_count={snapshot.oom_count}, "
            f"reductions={snapshot.reductions}, regrowths={snapshot.regrowths}{learned})"
        )

    def snapshot(self) -> AdaptiveBatchSnapshot:
        """Everything learned so far, as of now (later updates replace it, never change it)."""
        return self._snapshot

    def reset(self) -> None:
        """Forget everything learned: start again at ``start``, counters at zero."""
        with self._lock:
            self._snapshot = self._initial

    # The search's updates, each one atomic.

    def _choose(
        self, work: Work = UNLIMITED, available: int | None = None, measurable: bool = False
    ) -> Attempt:
        with self._lock:
            attempt, self._snapshot = choose_attempt(self._snapshot, work, available, measurable)
        return attempt

    def _record_success(self, attempt: Attempt, used: int | None = None) -> None:
        with self._lock:
            before = self._snapshot
            self._snapshot = after_success(before, attempt, used)
            after = self._snapshot
        if after.regrowths > before.regrowths:
            logger.info("batch size grew back to %d", attempt.size)
        if after.measurements > before.measurements and after.memory_per_item is not None:
            logger.debug(
                "measured %.0f bytes per item at batch size %d",
                after.memory_per_item,
                attempt.size,
            )

    def _record_oom(self, attempt: Attempt, work: Work = UNLIMITED) -> tuple[Attempt | None, bool]:
        """The attempt to retry with (``None``: none left), and whether ``current_size`` went
        down because of this error."""
        with self._lock:
            before = self._snapshot
            retry, self._snapshot = after_oom(before, attempt, work)
            return retry, self._snapshot.reductions > before.reductions
