"""Streaming chunks: any iterable read chunk by chunk, results as they come, sizes kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from memscope import ImageMemoryModel, InvalidArgumentError, InvalidArgumentTypeError
from memscope.oom import (
    AdaptiveBatchState,
    iter_chunks,
    iter_chunks_async,
    process_in_chunks,
)
from memscope.testing import MiB, oom_error


def cuda_oom(chunk_length: int) -> BaseException:
    """The CUDA allocator's error for a chunk of ``chunk_length`` items of 1 MiB each."""
    return oom_error("cuda", tried=chunk_length * MiB)


class StrictStream:
    """Items ``0..count-1`` from a generator that refuses to be read past the chunk in
    progress: no item at or beyond the last completed chunk's end plus ``start``, and every
    item read must be in the very next call (checked by :meth:`check_chunk`)."""

    def __init__(self, count: int, start: int) -> None:
        self.count = count
        self.start = start
        self.read = 0
        self.done = 0
        self.attempted = 0

    def __iter__(self) -> Iterator[int]:
        for index in range(self.count):
            assert index < self.done + self.start, (
                f"read item {index} while the chunk in progress starts at {self.done}"
            )
            self.read = index + 1
            yield index

    def check_chunk(self, chunk: Sequence[int]) -> None:
        assert list(chunk) == list(range(self.done, self.done + len(chunk)))
        self.attempted = max(self.attempted, chunk[-1] + 1)
        assert self.read <= self.attempted, "an item was read that no call has been given"


class ScheduledWorker:
    """Runs out of memory on the calls the schedule marks (never on one item)."""

    def __init__(self, stream: StrictStream, schedule: list[bool]) -> None:
        self.stream = stream
        self.schedule = schedule
        self.calls = 0
        self.completed: list[int] = []

    def __call__(self, chunk: list[int]) -> list[int]:
        self.stream.check_chunk(chunk)
        fails = self.schedule[self.calls % len(self.schedule)] if self.schedule else False
        self.calls += 1
        if fails and len(chunk) > 1:
            raise cuda_oom(len(chunk))
        self.completed.extend(chunk)
        self.stream.done += len(chunk)
        return [item * 10 for item in chunk]


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=30),
    start=st.integers(min_value=1, max_value=16),
    regrow_after=st.none() | st.integers(min_value=1, max_value=3),
    schedule=st.lists(st.booleans(), max_size=12),
)
def test_generator_is_never_read_ahead_and_every_item_is_done_once_in_order(
    count: int, start: int, regrow_after: int | None, schedule: list[bool]
) -> None:
    """Over any OOM schedule, a generator is read only as far as the chunk in progress."""
    stream = StrictStream(count, start)
    worker = ScheduledWorker(stream, schedule)
    result = process_in_chunks(
        worker, iter(stream), start=start, regrow_after=regrow_after, device="cpu"
    )
    assert worker.completed == list(range(count))
    assert result == [item * 10 for item in range(count)]
    assert stream.read == count


def test_a_retry_reslices_the_items_already_read() -> None:
    """After an OOM the same chunk is retried shorter from the buffer, not re-read."""
    reads: list[int] = []

    def numbers() -> Iterator[int]:
        for index in range(10):
            reads.append(index)
            yield index

    attempts: list[list[int]] = []

    def work(chunk: list[int]) -> list[int]:
        attempts.append(list(chunk))
        if len(chunk) > 2:
            raise cuda_oom(len(chunk))
        return chunk

    assert process_in_chunks(work, numbers(), start=8, device="cpu") == list(range(10))
    assert attempts[:3] == [list(range(8)), list(range(4)), [0, 1]]
    assert reads == list(range(10))


def test_sequences_are_still_sliced() -> None:
    """A list is sliced, so chunks keep the items' own type (a tuple stays a tuple)."""
    chunks: list[Any] = []

    def work(chunk: Any) -> Any:
        chunks.append(chunk)
        return chunk

    assert process_in_chunks(work, (1, 2, 3), start=2, device="cpu") == [1, 2, 3]
    assert chunks == [(1, 2), (3,)]


def test_iter_chunks_yields_each_result_before_the_next_chunk_is_read() -> None:
    """iter_chunks is lazy: read, call, hand over, one chunk after another."""
    events: list[str] = []

    def numbers() -> Iterator[int]:
        for index in range(6):
            events.append(f"read {index}")
            yield index

    def work(chunk: list[int]) -> int:
        events.append(f"call {chunk}")
        if len(chunk) > 2:
            raise cuda_oom(len(chunk))
        return sum(chunk)

    results = iter_chunks(work, numbers(), start=4, device="cpu")
    assert events == []
    for total in results:
        events.append(f"got {total}")
    assert events == [
        "read 0",
        "read 1",
        "read 2",
        "read 3",
        "call [0, 1, 2, 3]",
        "call [0, 1]",
        "got 1",
        "call [2, 3]",
        "got 5",
        "read 4",
        "read 5",
        "call [4, 5]",
        "got 9",
    ]


def test_iter_chunks_closed_early_stops_reading() -> None:
    """Closing the iterator after one result reads and calls nothing more."""
    calls: list[list[int]] = []

    def work(chunk: list[int]) -> list[int]:
        calls.append(chunk)
        return chunk

    results = iter_chunks(work, iter(range(100)), start=3, device="cpu")
    assert next(results) == [0, 1, 2]
    results.close()
    assert calls == [[0, 1, 2]]


def test_iter_chunks_async_yields_results_as_they_complete() -> None:
    """The async iterator awaits each chunk and yields its result in order."""
    events: list[str] = []

    async def work(chunk: list[int]) -> int:
        await asyncio.sleep(0)
        events.append(f"call {chunk}")
        if len(chunk) > 2:
            raise cuda_oom(len(chunk))
        return sum(chunk)

    async def consume() -> list[int]:
        totals = []
        async for total in iter_chunks_async(work, iter(range(5)), start=4, device="cpu"):
            events.append(f"got {total}")
            totals.append(total)
        return totals

    assert asyncio.run(consume()) == [1, 5, 4]
    assert events == [
        "call [0, 1, 2, 3]",
        "call [0, 1]",
        "got 1",
        "call [2, 3]",
        "got 5",
        "call [4]",
        "got 4",
    ]


def test_combine_none_returns_none_for_functions_that_return_nothing() -> None:
    """combine=None keeps and checks no result, and returns None."""
    written: list[int] = []

    def write(chunk: list[int]) -> None:
        if len(chunk) > 3:
            raise cuda_oom(len(chunk))
        written.extend(chunk)

    result = process_in_chunks(write, (i for i in range(10)), start=8, combine=None, device="cpu")
    assert result is None
    assert written == list(range(10))
    assert process_in_chunks(write, [], start=2, combine=None, device="cpu") is None


def test_kept_state_makes_the_next_call_start_at_the_learned_size() -> None:
    """With state=, a second call starts at the size that worked: no OOM is repeated."""
    state = AdaptiveBatchState(start=32)
    lengths: list[int] = []

    def work(chunk: list[int]) -> list[int]:
        lengths.append(len(chunk))
        if len(chunk) > 5:
            raise cuda_oom(len(chunk))
        return chunk

    assert process_in_chunks(work, list(range(40)), state=state, device="cpu") == list(range(40))
    assert lengths[:4] == [32, 16, 8, 4]
    ooms = state.oom_count
    assert ooms == 3
    lengths.clear()
    second = process_in_chunks(work, iter(range(20)), state=state, device="cpu")
    assert second == list(range(20))
    assert lengths == [4, 4, 4, 4, 4]
    assert state.oom_count == ooms
    assert state.current_size == 4


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"state": object()}, InvalidArgumentTypeError, "state must be an AdaptiveBatchState"),
        ({"state": "state", "start": 4}, InvalidArgumentError, "start"),
        ({"state": "state", "factor": 0.25}, InvalidArgumentError, "factor=0.25"),
        ({"state": "state", "measure": False}, InvalidArgumentError, "measure=False"),
        ({"start": 4, "combine": "iterate"}, InvalidArgumentError, "combine must be"),
        ({"start": 4, "items": 42}, InvalidArgumentTypeError, "or another iterable"),
        (
            {"start": 4, "memory_model": ImageMemoryModel(), "image_size": lambda _: (1, 1)},
            InvalidArgumentTypeError,
            "memory_model needs items that can be sliced",
        ),
    ],
)
def test_bad_arguments_are_named(
    arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad items, state, combine or a state with its own options are refused before any read."""
    read: list[int] = []

    def numbers() -> Iterator[int]:
        read.append(0)
        yield 0

    options = {"items": numbers(), **arguments}
    if options.get("state") == "state":
        options["state"] = AdaptiveBatchState(start=8)
    with pytest.raises(error, match=match):
        process_in_chunks(list, device="cpu", **options)
    if "combine" not in options:
        with pytest.raises(error, match=match):
            iter_chunks(list, device="cpu", **options)
    assert read == []
