"""The machinery of the chunk entry points: the search over one call's chunks, and the call.

The size search is :mod:`memscope.sizing._search`'s; :class:`_ChunkSearch` says what an attempt
is (the function on the next ``size`` items) and when the work is done (no items left), and
checks and combines what the chunks return. :class:`_ChunkCall` is what one call of
:func:`~memscope.process_in_chunks` (or its siblings in :mod:`memscope.sizing._chunks`) was
told, checked once into a search.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from memscope import _context as context
from memscope.estimation import ChunkMemoryModel
from memscope.exceptions import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
)
from memscope.manager import MemoryManager
from memscope.sizing._items import (
    _check_combine,
    _check_concatenable,
    _check_items,
    _check_memory_sizing,
    _check_state,
    _combined,
    _item_source,
    _Items,
    _MemorySizing,
    _MemoryWork,
    _SlicedItems,
    _StreamedItems,
)
from memscope.sizing._options import Sizing, SizingKeywords, SizingOptions, resolve_sizing
from memscope.sizing._search import Call, SizeSearch
from memscope.sizing._snapshot import Attempt, CountedWork, Work
from memscope.sizing._state import AdaptiveBatchState
from memscope.typing import Combine, DeviceLike

if TYPE_CHECKING:
    pass


__all__ = ["ChunkKeywords"]


class _ChunkSearch(SizeSearch[Any]):
    """The search over the chunks of one ``process_in_chunks`` (or ``iter_chunks``) call.

    ``combine`` ``None`` keeps no result: the driver hands each on (``iter_chunks``), or the
    function returns nothing worth keeping.
    """

    def __init__(
        self,
        name: str,
        function: Callable[[Any], Any],
        items: _Items,
        combine: Combine | None,
        options: SizingOptions,
        sizing: _MemorySizing | None,
        state: AdaptiveBatchState | None,
        hands_on: bool,
    ) -> None:
        batch = context.current()
        super().__init__(
            name=name,
            # Without a state passed in, what is learned lasts for this call: the next call
            # may get other items.
            state=AdaptiveBatchState(options.sizing) if state is None else state,
            manager=options.manager_for(batch),
            batch=batch,
            figures=sizing is not None,
            hands_on=hands_on,
        )
        self.function = function
        self.items = items
        self.combine = combine
        self.sizing = sizing
        self.results: list[Any] = []

    def _attempt_at(self, attempt: Attempt) -> Call:
        # A stream may end before the attempt's size: only now, reading it, is that known.
        available = self.items.available(attempt.size)
        if available < attempt.size:
            attempt = replace(
                attempt,
                size=available,
                units=self._work().units_of(available),
                regrowing_from=None,
            )
        return super()._attempt_at(attempt)

    def _call(self, size: int) -> Call:
        return Call(self.function, (self.items.chunk(size),), {})

    def _accept(self, attempt: Attempt, result: Any) -> None:
        if self.combine is not None:
            if self.combine == "concat":
                _check_concatenable(result, self.results[0] if self.results else result)
            self.results.append(result)
        self.items.advance(attempt.size)

    def _finished(self) -> bool:
        return self.items.finished()

    def _result(self) -> Any:
        if self.combine is None:
            return None
        return _combined(self.results, self.combine)

    def _items_left(self) -> int | None:
        return self.items.left()

    def _work(self) -> Work:
        if self.sizing is None:
            return CountedWork(self._items_left())
        left = self._items_left()
        assert isinstance(self.items, _SlicedItems)
        assert left is not None
        return _MemoryWork(self.sizing, self.items.position, left)

    def _check_reading(self, available: int | None) -> None:
        if self.sizing is not None and available is None and not self.sizes:
            raise MemoryFiguresUnavailableError(
                f"{self.name}: chunks sized by memory_model need the memory available on "
                f"{self.manager.resolved_device}, which it does not report; use a manager "
                "with a budget (MemoryManager(device, budget=...)) or, on the CPU, host=True"
            )

    def _where(self) -> str:
        return f" for the chunk at {self.items.where()}"


class ChunkKeywords(SizingKeywords, total=False):
    """The keywords every chunk entry point takes (``combine`` aside): the sizing (a
    :class:`Sizing`, or its fields), the memory model, where memory is freed, the state."""

    sizing: Sizing | None
    memory_model: ChunkMemoryModel | None
    image_size: Callable[[Any], tuple[int, int]] | None
    manager: MemoryManager | None
    device: DeviceLike
    state: AdaptiveBatchState | None


# The keywords a chunk call takes besides the sizing fields, as ChunkKeywords declares them.
_CALL_FIELDS = tuple(
    name for name in ChunkKeywords.__annotations__ if name not in SizingKeywords.__annotations__
)


@dataclass(frozen=True, slots=True)
class _ChunkCall:
    """What one call of a chunk entry point was told, before anything is checked."""

    sizing: Sizing | None
    options: Mapping[str, object]
    memory_model: object
    image_size: object
    combine: object
    manager: object
    device: DeviceLike
    state: object

    @classmethod
    def of(cls, combine: object, keywords: Mapping[str, object]) -> _ChunkCall:
        """The call told ``combine`` and ``keywords`` (the sizing fields among them)."""
        options = dict(keywords)
        given = {name: options.pop(name, None) for name in _CALL_FIELDS}
        return cls(options=options, combine=combine, **given)  # type: ignore[arg-type]

    def search(
        self, where: str, function: object, items: Any, *, awaited: bool, hands_on: bool = False
    ) -> _ChunkSearch:
        """Every argument checked, then the search; nothing is called yet (no item is read).

        With ``awaited``, the search's attempts return awaitables, for the async driver; with
        ``hands_on``, it hands each chunk's result on.
        """
        kept = _check_state(self.state)
        if kept is not None:
            if self.sizing is not None or self.options:
                given = ", ".join(
                    [f"{name}={value!r}" for name, value in self.options.items()]
                    + ([] if self.sizing is None else [f"sizing={self.sizing!r}"])
                )
                raise InvalidArgumentError(
                    f"{where}(): with state=, the state's sizing is used: pass the sizing to "
                    f"the AdaptiveBatchState, not here (got {given} and state={kept!r})"
                )
            sizing = kept.sizing
        else:
            sizing = resolve_sizing(where, self.sizing, self.options)
        if sizing.start is None:
            if self.memory_model is None:
                raise InvalidArgumentTypeError(
                    f"{where} needs start= (the first chunk's length in items) or "
                    "memory_model= (to size chunks by memory), or state= (an AdaptiveBatchState)"
                )
            # Sized by memory without a cap, a chunk may hold every item.
            sizing = replace(sizing, start=max(_check_items(items), sizing.min_size))
        options = SizingOptions(sizing, cast("MemoryManager | None", self.manager), self.device)
        checked_combine = _check_combine(self.combine)
        if not callable(function):
            raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
        source = _item_source(items)
        if self.memory_model is not None and isinstance(source, _StreamedItems):
            raise InvalidArgumentTypeError(
                "memory_model needs items that can be sliced (a sequence or a tensor), to "
                f"read the image sizes of the next items; got {type(items).__name__}: pass "
                "list(items)"
            )
        memory = _check_memory_sizing(self.memory_model, self.image_size, items)
        by_memory = None if memory is None else _MemorySizing(memory[0], items, memory[1])
        name = getattr(function, "__qualname__", repr(function))
        attempt = _awaiting(function) if awaited else function
        return _ChunkSearch(
            name, attempt, source, checked_combine, options, by_memory, kept, hands_on
        )


def _awaiting(function: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """``function``, refusing a result that cannot be awaited with a clear error."""

    async def call(chunk: Any) -> Any:
        returned = function(chunk)
        if not inspect.isawaitable(returned):
            raise InvalidArgumentTypeError(
                f"process_in_chunks_async needs a function that returns an awaitable; "
                f"{function!r} returned {type(returned).__name__}: use process_in_chunks"
            )
        return await returned

    return call
