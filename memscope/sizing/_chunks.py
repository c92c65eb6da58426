"""``process_in_chunks``: a function over consecutive chunks of items, shorter where memory fails.

The size search is :mod:`memscope.sizing._search`'s; this module says what an attempt is (the
function on the next ``size`` items) and when the work is done (no items left), and checks
and combines what the chunks return. Chunks are counted in items, or, with a memory model,
sized by memory: the unit of work is then one byte the model estimates, so a chunk of large
images holds fewer of them than a chunk of small ones.
"""

from __future__ import annotations

import inspect
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import torch

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
from memscope.sizing._search import (
    Call,
    SizeSearch,
    drive,
    drive_async,
    run_search,
    run_search_async,
)
from memscope.sizing._snapshot import Attempt, CountedWork, Work
from memscope.sizing._state import AdaptiveBatchState
from memscope.typing import Combine, DeviceLike

if TYPE_CHECKING:
    from typing_extensions import Unpack

Item = TypeVar("Item")
Result = TypeVar("Result")

__all__ = [
    "ChunkKeywords",
    "iter_chunks",
    "iter_chunks_async",
    "process_in_chunks",
    "process_in_chunks_async",
]


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


@overload
def process_in_chunks(
    function: Callable[[torch.Tensor], object],
    items: torch.Tensor,
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Any: ...


@overload
def process_in_chunks(
    function: Callable[[Sequence[Item]], object],
    items: Iterable[Item],
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Any: ...


def process_in_chunks(
    function: Callable[[Any], Any],
    items: Any,
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Any:
    """Call ``function(chunk)`` on consecutive chunks of ``items``; shrink them on OOM.

    ``items`` is a sequence (list, tuple) or a tensor, sliced into chunks (a tensor along its
    first dimension), or any other iterable (a generator, a dataset's iterator), read as a
    stream: each chunk is then a list of the next items, read as the chunk is first tried,
    and a retry is a shorter slice of those already read. No item past the chunk in progress
    is read (knowing whether the items are finished reads the next chunk's first item), so a
    stream longer than memory can be processed.
    The first chunk is ``start`` items long. Later chunks are sized as
    :func:`~memscope.adaptive_batch` sizes its calls: from the memory each chunk was measured
    to need, per item, and the memory the device has available (less ``headroom``), where the
    device can be measured; by ``factor`` elsewhere or with ``measure=False``. When a chunk
    runs out of memory, its memory is freed and the same chunk is retried shorter (never
    below ``min_size``), and the rest continue from what was learned: no item is skipped, and
    every item is in exactly one chunk that succeeded. (A call that failed may have done part
    of its work before running out of memory; its result is dropped.) ``regrow_after``,
    ``manager`` and ``device`` work as for :func:`~memscope.adaptive_batch`; what is learned
    lasts for this call, unless ``state`` is given.

    **Sizes kept across calls.** ``state``, an :class:`~memscope.AdaptiveBatchState`
    (``AdaptiveBatchState(start=64)``), holds what is learned, and the sizing options: pass
    it to every call (a job that calls ``process_in_chunks`` once per file, say) and each
    call starts where the last one left off, at the size that worked and with what was
    measured, instead of running out of memory again. With ``state``, ``start``,
    ``factor``, ``min_size``, ``regrow_after``, ``headroom`` and ``measure`` are the
    state's; passing any of them too is an :class:`~memscope.InvalidArgumentError`. Use one
    state per kind of work (chunks sized by a memory model learn bytes per estimated byte,
    not per item).

    **Chunks sized by memory.** With ``memory_model`` (an
    :class:`~memscope.ImageMemoryModel`, or a
    :class:`~memscope.estimation.CalibratedImageMemoryModel` from
    :func:`~memscope.sizing.calibrate`), chunks are sized by the memory the model says
    their images need, not by a count: each chunk is the longest run of the next items whose
    estimate fits in the memory available (less ``headroom``), so one 2048x2048 image and
    sixteen 512x512 images are each one chunk. ``image_size(item)`` gives an item's
    ``(width, height)``; for a tensor of images it defaults to its last two dimensions.
    ``start``, if given, caps a chunk's length. Once a chunk is measured, its measured memory
    over the model's estimate scales the estimates of the next ones; a chunk that runs out
    of memory shrinks them. An item whose estimate alone exceeds what is available is a
    chunk by itself. The memory available must be known: a device that reports it, or a
    manager with a budget (or, on the CPU, ``host=True``); otherwise
    :class:`~memscope.exceptions.MemoryFiguresUnavailableError` is raised before any call.

    How the results of the chunks come back, by ``combine``:

    * ``"concat"`` (the default): one result whatever the chunk sizes were. Tensors are
      joined with ``torch.cat`` along the first dimension; lists and tuples are joined
      into one flat list. Any other result type raises
      :class:`~memscope.InvalidArgumentTypeError` as soon as the first chunk returns it.
    * ``"chunks"``: the list of per-chunk results, in order (its length depends on the
      chunk sizes, and so on memory).
    * a function: called with that list; its return value is returned.
    * ``None``: for a function that writes its results somewhere and returns nothing; no
      result is kept or checked, and ``None`` is returned.

    To handle each chunk's result as it completes, without keeping them all, use
    :func:`iter_chunks`.

    Empty ``items`` call nothing and give ``[]`` (whatever ``combine`` is, but a function,
    which gets ``[]``, and ``None``, which gives ``None``). When ``min_size`` runs out of
    memory too, :class:`~memscope.BatchSizeExhaustedError` is raised from the last
    out-of-memory error.

    Inside a ``managed_batch``, chunked work is batch work: each chunk that succeeds with
    ``n`` items counts ``n`` items into the batch (none inside a ``track()`` loop body, whose
    item is the unit), and every out-of-memory error and the cleanup after it count into its
    report.
    """
    if inspect.iscoroutinefunction(function):
        raise InvalidArgumentTypeError(
            f"{function!r} is a coroutine function: use process_in_chunks_async for it"
        )
    call = _ChunkCall.of(combine, options)
    search = call.search("process_in_chunks", function, items, awaited=False)
    return run_search(search)


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


@overload
def process_in_chunks_async(
    function: Callable[[torch.Tensor], Awaitable[object]],
    items: torch.Tensor,
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Coroutine[Any, Any, Any]: ...


@overload
def process_in_chunks_async(
    function: Callable[[Sequence[Item]], Awaitable[object]],
    items: Iterable[Item],
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Coroutine[Any, Any, Any]: ...


def process_in_chunks_async(
    function: Callable[[Any], Awaitable[Any]],
    items: Any,
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Coroutine[Any, Any, Any]:
    """:func:`process_in_chunks` for a function that returns an awaitable; awaits each chunk.

    Await what it returns. The arguments are checked when it is called, before there is
    anything to await: a bad one raises at once.
    """
    call = _ChunkCall.of(combine, options)
    search = call.search("process_in_chunks_async", function, items, awaited=True)
    return run_search_async(search)


@overload
def iter_chunks(
    function: Callable[[torch.Tensor], Result],
    items: torch.Tensor,
    **options: Unpack[ChunkKeywords],
) -> Generator[Result, None, None]: ...


@overload
def iter_chunks(
    function: Callable[[Sequence[Item]], Result],
    items: Iterable[Item],
    **options: Unpack[ChunkKeywords],
) -> Generator[Result, None, None]: ...


def iter_chunks(
    function: Callable[[Any], Any],
    items: Any,
    **options: Unpack[ChunkKeywords],
) -> Generator[Any, None, None]:
    """:func:`process_in_chunks`, yielding each chunk's result as the chunk completes.

    The chunks are the same (every item in exactly one chunk that succeeded, in order), but
    nothing is combined or kept: each successful chunk's result is yielded before the next
    chunk is read or tried, so results can be written out as they come and a stream of
    items is processed in memory for one chunk. A chunk that ran out of memory yields
    nothing; its retry yields the result. The arguments are checked when it is called,
    before the first ``next()``: a bad one raises at once. Closing the iterator early stops
    the work after the chunk in progress.
    """
    if inspect.iscoroutinefunction(function):
        raise InvalidArgumentTypeError(
            f"{function!r} is a coroutine function: use iter_chunks_async for it"
        )
    call = _ChunkCall.of(None, options)
    return drive(call.search("iter_chunks", function, items, awaited=False, hands_on=True))


@overload
def iter_chunks_async(
    function: Callable[[torch.Tensor], Awaitable[Result]],
    items: torch.Tensor,
    **options: Unpack[ChunkKeywords],
) -> AsyncGenerator[Result, None]: ...


@overload
def iter_chunks_async(
    function: Callable[[Sequence[Item]], Awaitable[Result]],
    items: Iterable[Item],
    **options: Unpack[ChunkKeywords],
) -> AsyncGenerator[Result, None]: ...


def iter_chunks_async(
    function: Callable[[Any], Awaitable[Any]],
    items: Any,
    **options: Unpack[ChunkKeywords],
) -> AsyncGenerator[Any, None]:
    """:func:`iter_chunks` for a function that returns an awaitable: ``async for`` over it.

    ``items`` is read synchronously (a sequence, a tensor or an ordinary iterable). The
    arguments are checked when it is called: a bad one raises at once.
    """
    call = _ChunkCall.of(None, options)
    return drive_async(
        call.search("iter_chunks_async", function, items, awaited=True, hands_on=True)
    )
