"""How ``@adaptive_batch`` looks to a type checker: usage that ``mypy --strict`` accepts.

``tests/test_sizing_typing.py`` runs ``mypy --strict`` on this file; it is never imported.
A line marked ``# type: ignore[<code>]`` is a mistake the types must catch: ``--strict``
turns on ``warn_unused_ignores``, so the check fails if one of them stops being an error.

What a type checker cannot tell apart (see ``AdaptiveBatchDecorator``): a function whose
first parameter is not an ``int`` looks like a method (``self`` first, the batch size
second), so calling it with one argument too few type-checks; memscope refuses nothing there
at run time either, as the first positional parameter is taken as the batch size.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Coroutine, Generator, Sequence
from typing import Any

import torch
from typing_extensions import assert_type

from memscope import adaptive_batch
from memscope.oom import (
    AdaptiveBatchDecorator,
    AdaptiveBatchFunction,
    AdaptiveBatchMethod,
    AdaptiveBatchSnapshot,
    AdaptiveBatchState,
)
from memscope.sizing import (
    Sizing,
    iter_chunks,
    iter_chunks_async,
    process_in_chunks,
    process_in_chunks_async,
)

# A function: memscope supplies the batch size, callers pass the rest. -------------------


@adaptive_batch(start=32)
def colorize(batch_size: int, images: list[str], *, scale: float = 1.0) -> list[str]:
    return images[:batch_size]


assert_type(colorize(["a.png"]), list[str])
assert_type(colorize(["a.png"], scale=2.0), list[str])
assert_type(colorize(images=["a.png"]), list[str])
as_declared: AdaptiveBatchFunction[[list[str]], list[str]] = colorize

# What it learned.
assert_type(colorize.adaptive_state, AdaptiveBatchState)
assert_type(colorize.adaptive_state.current_size, int)
assert_type(colorize.adaptive_state.sizes_tried, tuple[int, ...])
assert_type(colorize.adaptive_state.regrow_after, int | None)
assert_type(colorize.adaptive_state.snapshot(), AdaptiveBatchSnapshot)
assert_type(colorize.adaptive_state.snapshot().oom_count, int)

# Mistakes: passing the batch size, wrong arguments, misreading the result.
colorize(8, ["a.png"])  # type: ignore[call-arg, arg-type]
colorize(["a.png"], batch_size=8)  # type: ignore[call-arg]
colorize([1])  # type: ignore[list-item]
wrong_result: int = colorize(["a.png"])  # type: ignore[assignment]
# What was learned is read-only.
colorize.adaptive_state.current_size = 4  # type: ignore[misc]


# No batch size to supply: not decoratable.
def no_batch_size(images: list[str]) -> None:
    pass


adaptive_batch(start=8)(no_batch_size)  # type: ignore[arg-type]
# The decorator needs its options: a bare @adaptive_batch is refused.
adaptive_batch(colorize)  # type: ignore[arg-type]

# The decorator on its own.
decorate: AdaptiveBatchDecorator = adaptive_batch(start=4, factor=0.5, regrow_after=10)


# Async functions: the call returns an awaitable of the result. -------------------------


@adaptive_batch(start=8)
async def caption(batch_size: int, image: str) -> str:
    return f"{image} x{batch_size}"


async def use_caption() -> None:
    assert_type(await caption("a.png"), str)
    assert_type(caption.adaptive_state, AdaptiveBatchState)
    caption("a.png")  # type: ignore[unused-coroutine]
    await caption(8, "a.png")  # type: ignore[call-arg, arg-type]


# Methods: self first, then the batch size. ----------------------------------------------


class Colorizer:
    @adaptive_batch(start=16)
    def run(self, batch_size: int, images: list[str]) -> int:
        return batch_size

    @classmethod
    @adaptive_batch(start=16)
    def run_for_class(cls, batch_size: int, images: list[str]) -> int:
        return batch_size

    @adaptive_batch(start=16)
    @classmethod
    def run_for_class_too(cls, batch_size: int, images: list[str]) -> int:
        return batch_size

    @staticmethod
    @adaptive_batch(start=16)
    def run_static(batch_size: int, images: list[str]) -> int:
        return batch_size

    @adaptive_batch(start=16)
    @staticmethod
    def run_static_too(batch_size: int, images: list[str]) -> int:
        return batch_size


class SepiaColorizer(Colorizer):
    pass


colorizer = Colorizer()

# Bound to an instance, a method loses self; read from the class, it takes the instance.
assert_type(colorizer.run(["a.png"]), int)
assert_type(Colorizer.run(colorizer, ["a.png"]), int)
assert_type(SepiaColorizer().run(["a.png"]), int)
assert_type(colorizer.run.adaptive_state, AdaptiveBatchState)
assert_type(Colorizer.run.adaptive_state, AdaptiveBatchState)
unbound: AdaptiveBatchMethod[Colorizer, [list[str]], int] = Colorizer.run
bound: AdaptiveBatchFunction[[list[str]], int] = colorizer.run

# Classmethods lose cls, read from the class or from an instance, whichever decorator is
# outermost.
assert_type(Colorizer.run_for_class(["a.png"]), int)
assert_type(colorizer.run_for_class(["a.png"]), int)
assert_type(Colorizer.run_for_class_too(["a.png"]), int)
assert_type(colorizer.run_for_class_too(["a.png"]), int)
assert_type(Colorizer.run_for_class_too.adaptive_state, AdaptiveBatchState)

# Staticmethods take only the caller's arguments.
assert_type(Colorizer.run_static(["a.png"]), int)
assert_type(colorizer.run_static(["a.png"]), int)
assert_type(Colorizer.run_static_too(["a.png"]), int)
assert_type(colorizer.run_static_too(["a.png"]), int)
assert_type(Colorizer.run_static.adaptive_state, AdaptiveBatchState)

# Mistakes: the batch size passed to a method, the instance forgotten.
colorizer.run(4, ["a.png"])  # type: ignore[call-arg, arg-type]
Colorizer.run(["a.png"])  # type: ignore[call-arg, arg-type]
Colorizer.run_for_class(4, ["a.png"])  # type: ignore[call-arg, arg-type]
colorizer.run_static(4, ["a.png"])  # type: ignore[call-arg, arg-type]

# One Sizing value, or its fields as keywords; the old keywords are typed shortcuts. -------

sizing = Sizing(start=16, factor=0.25, regrow_after=4)
assert_type(sizing.start, int | None)
assert_type(adaptive_batch(sizing=sizing), AdaptiveBatchDecorator)
assert_type(AdaptiveBatchState(sizing), AdaptiveBatchState)
assert_type(AdaptiveBatchState(start=8).sizing, Sizing)
adaptive_batch(start="32")  # type: ignore[arg-type]
adaptive_batch(chunk_size=32)  # type: ignore[call-arg]
Sizing(start=4, factor="half")  # type: ignore[arg-type]

# Chunks: the function gets a chunk of the items (a slice, a list; a tensor of a tensor). ---


def lengths(chunk: Sequence[str]) -> list[int]:
    return [len(name) for name in chunk]


def rows(chunk: torch.Tensor) -> torch.Tensor:
    return chunk * 2


async def lengths_later(chunk: Sequence[str]) -> list[int]:
    return [len(name) for name in chunk]


assert_type(
    iter_chunks(lengths, ["a.png", "b.png"], sizing=sizing), Generator[list[int], None, None]
)
assert_type(iter_chunks(rows, torch.ones(4, 2), start=2), Generator[torch.Tensor, None, None])
assert_type(iter_chunks_async(lengths_later, ["a.png"], start=2), AsyncGenerator[list[int], None])
process_in_chunks(lengths, ["a.png"], sizing=sizing)
process_in_chunks(lengths, [1, 2, 3], start=2)  # type: ignore[arg-type]
iter_chunks(rows, ["a.png"], start=2)  # type: ignore[arg-type]


# A list's chunks are lists, and so are an iterator's (a generator's, say): a function typed
# for lists takes both; a tuple's chunks are tuples, which such a function must not be given,
# and so is any other iterable (a DataLoader, a set), whose function must take a Sequence.
def list_lengths(chunk: list[str]) -> list[int]:
    return [len(name) for name in chunk]


async def list_lengths_later(chunk: list[str]) -> list[int]:
    return [len(name) for name in chunk]


def names() -> Generator[str, None, None]:
    yield "a.png"


assert_type(iter_chunks(list_lengths, ["a.png"], start=2), Generator[list[int], None, None])
assert_type(iter_chunks(list_lengths, names(), start=2), Generator[list[int], None, None])
assert_type(
    iter_chunks_async(list_lengths_later, names(), start=2), AsyncGenerator[list[int], None]
)
process_in_chunks(list_lengths, ["a.png"], start=2)
process_in_chunks(list_lengths, names(), start=2)
chunked_later: Coroutine[Any, Any, Any] = process_in_chunks_async(
    list_lengths_later, ["a.png"], start=2
)
process_in_chunks(lengths, ("a.png",), start=2)
process_in_chunks(list_lengths, ("a.png",), start=2)  # type: ignore[arg-type]
iter_chunks(list_lengths, ("a.png",), start=2)  # type: ignore[arg-type]
process_in_chunks(list_lengths, {"a.png"}, start=2)  # type: ignore[arg-type]
process_in_chunks(lengths, {"a.png"}, start=2)
