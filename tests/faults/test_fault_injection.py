"""Fault injection: random OOM schedules, failing cleanups, failing device and host queries,
under threads and asyncio tasks. For every run: no item lost or processed twice, results and
exceptions unchanged, reports consistent with what the fakes recorded, the heap never left
frozen."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from memscope import (
    BatchSizeExhaustedError,
    _heap,
    auto_clear,
    managed_batch,
    process_in_chunks,
)
from memscope._heap import heap_is_unfrozen
from memscope.testing import FakeDevice, FakeHost, GiB, RecordingManager, oom_error

FAULT_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def collections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every gc.collect() call, counted (and still made)."""
    calls: list[int] = []
    real_collect = gc.collect

    def counting(generation: int = 2) -> int:
        calls.append(generation)
        return real_collect(generation)

    monkeypatch.setattr(gc, "collect", counting)
    return calls


def assert_heap_released() -> None:
    assert heap_is_unfrozen()
    assert _heap.heap_holders() == 0


@dataclass
class OomSchedule:
    """Which attempts run out of memory: above a size limit always, others as scripted."""

    limit: int
    transient: list[bool]
    attempts: list[list[int]] = field(default_factory=list)
    succeeded: list[list[int]] = field(default_factory=list)
    ooms: int = 0

    def chunk_function(self) -> Callable[[list[int]], list[int]]:
        position = iter(self.transient)

        def run(chunk: list[int]) -> list[int]:
            self.attempts.append(list(chunk))
            if len(chunk) > self.limit or next(position, False):
                self.ooms += 1
                raise oom_error("cuda", tried=len(chunk) * GiB)
            self.succeeded.append(list(chunk))
            return [item * 10 for item in chunk]

        return run


@FAULT_SETTINGS
@given(
    items=st.integers(min_value=0, max_value=60),
    start=st.integers(min_value=1, max_value=16),
    limit=st.integers(min_value=1, max_value=20),
    transient=st.lists(st.booleans(), max_size=30),
    inside_batch=st.booleans(),
)
def test_chunked_work_loses_and_repeats_nothing_under_random_ooms(
    collections: list[int],
    items: int,
    start: int,
    limit: int,
    transient: list[bool],
    inside_batch: bool,
) -> None:
    """process_in_chunks under a random OOM schedule: every item in exactly one successful
    chunk, in order, or BatchSizeExhaustedError; the batch counts the items and every OOM,
    and its clear and collection totals equal what the fake and gc recorded."""
    schedule = OomSchedule(limit, transient)
    data = list(range(items))
    collections.clear()
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=2 * GiB, reserved=2 * GiB)
        outcome: list[int] | BaseException
        if inside_batch:
            with managed_batch("cuda", every=3) as batch:
                try:
                    outcome = process_in_chunks(schedule.chunk_function(), data, start=start)
                except BatchSizeExhaustedError as error:
                    outcome = error
        else:
            try:
                outcome = process_in_chunks(schedule.chunk_function(), data, start=start)
            except BatchSizeExhaustedError as error:
                outcome = error
        empty_cache_calls = fake.count("torch.cuda.empty_cache")
    # Successful chunks never overlap and keep the items' order: nothing processed twice.
    completed = [item for chunk in schedule.succeeded for item in chunk]
    assert completed == data[: len(completed)]
    if isinstance(outcome, BaseException):
        # Only a chunk of one item that ran out of memory exhausts the search.
        assert [len(chunk) for chunk in schedule.attempts][-1] == 1
    else:
        assert outcome == [item * 10 for item in data]
        assert completed == data
    if inside_batch:
        report = batch.report
        assert report.ooms == schedule.ooms
        assert report.cache_clears == empty_cache_calls
        assert report.gc_runs == len(collections)
        if not isinstance(outcome, BaseException):
            assert report.items == items
    assert_heap_released()


@FAULT_SETTINGS
@given(
    schedule=st.lists(st.sampled_from(["ok", "oom", "error", "cleanup fails"]), max_size=40),
    retries=st.integers(min_value=0, max_value=2),
)
def test_decorated_calls_keep_results_and_exceptions_under_random_faults(
    collections: list[int], schedule: list[str], retries: int
) -> None:
    """@auto_clear(oom_retries=N) inside a batch, with random OOMs, user errors and failing
    cleanups: every result and every exception is the function's own; the report's counts
    match what happened."""
    manager = RecordingManager()
    plan = iter(schedule)
    raised_by_function: list[BaseException] = []

    @auto_clear(every=2, oom_retries=retries)
    def colorize(image: int) -> int:
        step = next(plan, "ok")
        manager.cleanup_error = RuntimeError("cleanup broke") if step == "cleanup fails" else None
        if step == "oom":
            error = oom_error("cuda")
        elif step == "error":
            error = ValueError(f"corrupt image {image}")
        else:
            return image * 2
        raised_by_function.append(error)
        raise error

    results: list[int] = []
    caught: list[BaseException] = []
    collections.clear()
    with managed_batch(manager=manager, every=3) as batch:
        for image in range(len(schedule)):
            try:
                results.append(colorize(image))
            except (ValueError, RuntimeError) as error:
                caught.append(error)
        manager.cleanup_error = None
    for error in caught:
        assert any(error is own for own in raised_by_function)
    assert len(results) + len(caught) == len(schedule)
    report = batch.report
    assert report.calls == len(schedule)
    assert report.failures == len(caught)
    assert report.ooms == sum(1 for error in raised_by_function if isinstance(error, RuntimeError))
    assert report.gc_runs <= len(collections)
    assert_heap_released()


@FAULT_SETTINGS
@given(
    failing=st.sets(
        st.sampled_from(
            [
                "torch.cuda.mem_get_info",
                "torch.cuda.memory_stats_as_nested_dict",
                "torch.cuda.empty_cache",
                "torch.cuda.reset_peak_memory_stats",
            ]
        )
    ),
    host_fails=st.booleans(),
    device=st.sampled_from(["cuda", "cpu"]),
)
def test_failing_device_and_host_queries_never_break_the_batch(
    failing: set[str], host_fails: bool, device: str
) -> None:
    """Device queries, cache clearing and host reads that raise: the loop's results are all
    there, the batch reports, failed cleanups are counted, and the heap is released."""
    with FakeDevice("cuda", total=8 * GiB) as fake, FakeHost(resident=GiB) as host:
        fake.set_usage(0.9)
        for function in failing:
            fake.fail(function, RuntimeError(f"{function} broke"))

        @auto_clear(every=2)
        def colorize(image: int) -> int:
            return image + 1

        with managed_batch(device, every=2, timeline=True) as batch:
            if host_fails:
                # Resident memory can no longer be read: the file is not what it should be.
                (host.proc_root / "self" / "statm").write_text("garbage\n")
            results = [colorize(image) for image in range(10)]
    assert results == list(range(1, 11))
    report = batch.report
    assert report.items == 10
    assert len(report.timeline) == 10
    if device == "cuda" and "torch.cuda.empty_cache" in failing:
        assert report.cleanup_failures >= 1
    if device == "cpu":
        assert report.host_resident_start == GiB
        assert (report.host_resident_end is None) is host_fails
    assert_heap_released()


def test_threads_with_random_failures_count_exactly() -> None:
    """Eight threads calling a decorated function that fails on every third image: calls and
    failures are exact, and every result is there."""

    @auto_clear(every=4)
    def colorize(image: int) -> int:
        if image % 3 == 0:
            raise ValueError(image)
        return image

    results: list[int] = []
    lock = threading.Lock()
    with managed_batch(manager=RecordingManager(), every=5) as batch:
        call = batch.bind(colorize)

        def worker(start: int) -> None:
            for image in range(start, start + 300):
                try:
                    value = call(image)
                except ValueError:
                    continue
                with lock:
                    results.append(value)

        threads = [threading.Thread(target=worker, args=(n * 300,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    total = 8 * 300
    failures = len([image for image in range(total) if image % 3 == 0])
    assert sorted(results) == [image for image in range(total) if image % 3]
    assert (batch.report.calls, batch.report.failures) == (total, failures)
    assert batch.report.items == total - failures
    assert_heap_released()


@settings(FAULT_SETTINGS, max_examples=10)
@given(schedules=st.lists(st.lists(st.booleans(), max_size=5), min_size=1, max_size=3))
def test_concurrent_tasks_keep_their_own_batches(schedules: list[list[bool]]) -> None:
    """Concurrent asyncio tasks, each in its own batch with its own OOM schedule: each report
    counts its own items and OOMs only."""

    async def task(schedule: list[bool]) -> tuple[int, int, int, int]:
        plan = iter(schedule)
        injected = 0

        @auto_clear(every=1, oom_retries=len(schedule))
        async def colorize(image: int) -> int:
            nonlocal injected
            await asyncio.sleep(0)
            if next(plan, False):
                injected += 1
                raise oom_error("cuda")
            return image

        async with managed_batch(manager=RecordingManager(), every=2) as batch:
            for image in range(3):
                await colorize(image)
        return batch.report.items, batch.report.ooms, 3, injected

    async def main() -> list[tuple[int, int, int, int]]:
        return await asyncio.gather(*(task(schedule) for schedule in schedules))

    for items, ooms, expected_items, injected in asyncio.run(main()):
        assert items == expected_items
        assert ooms == injected
    assert_heap_released()
