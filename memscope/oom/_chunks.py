"""``process_in_chunks``: a function over consecutive chunks of items, shorter where memory fails.

The size search is :mod:`memscope.oom._search`'s; this module says what an attempt is (the
function on the next ``size`` items) and when the work is done (no items left), and checks
and combines what the chunks return.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

import torch

from memscope import _context as context
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import MemoryManager
from memscope.oom._options import SizingOptions
from memscope.oom._search import Call, SizeSearch, run_search, run_search_async
from memscope.oom._state import AdaptiveBatchState, Attempt
from memscope.typing import Combine, DeviceLike

__all__ = ["process_in_chunks", "process_in_chunks_async"]


def _check_items(items: object) -> int:
    """How many items there are, or an error if they cannot be sliced into chunks."""
    if isinstance(items, torch.Tensor):
        if items.dim() == 0:
            raise InvalidArgumentTypeError(
                "items must have at least one dimension to be split into chunks, "
                f"got a 0-dimensional tensor {items!r}"
            )
        return int(items.shape[0])
    if isinstance(items, Sequence):
        return len(items)
    raise InvalidArgumentTypeError(
        "items must be a sequence (a list, a tuple) or a tensor, so that it can be sliced "
        f"into chunks; got {type(items).__name__}"
    )


def _check_combine(combine: object) -> Combine:
    if combine in ("concat", "chunks") or callable(combine):
        return cast(Combine, combine)
    if isinstance(combine, str):
        raise InvalidArgumentError(
            f"combine must be 'concat', 'chunks' or a function, got {combine!r}"
        )
    raise InvalidArgumentTypeError(
        f"combine must be 'concat', 'chunks' or a function, got {combine!r} "
        f"of type {type(combine).__name__}"
    )


def _check_concatenable(result: object, first: object) -> None:
    """Whether ``result`` joins the results so far; ``first`` is the first of them.

    Checked as each result arrives, so a mismatch fails at the first chunk, not the last.
    """
    if isinstance(result, torch.Tensor) and result.dim() == 0:
        raise InvalidArgumentTypeError(
            "combine='concat' cannot concatenate 0-dimensional tensors; a chunk returned "
            f"{result!r}. Pass combine='chunks' or a function"
        )
    if isinstance(first, torch.Tensor) and isinstance(result, torch.Tensor):
        return
    if isinstance(first, (list, tuple)) and isinstance(result, (list, tuple)):
        return
    raise InvalidArgumentTypeError(
        "combine='concat' needs every chunk's result to be a tensor, or every one to be a "
        f"list or tuple; got {type(first).__name__} then {type(result).__name__}. "
        "Pass combine='chunks' to get the per-chunk results, or a function to combine them"
    )


def _combined(results: list[Any], combine: Combine) -> Any:
    if callable(combine):
        return combine(results)
    if combine == "chunks" or not results:
        return results
    if isinstance(results[0], torch.Tensor):
        return torch.cat(results)
    return [item for result in results for item in result]


class _ChunkSearch(SizeSearch[Any]):
    """The search over the chunks of one ``process_in_chunks`` call."""

    def __init__(
        self,
        name: str,
        function: Callable[[Any], Any],
        items: Any,
        total: int,
        combine: Combine,
        options: SizingOptions,
    ) -> None:
        batch = context.active_batch.get()
        settings = options.settings
        super().__init__(
            name=name,
            # What is learned lasts for this call: the next call may get other items.
            state=AdaptiveBatchState(
                start=settings.start,
                factor=settings.factor,
                min_size=settings.min_size,
                regrow_after=settings.regrow_after,
            ),
            manager=options.manager_for(batch),
            batch=batch,
        )
        self.function = function
        self.items = items
        self.total = total
        self.combine = combine
        self.position = 0
        self.results: list[Any] = []

    def _call(self, size: int) -> Call:
        chunk = self.items[self.position : self.position + size]
        return Call(self.function, (chunk,), {})

    def _accept(self, attempt: Attempt, result: Any) -> None:
        if self.combine == "concat":
            _check_concatenable(result, self.results[0] if self.results else result)
        self.results.append(result)
        self.position += attempt.size

    def _finished(self) -> bool:
        return self.position >= self.total

    def _result(self) -> Any:
        return _combined(self.results, self.combine)

    def _items_left(self) -> int:
        return self.total - self.position

    def _where(self) -> str:
        return f" for the chunk at item {self.position} (of {self.total})"


def _chunk_search(
    function: Callable[[Any], Any],
    items: Any,
    *,
    awaited: bool,
    start: object,
    factor: object,
    min_size: object,
    regrow_after: object,
    combine: object,
    manager: object,
    device: DeviceLike,
) -> _ChunkSearch:
    """Every argument checked, then the search; nothing is called yet.

    With ``awaited``, the search's attempts return awaitables, for the async driver.
    """
    options = SizingOptions.checked(
        start=start,
        factor=factor,
        min_size=min_size,
        regrow_after=regrow_after,
        manager=manager,
        device=device,
    )
    checked_combine = _check_combine(combine)
    if not callable(function):
        raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
    total = _check_items(items)
    name = getattr(function, "__qualname__", repr(function))
    attempt = _awaiting(function) if awaited else function
    return _ChunkSearch(name, attempt, items, total, checked_combine, options)


def process_in_chunks(
    function: Callable[[Any], Any],
    items: Any,
    *,
    start: int,
    factor: float = 0.5,
    min_size: int = 1,
    regrow_after: int | None = None,
    combine: Combine = "concat",
    manager: MemoryManager | None = None,
    device: DeviceLike = None,
) -> Any:
    """Call ``function(chunk)`` on consecutive slices of ``items``; shrink them on OOM.

    ``items`` is a sequence (list, tuple) or a tensor (sliced along its first dimension).
    Chunks start ``start`` items long. When a chunk runs out of memory, its memory is freed
    and the same chunk is retried shorter (``int(size * factor)``, never below
    ``min_size``), and the rest continue at that size: no item is skipped, and every item is
    in exactly one chunk that succeeded. (A call that failed may have done part of its work
    before running out of memory; its result is dropped.) ``regrow_after``, ``manager`` and
    ``device`` work as for :func:`~memscope.adaptive_batch`; what is learned lasts for this
    call.

    How the results of the chunks come back, by ``combine``:

    * ``"concat"`` (the default): one result whatever the chunk sizes were. Tensors are
      joined with ``torch.cat`` along the first dimension; lists and tuples are joined
      into one flat list. Any other result type raises
      :class:`~memscope.InvalidArgumentTypeError` as soon as the first chunk returns it.
    * ``"chunks"``: the list of per-chunk results, in order (its length depends on the
      chunk sizes, and so on memory).
    * a function: called with that list; its return value is returned.

    Empty ``items`` call nothing and give ``[]`` (whatever ``combine`` is, but a function,
    which gets ``[]``). When ``min_size`` runs out of memory too,
    :class:`~memscope.BatchSizeExhaustedError` is raised from the last out-of-memory error.

    Inside a ``managed_batch``, chunked work is batch work: each chunk that succeeds with
    ``n`` items counts ``n`` items into the batch (none inside a ``track()`` loop body, whose
    item is the unit), and every out-of-memory error and the cleanup after it count into its
    report.
    """
    if inspect.iscoroutinefunction(function):
        raise InvalidArgumentTypeError(
            f"{function!r} is a coroutine function: use process_in_chunks_async for it"
        )
    search = _chunk_search(
        function,
        items,
        awaited=False,
        start=start,
        factor=factor,
        min_size=min_size,
        regrow_after=regrow_after,
        combine=combine,
        manager=manager,
        device=device,
    )
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


def process_in_chunks_async(
    function: Callable[[Any], Awaitable[Any]],
    items: Any,
    *,
    start: int,
    factor: float = 0.5,
    min_size: int = 1,
    regrow_after: int | None = None,
    combine: Combine = "concat",
    manager: MemoryManager | None = None,
    device: DeviceLike = None,
) -> Coroutine[Any, Any, Any]:
    """:func:`process_in_chunks` for a function that returns an awaitable; awaits each chunk.

    Await what it returns. The arguments are checked when it is called, before there is
    anything to await: a bad one raises at once.
    """
    search = _chunk_search(
        function,
        items,
        awaited=True,
        start=start,
        factor=factor,
        min_size=min_size,
        regrow_after=regrow_after,
        combine=combine,
        manager=manager,
        device=device,
    )
    return run_search_async(search)
