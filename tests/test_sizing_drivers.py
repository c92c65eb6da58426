"""The sync and async drivers make the same decisions: one decision step serves both, so the
same memory gives the same attempts, results, errors and learned state either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import given, settings, strategies as st

from memscope import (
    BatchSizeExhaustedError,
    adaptive_batch,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.sizing import iter_chunks, iter_chunks_async
from memscope.testing import MiB, RecordingManager, oom_error

Mode = Literal["sync", "async"]
MODES: list[Mode] = ["sync", "async"]

# What a run gave back: ("returned", value), ("exhausted", sizes tried) or ("raised", type).
Outcome = tuple[str, object]


@dataclass(frozen=True)
class AdaptiveScenario:
    """Calls of an adaptive function; call ``i`` fits batches up to ``fits[i]``."""

    label: str
    start: int
    fits: tuple[int, ...]
    attempts: tuple[int, ...]
    outcomes: tuple[Outcome, ...]
    min_size: int = 1
    factor: float = 0.5
    regrow_after: int | None = None


ADAPTIVE_SCENARIOS = [
    AdaptiveScenario(
        label="shrinks, then keeps the size",
        start=32,
        fits=(5, 5, 5),
        attempts=(32, 16, 8, 4, 4, 4),
        outcomes=(("returned", 4), ("returned", 4), ("returned", 4)),
    ),
    AdaptiveScenario(
        label="regrows when memory frees up, falls back when it does not",
        start=8,
        regrow_after=1,
        fits=(4, 4, 4, 8, 8),
        # Call 2 tries 8 after one success and falls back; call 3 waits (two successes
        # needed now); call 4 tries 8 and keeps it.
        attempts=(8, 4, 8, 4, 4, 8, 8),
        outcomes=(
            ("returned", 4),
            ("returned", 4),
            ("returned", 4),
            ("returned", 8),
            ("returned", 8),
        ),
    ),
    AdaptiveScenario(
        label="gives up at min_size",
        start=12,
        min_size=3,
        factor=0.7,
        fits=(2, 2),
        attempts=(12, 8, 5, 3, 3),
        outcomes=(("exhausted", (12, 8, 5, 3)), ("exhausted", (3,))),
    ),
]


def run_adaptive(scenario: AdaptiveScenario, mode: Mode) -> tuple[list[int], list[Outcome]]:
    """The scenario's calls, through the sync or the async driver."""
    attempts: list[int] = []
    # The largest batch that fits during the current call.
    fits_now = [scenario.fits[0]]

    def work(batch_size: int) -> int:
        attempts.append(batch_size)
        if batch_size > fits_now[0]:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    decorate = adaptive_batch(
        start=scenario.start,
        factor=scenario.factor,
        min_size=scenario.min_size,
        regrow_after=scenario.regrow_after,
        manager=RecordingManager(),
    )
    if mode == "sync":
        run: Callable[[], int] = decorate(work)
    else:

        async def work_async(batch_size: int) -> int:
            await asyncio.sleep(0)
            return work(batch_size)

        step_async = decorate(work_async)

        def run() -> int:
            return asyncio.run(step_async())

    outcomes: list[Outcome] = []
    for fits in scenario.fits:
        fits_now[0] = fits
        try:
            outcomes.append(("returned", run()))
        except BatchSizeExhaustedError as error:
            outcomes.append(("exhausted", error.sizes_tried))
    return attempts, outcomes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "scenario", ADAPTIVE_SCENARIOS, ids=[scenario.label for scenario in ADAPTIVE_SCENARIOS]
)
def test_adaptive_decisions_are_the_same_sync_and_async(
    scenario: AdaptiveScenario, mode: Mode
) -> None:
    """An adaptive function tries the same sizes and ends the same way, sync or async."""
    attempts, outcomes = run_adaptive(scenario, mode)
    assert tuple(attempts) == scenario.attempts
    assert tuple(outcomes) == scenario.outcomes


@dataclass(frozen=True)
class ChunkScenario:
    """A chunked run over ``items`` items; a chunk holding a heavy item fits ``heavy_fits``."""

    label: str
    items: int
    start: int
    fits: int
    chunks: tuple[tuple[int, int], ...]  # (first item, length) of each attempt
    outcome: Outcome
    heavy: frozenset[int] = frozenset()
    heavy_fits: int = 0
    regrow_after: int | None = None


CHUNK_SCENARIOS = [
    ChunkScenario(
        label="shrinks the failed chunk and continues at the new size",
        items=10,
        start=4,
        fits=3,
        chunks=((0, 4), (0, 2), (2, 2), (4, 2), (6, 2), (8, 2)),
        outcome=("returned", list(range(10))),
    ),
    ChunkScenario(
        label="regrows after the heavy part",
        items=12,
        start=4,
        fits=4,
        heavy=frozenset({2}),
        heavy_fits=1,
        regrow_after=1,
        # 4 fails on item 2; 2 works; growing back to 4 fails, and so does 2, so the heavy
        # item goes alone; then 2, and (after twice the wait, 4 having failed once) 4; the
        # tail is one item.
        chunks=((0, 4), (0, 2), (2, 4), (2, 2), (2, 1), (3, 2), (5, 2), (7, 4), (11, 1)),
        outcome=("returned", list(range(12))),
    ),
    ChunkScenario(
        label="gives up at the heavy item",
        items=8,
        start=4,
        fits=4,
        heavy=frozenset({5}),
        heavy_fits=0,
        chunks=((0, 4), (4, 4), (4, 2), (4, 1), (5, 1)),
        outcome=("exhausted", (4, 2, 1)),
    ),
]


def run_chunks(scenario: ChunkScenario, mode: Mode) -> tuple[list[tuple[int, int]], Outcome]:
    """The scenario's run, through the sync or the async driver."""
    chunks: list[tuple[int, int]] = []

    def work(chunk: Sequence[int]) -> list[int]:
        chunks.append((chunk[0], len(chunk)))
        fits = scenario.heavy_fits if scenario.heavy.intersection(chunk) else scenario.fits
        if len(chunk) > fits:
            raise oom_error("cuda", tried=len(chunk) * MiB)
        return list(chunk)

    async def work_async(chunk: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        return work(chunk)

    items = list(range(scenario.items))
    manager = RecordingManager()
    try:
        if mode == "sync":
            result = process_in_chunks(
                work,
                items,
                start=scenario.start,
                regrow_after=scenario.regrow_after,
                manager=manager,
            )
        else:
            result = asyncio.run(
                process_in_chunks_async(
                    work_async,
                    items,
                    start=scenario.start,
                    regrow_after=scenario.regrow_after,
                    manager=manager,
                )
            )
    except BatchSizeExhaustedError as error:
        return chunks, ("exhausted", error.sizes_tried)
    return chunks, ("returned", result)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "scenario", CHUNK_SCENARIOS, ids=[scenario.label for scenario in CHUNK_SCENARIOS]
)
def test_chunk_decisions_are_the_same_sync_and_async(scenario: ChunkScenario, mode: Mode) -> None:
    """A chunked run attempts the same chunks and ends the same way, sync or async."""
    chunks, outcome = run_chunks(scenario, mode)
    assert tuple(chunks) == scenario.chunks
    assert outcome == scenario.outcome


@pytest.mark.parametrize("mode", MODES)
def test_other_errors_pass_through_either_driver(mode: Mode) -> None:
    """A non-OOM error leaves after one attempt, unchanged, from either driver."""
    failure = ValueError("corrupt image")
    attempts: list[int] = []

    def work(batch_size: int) -> int:
        attempts.append(batch_size)
        raise failure

    async def work_async(batch_size: int) -> int:
        return work(batch_size)

    decorate = adaptive_batch(start=8, manager=RecordingManager())
    if mode == "sync":
        run: Callable[[], int] = decorate(work)
    else:
        step_async = decorate(work_async)

        def run() -> int:
            return asyncio.run(step_async())

    with pytest.raises(ValueError, match="corrupt image") as raised:
        run()
    assert raised.value is failure
    assert attempts == [8]


def test_a_stop_iteration_leaves_the_sync_driver_as_itself() -> None:
    """A StopIteration the decorated function raises comes out of the call as itself (the
    driver is a generator, which may not raise one)."""
    stop = StopIteration("no more")

    @adaptive_batch(start=8, manager=RecordingManager())
    def work(batch_size: int) -> int:
        raise stop

    with pytest.raises(StopIteration) as raised:
        work()
    assert raised.value is stop


def test_a_stop_iteration_in_iter_chunks_is_a_runtime_error() -> None:
    """A StopIteration from a chunk's function never ends an iter_chunks loop in silence: it
    comes out as RuntimeError, as from any generator."""

    def work(chunk: Sequence[int]) -> int:
        raise StopIteration

    with pytest.raises(RuntimeError):
        list(iter_chunks(work, [1, 2, 3], start=2, manager=RecordingManager()))


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=25),
    start=st.integers(min_value=1, max_value=12),
    schedule=st.lists(st.booleans(), max_size=10),
    mode=st.sampled_from(MODES),
)
def test_iter_chunks_hands_on_every_item_once_in_order_from_either_driver(
    count: int, start: int, schedule: list[bool], mode: Mode
) -> None:
    """Over any schedule of out-of-memory errors, iter_chunks (sync or async) yields each
    successful chunk once, and the chunks hold every item once, in order."""
    calls = [0]

    def work(chunk: Sequence[int]) -> list[int]:
        fails = schedule[calls[0] % len(schedule)] if schedule else False
        calls[0] += 1
        if fails and len(chunk) > 1:
            raise oom_error("cuda", tried=len(chunk))
        return list(chunk)

    async def work_async(chunk: Sequence[int]) -> list[int]:
        return work(chunk)

    items = list(range(count))
    if mode == "sync":
        chunks = list(iter_chunks(work, items, start=start, manager=RecordingManager()))
    else:

        async def collect() -> list[list[int]]:
            stream = iter_chunks_async(work_async, items, start=start, manager=RecordingManager())
            return [chunk async for chunk in stream]

        chunks = asyncio.run(collect())
    assert [item for chunk in chunks for item in chunk] == items
    assert all(chunks)
