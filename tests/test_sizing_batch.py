"""Chunked work is batch work: inside a ``managed_batch``, ``process_in_chunks`` and
``@adaptive_batch`` count their items, their out-of-memory errors and the cleanups that
recover from them into the batch's report."""

from __future__ import annotations

import gc
from collections.abc import Sequence

import pytest

from memscope import adaptive_batch, managed_batch, process_in_chunks
from memscope.testing import FakeDevice, MiB, RecordingManager, oom_error

EMPTY_CACHE = "torch.cuda.empty_cache"


class ChunkWorker:
    """Doubles each item; runs out of memory on chunks longer than ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ooms = 0

    def __call__(self, chunk: Sequence[int]) -> list[int]:
        if len(chunk) > self.limit:
            self.ooms += 1
            raise oom_error("cuda", tried=len(chunk) * MiB)
        return [item * 2 for item in chunk]


@pytest.fixture
def collections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``gc.collect()`` made while the test runs, one entry each."""
    made: list[int] = []
    real_collect = gc.collect

    def collect(*args: int) -> int:
        made.append(1)
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", collect)
    return made


def test_chunks_count_every_item_into_the_batch() -> None:
    """96 items processed in chunks inside managed_batch("cuda") are 96 items of the batch."""
    worker = ChunkWorker(limit=100)
    with FakeDevice("cuda"), managed_batch("cuda") as batch:
        result = process_in_chunks(worker, list(range(96)), start=32)
    assert result == [item * 2 for item in range(96)]
    assert batch.report.items == 96


def test_chunks_that_shrank_still_count_each_item_once() -> None:
    """Chunks retried after an out-of-memory error count only the items that completed."""
    worker = ChunkWorker(limit=5)
    with FakeDevice("cuda"), managed_batch("cuda") as batch:
        # By factor (the worker's memory is not on the fake device): 32, 16, 8, then 4s.
        process_in_chunks(worker, list(range(96)), start=32, measure=False)
    assert worker.ooms == 3
    assert batch.report.items == 96


def test_chunks_inside_a_tracked_item_add_no_items() -> None:
    """Inside a track() loop body the tracked item is the unit: its chunks add nothing."""
    with FakeDevice("cuda"), managed_batch("cuda") as batch:
        for _ in batch.track(range(3)):
            process_in_chunks(ChunkWorker(limit=100), list(range(96)), start=32)
    assert batch.report.items == 3


def test_adaptive_call_counts_the_size_it_succeeded_at() -> None:
    """A successful call counts as many items as the batch size it succeeded at."""

    @adaptive_batch(start=16)
    def colorize(batch_size: int) -> int:
        if batch_size > 4:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    with FakeDevice("cuda"), managed_batch("cuda") as batch:
        assert colorize() == 4
        assert colorize() == 4
    assert batch.report.items == 8


def test_adaptive_calls_inside_a_tracked_item_add_no_items() -> None:
    """Inside a track() loop body, an adaptive call's batch is part of the tracked item."""

    @adaptive_batch(start=8)
    def colorize(batch_size: int) -> int:
        return batch_size

    with FakeDevice("cuda"), managed_batch("cuda") as batch:
        for _ in batch.track(range(5)):
            colorize()
    assert batch.report.items == 5


def test_oom_recovery_counts_into_the_reports_cleanups(collections: list[int]) -> None:
    """Every gc.collect() and empty_cache() of the recoveries is in the report, and so is
    every out-of-memory error."""
    worker = ChunkWorker(limit=5)
    with FakeDevice("cuda") as fake, managed_batch("cuda") as batch:
        process_in_chunks(worker, list(range(96)), start=32, measure=False)
    report = batch.report
    assert worker.ooms == 3
    assert report.ooms == 3
    # The device is nearly empty, so the batch's own cleanups never collect: each
    # collection is one recovery's.
    assert len(collections) == 3
    assert report.gc_runs == len(collections)
    assert report.cache_clears == fake.count(EMPTY_CACHE)
    assert fake.count(EMPTY_CACHE) >= 3


def test_adaptive_recovery_counts_into_the_reports_cleanups(collections: list[int]) -> None:
    """The recoveries of an adaptive call count into the report like the batch's own."""

    @adaptive_batch(start=16, measure=False)
    def colorize(batch_size: int) -> int:
        if batch_size > 2:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    with FakeDevice("cuda") as fake, managed_batch("cuda") as batch:
        colorize()
    report = batch.report
    assert (report.ooms, report.oom_retries, report.batch_size_reductions) == (3, 3, 3)
    assert report.gc_runs == len(collections) == 3
    assert report.cache_clears == fake.count(EMPTY_CACHE)


def test_failed_recovery_counts_as_a_cleanup_failure() -> None:
    """A recovery whose cache clear fails is a cleanup failure in the report, not a crash."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("driver gone")
    with managed_batch(manager=manager, every=None) as batch:
        result = process_in_chunks(ChunkWorker(limit=2), list(range(4)), start=4)
        # The batch's own final cleanup is not due yet: only the recovery has run.
        manager.cleanup_error = None
    assert result == [0, 2, 4, 6]
    assert batch.report.cleanup_failures == 1


def test_failed_regrowth_is_no_batch_size_reduction() -> None:
    """The report's reductions are the times the size went down, as the state counts them;
    a regrowth that fails and falls back is an OOM and a retry, not a reduction."""
    fits = 4

    @adaptive_batch(start=8, regrow_after=1)
    def colorize(batch_size: int) -> int:
        if batch_size > fits:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    with managed_batch(manager=RecordingManager()) as batch:
        colorize()  # 8 fails: reduced to 4
        colorize()  # tries 8 again after one success, fails, falls back to 4
    state = colorize.adaptive_state
    assert (state.reductions, state.failed_regrowths) == (1, 1)
    report = batch.report
    assert (report.ooms, report.oom_retries, report.batch_size_reductions) == (2, 2, 1)


def test_outside_a_batch_the_recovery_still_runs() -> None:
    """With no batch active, the recovery clears the cache through the given manager."""
    manager = RecordingManager()
    process_in_chunks(ChunkWorker(limit=2), list(range(8)), start=8, manager=manager)
    assert manager.events == ["clear_cache", "clear_cache"]
