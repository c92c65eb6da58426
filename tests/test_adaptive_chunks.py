"""``process_in_chunks``: every item exactly once, in order, chunks shrink where memory fails."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from memscope import (
    BatchSizeExhaustedError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.testing import MiB, RecordingManager, oom_error


def cuda_oom(chunk_length: int) -> BaseException:
    """The CUDA allocator's error for a chunk of ``chunk_length`` items of 1 MiB each."""
    return oom_error("cuda", tried=chunk_length * MiB)


class Worker:
    """Runs out of memory on chunks longer than ``limit``; records what it completed."""

    def __init__(self, limit: int, heavy: set[int] | None = None, heavy_limit: int = 1) -> None:
        self.limit = limit
        self.heavy = heavy or set()
        self.heavy_limit = heavy_limit
        self.attempts: list[list[int]] = []
        self.completed: list[int] = []

    def __call__(self, chunk: Sequence[int]) -> list[int]:
        items = [int(item) for item in chunk]
        self.attempts.append(items)
        limit = self.heavy_limit if self.heavy.intersection(items) else self.limit
        if len(items) > limit:
            raise cuda_oom(len(items))
        self.completed.extend(items)
        return [item * 10 for item in items]


def test_every_item_exactly_once_in_order() -> None:
    """Chunks that fail are retried shorter from where they started; nothing lost or doubled."""
    worker = Worker(limit=7)
    result = process_in_chunks(worker, list(range(100)), start=32, device="cpu")
    assert worker.completed == list(range(100))
    assert result == [item * 10 for item in range(100)]
    # The first chunk shrinks 32 -> 16 -> 8 -> 4, all starting at item 0, then 4 at a time.
    assert [attempt[0] for attempt in worker.attempts[:4]] == [0, 0, 0, 0]
    assert [len(attempt) for attempt in worker.attempts[:5]] == [32, 16, 8, 4, 4]


def test_failure_mid_way_resumes_at_the_failed_chunk() -> None:
    """A heavy item half-way shrinks the chunk that holds it; earlier chunks stay done."""
    worker = Worker(limit=100, heavy={50}, heavy_limit=3)
    result = process_in_chunks(worker, list(range(80)), start=16, device="cpu")
    assert worker.completed == list(range(80))
    assert result == [item * 10 for item in range(80)]
    failed = [attempt for attempt in worker.attempts if 50 in attempt and len(attempt) > 3]
    assert [attempt[0] for attempt in failed] == [48, 48, 48]
    assert [len(attempt) for attempt in failed] == [16, 8, 4]


def test_tensor_items_are_sliced_and_results_concatenated() -> None:
    """A tensor is split along its first dimension; tensor results come back as one tensor."""
    items = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    seen: list[int] = []

    def double(chunk: torch.Tensor) -> torch.Tensor:
        seen.append(chunk.shape[0])
        if chunk.shape[0] > 3:
            raise cuda_oom(chunk.shape[0])
        return chunk * 2

    result = process_in_chunks(double, items, start=8, device="cpu")
    assert torch.equal(result, items * 2)
    assert seen[:3] == [8, 4, 2]


def test_tuple_results_are_flattened_into_a_list() -> None:
    """Lists and tuples from the chunks become one flat list."""
    result = process_in_chunks(tuple, (1, 2, 3, 4, 5), start=2, device="cpu")
    assert result == [1, 2, 3, 4, 5]


def test_chunks_combine_gives_per_chunk_results() -> None:
    """combine='chunks' returns each chunk's result, in order."""
    result = process_in_chunks(sum, list(range(10)), start=4, combine="chunks", device="cpu")
    assert result == [0 + 1 + 2 + 3, 4 + 5 + 6 + 7, 8 + 9]


def test_function_combine_gets_the_per_chunk_results() -> None:
    """A combine function receives the list of chunk results."""
    result = process_in_chunks(sum, list(range(10)), start=4, combine=sum, device="cpu")
    assert result == 45


def test_concat_refuses_other_results_at_the_first_chunk() -> None:
    """A result that cannot be concatenated fails at once, not after the last chunk."""
    calls: list[int] = []

    def count(chunk: Sequence[int]) -> int:
        calls.append(len(chunk))
        return len(chunk)

    with pytest.raises(InvalidArgumentTypeError, match="combine='chunks'"):
        process_in_chunks(count, list(range(10)), start=2, device="cpu")
    assert calls == [2]


def test_concat_refuses_mixed_results() -> None:
    """A tensor after a list is refused when it arrives."""
    results: list[Any] = [[1], torch.ones(1)]

    def mixed(chunk: Sequence[int]) -> Any:
        return results.pop(0)

    with pytest.raises(InvalidArgumentTypeError, match="list then Tensor"):
        process_in_chunks(mixed, [1, 2], start=1, device="cpu")


def test_concat_refuses_scalar_tensors() -> None:
    """0-dimensional tensors cannot be concatenated, and the message says so."""
    with pytest.raises(InvalidArgumentTypeError, match="0-dimensional"):
        process_in_chunks(lambda chunk: torch.tensor(1.0), [1, 2], start=1, device="cpu")


def test_empty_items_call_nothing() -> None:
    """No items: the function is not called and the result is an empty list."""
    worker = Worker(limit=10)
    assert process_in_chunks(worker, [], start=4, device="cpu") == []
    assert process_in_chunks(worker, torch.empty(0, 3), start=4, device="cpu") == []
    assert worker.attempts == []


def test_exhausted_chunk_names_where_and_what() -> None:
    """When min_size fails: BatchSizeExhaustedError naming the item and the sizes tried."""
    worker = Worker(limit=100, heavy={13}, heavy_limit=0)
    with pytest.raises(BatchSizeExhaustedError) as info:
        process_in_chunks(worker, list(range(20)), start=8, device="cpu")
    error = info.value
    assert "the chunk at item 13 (of 20)" in str(error)
    assert error.sizes_tried == (8, 4, 2, 1)
    assert isinstance(error.__cause__, torch.OutOfMemoryError)
    assert "Tried to allocate 1.0 MiB" in str(error.__cause__)
    assert worker.completed == list(range(13))
    assert "batch sizes tried: 8, 4, 2, 1" in error.__notes__[0]


def test_tensor_of_a_failed_chunk_is_freed_before_the_retry() -> None:
    """The traceback trap is avoided for chunks too."""
    references: list[weakref.ref[torch.Tensor]] = []
    alive_when_retrying: list[bool] = []

    def step(chunk: Sequence[int]) -> list[int]:
        if references:
            alive_when_retrying.append(references[-1]() is not None)
        activations = torch.ones(4096)
        references.append(weakref.ref(activations))
        if len(chunk) > 1:
            raise cuda_oom(len(chunk))
        return list(chunk)

    assert process_in_chunks(step, [1, 2], start=2, manager=RecordingManager()) == [1, 2]
    assert alive_when_retrying == [False, False]


def test_chunk_size_regrows_after_successes() -> None:
    """With regrow_after, chunks grow back after the heavy part has passed."""
    worker = Worker(limit=100, heavy={10}, heavy_limit=2)
    process_in_chunks(worker, list(range(40)), start=8, regrow_after=1, device="cpu")
    lengths = [len(attempt) for attempt in worker.attempts if attempt[0] > 10]
    assert max(lengths) == 8
    assert worker.completed == list(range(40))


def test_cleanup_runs_through_the_given_manager() -> None:
    """Each failed chunk clears the cache of the manager passed in."""
    manager = RecordingManager()
    process_in_chunks(Worker(limit=2), list(range(8)), start=8, manager=manager)
    assert manager.events == ["clear_cache", "clear_cache"]


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (42, "sequence"),
        (torch.tensor(3.0), "0-dimensional"),
    ],
)
def test_items_that_cannot_be_sliced_are_refused(items: Any, match: str) -> None:
    """Items must be a sequence or a tensor with a first dimension."""
    with pytest.raises(InvalidArgumentTypeError, match=match):
        process_in_chunks(list, items, start=2, device="cpu")


def test_bad_options_are_refused() -> None:
    """Options are checked as for adaptive_batch, and combine too."""
    with pytest.raises(InvalidArgumentError, match="start"):
        process_in_chunks(list, [1], start=0, device="cpu")
    with pytest.raises(InvalidArgumentError, match="combine"):
        process_in_chunks(list, [1], start=1, combine="stack", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError, match="combine"):
        process_in_chunks(list, [1], start=1, combine=3, device="cpu")  # type: ignore[arg-type]


def test_coroutine_function_needs_the_async_form() -> None:
    """The sync form refuses an ``async def`` function and names the async form."""

    async def step(chunk: Sequence[int]) -> list[int]:
        return list(chunk)

    with pytest.raises(InvalidArgumentTypeError, match="process_in_chunks_async"):
        process_in_chunks(step, [1], start=1, device="cpu")


def test_async_form_processes_every_item_exactly_once() -> None:
    """process_in_chunks_async awaits each chunk and shrinks the same way."""
    worker = Worker(limit=3)

    async def step(chunk: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        return worker(chunk)

    result = asyncio.run(process_in_chunks_async(step, list(range(30)), start=16, device="cpu"))
    assert worker.completed == list(range(30))
    assert result == [item * 10 for item in range(30)]


def test_async_form_refuses_a_function_that_does_not_return_an_awaitable() -> None:
    """A plain function given to the async form is a clear error."""
    with pytest.raises(InvalidArgumentTypeError, match="awaitable"):
        asyncio.run(process_in_chunks_async(list, [1], start=1, device="cpu"))  # type: ignore[arg-type]


def test_async_form_checks_its_arguments_at_the_call() -> None:
    """Bad arguments fail when process_in_chunks_async is called, before anything is awaited."""

    async def step(chunk: Sequence[int]) -> list[int]:
        return list(chunk)

    with pytest.raises(InvalidArgumentError, match="start"):
        _ = process_in_chunks_async(step, [1], start=0, device="cpu")
    with pytest.raises(InvalidArgumentTypeError, match="sequence"):
        _ = process_in_chunks_async(step, 42, start=1, device="cpu")
    with pytest.raises(InvalidArgumentTypeError, match="callable"):
        _ = process_in_chunks_async(3, [1], start=1, device="cpu")  # type: ignore[arg-type]


def test_the_chunk_of_a_failed_attempt_is_let_go_before_the_cache_is_cleared() -> None:
    """The driver still holds the failed attempt's call while the search recovers, but not
    its chunk: the search empties the call first, so the chunk's memory can be freed."""
    chunks: list[weakref.ref[torch.Tensor]] = []
    alive_at_clear: list[bool] = []

    class Watching(RecordingManager):
        def clear_cache(self) -> None:
            alive_at_clear.append(chunks[-1]() is not None)
            super().clear_cache()

    def step(chunk: torch.Tensor) -> torch.Tensor:
        chunks.append(weakref.ref(chunk))
        if len(chunk) > 1:
            raise cuda_oom(len(chunk))
        return chunk * 2

    result = process_in_chunks(step, torch.arange(2), start=2, manager=Watching())
    assert result.tolist() == [0, 2]
    assert alive_at_clear == [False]
