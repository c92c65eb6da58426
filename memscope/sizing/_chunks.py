"""``process_in_chunks``: a function over consecutive chunks of items, shorter where memory fails.

The four entry points (sync and async, all results at once or one by one) check their call
once into a search (:mod:`memscope.sizing._chunk_search`) and drive it. Chunks are counted in
items, or, with a memory model, sized by memory: the unit of work is then one byte the model
estimates, so a chunk of large images holds fewer of them than a chunk of small ones.
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
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch

from memscope.exceptions import InvalidArgumentTypeError
from memscope.sizing._chunk_search import ChunkKeywords, _ChunkCall
from memscope.sizing._search import drive, drive_async, run_search, run_search_async
from memscope.typing import Combine

if TYPE_CHECKING:
    from typing_extensions import Unpack

Item = TypeVar("Item")
Result = TypeVar("Result")

__all__ = [
    "iter_chunks",
    "iter_chunks_async",
    "process_in_chunks",
    "process_in_chunks_async",
]


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
    function: Callable[[list[Item]], object],
    items: list[Item],
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Any: ...


@overload
def process_in_chunks(
    function: Callable[[Sequence[Item]], object],
    items: Sequence[Item],
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Any: ...


@overload
def process_in_chunks(
    function: Callable[[list[Item]], object],
    items: Iterator[Item],
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
    function: Callable[[list[Item]], Awaitable[object]],
    items: list[Item],
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Coroutine[Any, Any, Any]: ...


@overload
def process_in_chunks_async(
    function: Callable[[Sequence[Item]], Awaitable[object]],
    items: Sequence[Item],
    *,
    combine: Combine | None = "concat",
    **options: Unpack[ChunkKeywords],
) -> Coroutine[Any, Any, Any]: ...


@overload
def process_in_chunks_async(
    function: Callable[[list[Item]], Awaitable[object]],
    items: Iterator[Item],
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
    function: Callable[[list[Item]], Result],
    items: list[Item],
    **options: Unpack[ChunkKeywords],
) -> Generator[Result, None, None]: ...


@overload
def iter_chunks(
    function: Callable[[Sequence[Item]], Result],
    items: Sequence[Item],
    **options: Unpack[ChunkKeywords],
) -> Generator[Result, None, None]: ...


@overload
def iter_chunks(
    function: Callable[[list[Item]], Result],
    items: Iterator[Item],
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
    function: Callable[[list[Item]], Awaitable[Result]],
    items: list[Item],
    **options: Unpack[ChunkKeywords],
) -> AsyncGenerator[Result, None]: ...


@overload
def iter_chunks_async(
    function: Callable[[Sequence[Item]], Awaitable[Result]],
    items: Sequence[Item],
    **options: Unpack[ChunkKeywords],
) -> AsyncGenerator[Result, None]: ...


@overload
def iter_chunks_async(
    function: Callable[[list[Item]], Awaitable[Result]],
    items: Iterator[Item],
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
