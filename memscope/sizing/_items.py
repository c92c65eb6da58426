"""What chunks are cut from: items sliced or streamed, the checks of what a chunk entry
point was given, and chunks sized by a memory model (the unit of work is then a byte the
model estimates)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import torch

from memscope._validation import check_image_size
from memscope.estimation import ChunkMemoryModel
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.sizing._state import AdaptiveBatchState
from memscope.typing import Combine

__all__: list[str] = []

ImageSize = Callable[[Any], tuple[int, int]]


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


class _SlicedItems:
    """Items that can be sliced (a sequence, a tensor): a chunk is a slice of them."""

    def __init__(self, items: Any, total: int) -> None:
        self.items = items
        self.total = total
        self.position = 0

    def chunk(self, size: int) -> Any:
        return self.items[self.position : self.position + size]

    def available(self, size: int) -> int:
        return min(size, self.total - self.position)

    def advance(self, count: int) -> None:
        self.position += count

    def finished(self) -> bool:
        return self.position >= self.total

    def left(self) -> int | None:
        return self.total - self.position

    def where(self) -> str:
        return f"item {self.position} (of {self.total})"


class _StreamedItems:
    """Items read one by one from an iterator: only the chunk in progress is buffered.

    A chunk is a list of the next ``size`` items, read as it is first asked for; a retry
    after an out-of-memory error is a shorter slice of those already read. Whether the
    items are finished is known by reading the next one, which is the first of the next chunk.
    """

    def __init__(self, items: Iterable[Any]) -> None:
        self.iterator: Iterator[Any] = iter(items)
        self.buffer: list[Any] = []
        self.ended = False
        self.position = 0

    def _read_up_to(self, size: int) -> None:
        while len(self.buffer) < size and not self.ended:
            try:
                self.buffer.append(next(self.iterator))
            except StopIteration:
                self.ended = True

    def chunk(self, size: int) -> list[Any]:
        self._read_up_to(size)
        return self.buffer[:size]

    def available(self, size: int) -> int:
        self._read_up_to(size)
        return min(size, len(self.buffer))

    def advance(self, count: int) -> None:
        del self.buffer[:count]
        self.position += count

    def finished(self) -> bool:
        self._read_up_to(1)
        return not self.buffer

    def left(self) -> int | None:
        return len(self.buffer) if self.ended else None

    def where(self) -> str:
        return f"item {self.position}"


_Items = _SlicedItems | _StreamedItems


def _item_source(items: object) -> _Items:
    """The items, sliced where they can be, else read as a stream; or an error naming them."""
    if isinstance(items, (torch.Tensor, Sequence)):
        return _SlicedItems(items, _check_items(items))
    if isinstance(items, Iterable):
        return _StreamedItems(items)
    raise InvalidArgumentTypeError(
        "items must be a sequence (a list, a tuple), a tensor, or another iterable (a "
        f"generator, say), got {items!r} of type {type(items).__name__}"
    )


def _check_combine(combine: object) -> Combine | None:
    if combine is None or combine in ("concat", "chunks") or callable(combine):
        return cast("Combine | None", combine)
    if isinstance(combine, str):
        raise InvalidArgumentError(
            f"combine must be 'concat', 'chunks', a function or None, got {combine!r}"
        )
    raise InvalidArgumentTypeError(
        f"combine must be 'concat', 'chunks', a function or None, got {combine!r} "
        f"of type {type(combine).__name__}"
    )


def _check_state(state: object) -> AdaptiveBatchState | None:
    if state is None or isinstance(state, AdaptiveBatchState):
        return state
    raise InvalidArgumentTypeError(
        "state must be an AdaptiveBatchState (AdaptiveBatchState(start=...)) or None, "
        f"got {state!r} of type {type(state).__name__}"
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


class _MemorySizing:
    """How much memory chunks of ``items`` need, by a memory model and each item's image size.

    Image sizes are read as they are first needed, so a chunk never asks for more of them
    than about twice its own length.
    """

    def __init__(self, model: ChunkMemoryModel, items: Any, image_size: ImageSize) -> None:
        self.model = model
        self.items = items
        self.image_size = image_size
        self.sizes: list[tuple[int, int]] = []

    def size_of(self, index: int) -> tuple[int, int]:
        while len(self.sizes) <= index:
            position = len(self.sizes)
            self.sizes.append(
                check_image_size(
                    self.image_size(self.items[position]), f"image_size(items[{position}])"
                )
            )
        return self.sizes[index]

    def bytes_of(self, position: int, count: int) -> int:
        """What the model says a chunk of ``count`` items from ``position`` needs."""
        if count <= 0:
            return 0
        sizes = [self.size_of(index) for index in range(position, position + count)]
        return int(self.model.estimate_chunk(sizes))


class _MemoryWork:
    """The items left, measured in the bytes the model estimates for them."""

    prior_memory_per_unit = 1.0
    """Before anything is measured, the model is taken at its word."""

    def __init__(self, sizing: _MemorySizing, position: int, left: int) -> None:
        self.sizing = sizing
        self.position = position
        self.limit: int | None = left

    def units_of(self, size: int) -> int:
        return self.sizing.bytes_of(self.position, size)

    def largest_within(self, units: float) -> int:
        left = self.limit or 0
        if left == 0 or self.units_of(1) > units:
            return 0
        # Gallop to a length that no longer fits (or the end), then bisect: the estimate
        # grows with the length, and only the image sizes up to about twice the answer are
        # read.
        fits, too_long = 1, 2
        while too_long <= left and self.units_of(too_long) <= units:
            fits, too_long = too_long, too_long * 2
        if too_long > left:
            if self.units_of(left) <= units:
                return left
            too_long = left
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if self.units_of(middle) <= units:
                fits = middle
            else:
                too_long = middle
        return fits


def _check_memory_sizing(
    memory_model: object, image_size: object, items: Any
) -> tuple[ChunkMemoryModel, ImageSize] | None:
    """The memory model and the way to read each item's image size, checked; ``None`` when
    chunks are counted in items."""
    if memory_model is None:
        if image_size is not None:
            raise InvalidArgumentError(
                f"image_size is used only with memory_model, got image_size={image_size!r} "
                "and no memory_model"
            )
        return None
    if not callable(getattr(memory_model, "estimate_chunk", None)):
        raise InvalidArgumentTypeError(
            "memory_model must have an estimate_chunk(image_sizes) method (an "
            "ImageMemoryModel or a CalibratedImageMemoryModel), got "
            f"{memory_model!r}"
        )
    if image_size is None:
        if isinstance(items, torch.Tensor) and items.dim() >= 3:
            return cast(ChunkMemoryModel, memory_model), _tensor_image_size
        raise InvalidArgumentTypeError(
            "memory_model needs image_size=, a function from an item to its (width, height), "
            "to size chunks of a sequence by memory (for a tensor of images, (N, ..., H, W), "
            "it reads the last two dimensions)"
        )
    if not callable(image_size):
        raise InvalidArgumentTypeError(
            f"image_size must be a function from an item to its (width, height), got {image_size!r}"
        )
    return cast(ChunkMemoryModel, memory_model), cast(ImageSize, image_size)


def _tensor_image_size(item: torch.Tensor) -> tuple[int, int]:
    return int(item.shape[-1]), int(item.shape[-2])
