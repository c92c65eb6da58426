"""``managed_batch()``: tracking, cadence, reports, nesting, threads, async, progress."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memscope import (
    BatchStateError,
    ClearAlways,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    auto_clear,
    managed_batch,
)
from memscope.batch import current_batch
from memscope.testing import FakeCall, FakeDevice, GiB, RecordingManager


def test_track_yields_every_item_and_counts_after_the_body() -> None:
    """track() yields the items; an item is counted once its loop body is done."""
    seen: list[tuple[int, int]] = []
    with managed_batch(manager=RecordingManager()) as batch:
        for item in batch.track(["a", "b", "c"]):
            seen.append((len(seen), batch.items))
            assert item in "abc"
    assert seen == [(0, 0), (1, 1), (2, 2)]
    assert batch.report.items == 3


@pytest.mark.parametrize(("every", "items"), [(1, 7), (3, 10), (5, 5)])
def test_cadence_cleans_up_every_n_items(every: int, items: int) -> None:
    """With ``every=N``, cleanups follow items N, 2N, ..., plus one final cleanup."""
    events: list[str] = []
    manager = RecordingManager(events=events)
    with managed_batch(manager=manager, every=every) as batch:
        for item in batch.track(range(items)):
            events.append(f"item {item}")
        events.append("loop done")
    cleaned_after = [
        events[position - 1] for position, event in enumerate(events) if event == "clear_cache"
    ]
    expected = [f"item {n - 1}" for n in range(every, items + 1, every)]
    assert cleaned_after == [*expected, "loop done"]
    assert batch.report.cleanups == len(expected) + 1
    assert batch.report.cache_clears == 0  # the CPU has no cache: its clears count as none


def test_cadence_against_a_fake_cuda_device() -> None:
    """every=5 over 12 items on a fake GPU at 90 % usage, with a manager that collects at
    every check: 2 cadence cleanups and a final one, each a collection with its clear."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.9)
        with managed_batch(manager=MemoryManager("cuda"), every=5) as batch:
            for _ in batch.track(range(12)):
                pass
    # Nothing is reclaimable at 90 %: only the collections' own clears empty the cache.
    assert fake.count("torch.cuda.empty_cache") == 3
    report = batch.report
    assert (report.cache_clears, report.gc_runs) == (3, 3)
    assert report.gc_seconds > 0


def test_step_counts_loops_without_track() -> None:
    """step() does the same bookkeeping for a hand-written loop."""
    manager = RecordingManager()
    with managed_batch(manager=manager, every=2) as batch:
        for _ in range(4):
            batch.step()
    assert batch.report.items == 4
    assert manager.events.count("clear_cache") == 3


def test_loops_and_bind_refuse_what_they_cannot_use_naming_the_parameter() -> None:
    """track() and map() of something that cannot be iterated, and bind() of something that
    cannot be called, are refused at once with the parameter's name, before any item runs."""
    with managed_batch("cpu", every=None) as batch:
        with pytest.raises(InvalidArgumentTypeError, match="iterable must be iterable, got 5"):
            batch.track(5)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentTypeError, match="items must be iterable, got None"):
            batch.map(str, None)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentTypeError, match="bind takes a function, got 3"):
            batch.bind(3)  # type: ignore[arg-type]
    assert batch.report.items == 0


def test_map_refuses_coroutine_functions_before_counting_anything(tmp_path: Path) -> None:
    """map() of a coroutine function (plain, decorated, a partial of one, or an object with
    an async __call__) is refused before any item: its items would otherwise count, and be
    journaled as done, before their work ran. An async iterable in track() is told how."""

    async def colorize(item: int) -> int:
        return item

    class Colorizer:
        async def __call__(self, item: int) -> int:
            return item

    journal = tmp_path / "run.jsonl"
    with managed_batch("cpu", every=None, journal=journal) as batch:
        for function in (colorize, auto_clear(colorize), functools.partial(colorize), Colorizer()):
            with pytest.raises(InvalidArgumentTypeError, match=r"map\(\) runs plain functions"):
                batch.map(function, [1, 2])  # type: ignore[arg-type]

        async def images() -> AsyncIterator[int]:
            yield 1

        with pytest.raises(InvalidArgumentTypeError, match=r"call batch.step\(\) after each"):
            batch.track(images())  # type: ignore[arg-type]
    assert batch.report.items == 0
    assert "done" not in journal.read_text()


def test_a_tracked_iterable_is_iterated_once() -> None:
    """track() asks its iterable for an iterator once (a DataLoader starts its workers on
    each), and yields what that iterator gives."""

    class CountsIterators:
        def __init__(self) -> None:
            self.iterators = 0

        def __iter__(self) -> Iterator[int]:
            self.iterators += 1
            return iter(range(3))

        def __len__(self) -> int:
            return 3

    items = CountsIterators()
    with managed_batch("cpu", every=None) as batch:
        assert list(batch.track(items)) == [0, 1, 2]
        assert list(batch.map(str, items, key=str)) == ["0", "1", "2"]
    assert items.iterators == 2
    assert batch.report.items == 6


def test_entry_records_start_and_resets_peak() -> None:
    """Entering reads the device and resets its peak, so the report's peak is the batch's."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=6 * GiB)
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        with managed_batch("cuda") as batch:
            fake.set_memory(allocated=3 * GiB, reserved=3 * GiB)
            fake.set_memory(allocated=2 * GiB, reserved=2 * GiB)
    assert FakeCall("torch.cuda.reset_peak_memory_stats", (0,)) in fake.calls
    report = batch.report
    assert report.peak_allocated == 3 * GiB
    assert report.usage_start == 1 / 8
    assert report.usage_end == 2 / 8


def test_report_fields_and_json() -> None:
    """The report holds every promised figure and its dict survives JSON."""
    with managed_batch(manager=RecordingManager()) as batch:
        for _ in batch.track(range(4)):
            pass
    data = json.loads(json.dumps(batch.report.to_dict()))
    assert set(data) == {
        "device",
        "items",
        "calls",
        "failures",
        "cleanup_failures",
        "elapsed_seconds",
        "items_per_second",
        "usage_start",
        "usage_end",
        "peak_allocated",
        "peak_reserved",
        "cache_clears",
        "gc_runs",
        "gc_seconds",
        "ended_by",
        "host_resident_start",
        "host_resident_end",
        "host_resident_peak",
        "host_limit",
        "cleanups",
        "every",
        "skipped",
        "skipped_failed",
        "retried",
        "failed_items",
        "timeline_file",
        "memory_growth_per_item",
        "leak",
        "budget",
        "rank",
        "world_size",
        "ooms",
        "oom_retries",
        "batch_size_reductions",
        "allocator_ooms",
        "allocator_ooms_recovered",
        "largest_oom_request",
        "alloc_retries",
        "cached_but_free_end",
        "inactive_split_end",
        "memory_snapshots",
        "memory_threshold",
        "usage_of",
        "timeline",
        "extras",
    }
    assert data["items"] == 4
    assert data["device"] == "cpu"
    assert data["peak_allocated"] is None
    assert data["items_per_second"] == pytest.approx(4 / data["elapsed_seconds"])


def test_summary_is_logged_at_info(memscope_log: pytest.LogCaptureFixture) -> None:
    """One summary line is logged at INFO when the batch ends."""
    with managed_batch(manager=RecordingManager()) as batch:
        batch.step()
    infos = [r.getMessage() for r in memscope_log.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "1 item " in infos[0]
    assert batch.report.summary() in infos[0]


def test_exception_propagates_unchanged_and_report_is_kept() -> None:
    """An exception leaves the batch as the same object; the report names it."""
    original = ValueError("bad image")
    manager = RecordingManager()
    batch = managed_batch(manager=manager)

    def run() -> None:
        with batch:
            batch.step()
            raise original

    with pytest.raises(ValueError, match="bad image") as raised:
        run()
    assert raised.value is original
    assert batch.report.ended_by == "ValueError"
    assert batch.report.items == 1
    assert manager.events[-2:] == ["clear_cache", "trigger_gc_if_needed"]


def test_report_after_keyboard_interrupt() -> None:
    """Ctrl-C in the loop: final cleanup runs, the interrupt propagates, the report exists."""
    manager = RecordingManager()
    batch = managed_batch(manager=manager, every=100)

    def run() -> None:
        with batch:
            for item in batch.track(range(10)):
                if item == 3:
                    raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run()
    assert batch.report.items == 3
    assert batch.report.ended_by == "KeyboardInterrupt"
    assert manager.events == ["clear_cache", "trigger_gc_if_needed"]


def test_abandoned_track_generator_is_closed_on_exit() -> None:
    """Breaking out of track() leaves no generator to run later; the batch closes it."""
    closed: list[bool] = []

    def images() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            closed.append(True)

    with managed_batch(manager=RecordingManager()) as batch:
        tracked = batch.track(images())
        for item in tracked:
            if item == 2:
                break
        assert closed == []
    assert closed == [True]
    assert batch.report.items == 2


def test_failing_final_cleanup_does_not_mask_exception(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """A final cleanup that raises is logged; the body's exception still propagates."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("cleanup broke")
    with pytest.raises(KeyError), managed_batch(manager=manager) as batch:
        raise KeyError("body")
    assert batch.report.cleanup_failures == 1
    assert any(r.levelno == logging.WARNING for r in memscope_log.records)


def test_failing_cadence_cleanup_does_not_stop_the_loop() -> None:
    """A cleanup failure during the loop is counted and the loop carries on."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("cleanup broke")
    with managed_batch(manager=manager, every=1) as batch:
        for _ in batch.track(range(3)):
            pass
    assert batch.report.items == 3
    assert batch.report.cleanup_failures == 4


def test_decorated_calls_count_into_the_report() -> None:
    """@auto_clear calls inside the batch count as calls and failures in its report."""

    @auto_clear(every=2)
    def colorize(image: int) -> int:
        if image == 3:
            raise ValueError("corrupt")
        return image

    with managed_batch(manager=RecordingManager(), every=1000) as batch:
        for image in batch.track(range(5)):
            with contextlib.suppress(ValueError):
                colorize(image)
    report = batch.report
    assert (report.calls, report.failures, report.items) == (5, 1, 5)
    # The batch owns the cadence: the decorator runs no cleanup of its own, the batch
    # cleans once at the end.
    assert colorize.cleanup_stats.cleanups == 0
    assert report.cleanups == 1


def test_nested_batches_share_the_manager_and_do_not_double_count() -> None:
    """An inner batch on the same device reuses the outer manager; each event is counted in
    exactly one report, and the outer peak covers the inner batch."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        with managed_batch("cuda", every=1) as outer:
            for _ in outer.track(range(2)):
                pass
            fake.set_memory(allocated=5 * GiB, reserved=5 * GiB)
            fake.set_memory(allocated=GiB, reserved=GiB)
            with managed_batch(every=1) as inner:
                assert inner.manager is outer.manager
                assert current_batch() is inner
                for _ in inner.track(range(3)):
                    pass
                fake.set_memory(allocated=4 * GiB, reserved=4 * GiB)
                fake.set_memory(allocated=GiB, reserved=GiB)
            assert current_batch() is outer
        total_clears = fake.count("torch.cuda.empty_cache")
    assert (outer.report.items, inner.report.items) == (2, 3)
    assert outer.report.cache_clears + inner.report.cache_clears == total_clears
    assert inner.report.peak_allocated == 4 * GiB
    assert outer.report.peak_allocated == 5 * GiB


def test_reentering_the_same_batch_object() -> None:
    """Entering the same batch twice nests like a stack: one report, at the outer exit."""
    manager = RecordingManager()
    batch = managed_batch(manager=manager, every=1000)
    with batch:
        batch.step()
        with batch:
            batch.step()
        assert batch.active
        with pytest.raises(BatchStateError):
            _ = batch.report
    assert batch.report.items == 2
    assert cleanup_count(manager) == 1


def cleanup_count(manager: RecordingManager) -> int:
    """How many final or cadence cleanups a recording manager saw."""
    return manager.events.count("clear_cache")


def test_threads_share_a_batch_with_exact_counts() -> None:
    """Eight workers calling through bind() and stepping give exact totals: each call and
    each step() is one item, and the batch's one cadence cleans every 4 of them."""

    @auto_clear(every=10)
    def colorize(image: int) -> int:
        return image

    with managed_batch(manager=RecordingManager(), every=4, cache_policy=ClearAlways()) as batch:
        colorize_in_batch = batch.bind(colorize)

        def worker(images: range) -> None:
            for image in images:
                colorize_in_batch(image)
                batch.step()

        threads = [threading.Thread(target=worker, args=(range(500),)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert batch.report.items == 8000
    assert batch.report.calls == 4000
    assert batch.report.cleanups == 8000 // 4 + 1


def test_thread_pool_with_bind() -> None:
    """ThreadPoolExecutor.map over a bound function counts every call."""

    @auto_clear(every=1)
    def colorize(image: int) -> int:
        return image * 2

    with (
        managed_batch(manager=RecordingManager(), every=1000) as batch,
        ThreadPoolExecutor(4) as pool,
    ):
        results = list(pool.map(batch.bind(colorize), range(20)))
    assert results == [image * 2 for image in range(20)]
    assert batch.report.calls == 20


def test_async_with() -> None:
    """``async with`` works the same as ``with``."""

    async def main() -> int:
        async with managed_batch(manager=RecordingManager(), every=2) as batch:
            for _ in batch.track(range(5)):
                await asyncio.sleep(0)
        return batch.report.items

    assert asyncio.run(main()) == 5


def test_progress_bar_shows_total_and_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=True draws a tqdm bar with the total from len() and the memory usage."""
    pytest.importorskip("tqdm")
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.25)
        with managed_batch("cuda", progress=True) as batch:
            for _ in batch.track([1, 2, 3]):
                pass
    err = capsys.readouterr().err
    assert "3/3" in err
    assert "memory 25%" in err
    assert batch.report.items == 3


def test_progress_without_tqdm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tqdm, progress=True fails at once, naming the extra to install."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"pip install 'memscope\[progress\]'"):
        managed_batch(progress=True)


def test_bad_arguments_fail_at_construction() -> None:
    """Bad every, threshold, manager, progress or device fail before the batch starts."""
    with pytest.raises(InvalidArgumentError, match="every"):
        managed_batch(every=0)
    with pytest.raises(InvalidArgumentTypeError, match="every"):
        managed_batch(every=True)
    with pytest.raises(ValueError, match="memory_threshold must be between 0 and 1"):
        managed_batch(memory_threshold=0)
    with pytest.raises(TypeError, match="manager"):
        managed_batch(manager=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress"):
        managed_batch(progress="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'gpu'"):
        managed_batch("gpu")


def test_using_a_batch_outside_with_is_a_clear_error() -> None:
    """manager, report, step() and track() say plainly when the batch is not active."""
    batch = managed_batch()
    with pytest.raises(BatchStateError, match="entered"):
        _ = batch.manager
    with pytest.raises(BatchStateError, match="ended"):
        _ = batch.report
    with pytest.raises(BatchStateError, match="step"):
        batch.step()
    with pytest.raises(BatchStateError, match="track"):
        batch.track([1])


def test_batch_makes_its_own_manager_for_the_device() -> None:
    """Without a manager, the batch makes one for its device and threshold."""
    with FakeDevice("cuda", device_count=2) as fake:
        fake.set_usage(0.1, index=1)
        with managed_batch("cuda:1", memory_threshold=0.5) as batch:
            manager = batch.manager
    assert isinstance(manager, MemoryManager)
    assert str(manager.resolved_device) == "cuda:1"
    assert manager.memory_threshold == 0.5


def test_batch_made_manager_backs_off_fruitless_collections() -> None:
    """The manager a batch makes skips collections that freed nothing: with usage pinned at
    90 %, cleanups after items 5 and 10 and the final one collect twice, not three times."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.9)
        with managed_batch("cuda", every=5) as batch:
            for _ in batch.track(range(12)):
                pass
    assert batch.manager.gc_backoff is not None
    assert batch.report.gc_runs == 2
    assert fake.count("torch.cuda.empty_cache") == 2  # nothing reclaimable: no policy clears


def test_budget_configures_the_batch_manager() -> None:
    """budget= reaches the manager the batch makes (on the CPU it watches host memory); with
    manager= it is refused, naming both."""
    with managed_batch("cpu", budget="1GiB") as batch:
        assert batch.manager.host_monitor is not None
        assert batch.manager.budget == 1024**3
    assert batch.report.host_resident_end is not None
    with pytest.raises(InvalidArgumentError, match="pass manager= or budget=, not both"):
        managed_batch(manager=RecordingManager(), budget="1GiB")
    with pytest.raises(ValueError, match="budget"):
        managed_batch("cpu", budget="lots")


# Reports while the batch runs ------------------------------------------------------------


def test_report_so_far_has_the_figures_up_to_now_and_no_final_cleanup() -> None:
    """While a batch runs, report_so_far() counts what happened so far; the batch's report,
    once it ends, adds only the final cleanup."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=3 * GiB, reserved=4 * GiB)
        with managed_batch("cuda", every=2) as batch:
            for _ in range(3):
                batch.step()
            so_far = batch.report_so_far()
            with pytest.raises(BatchStateError, match="ended"):
                _ = batch.report
            fake.set_memory(allocated=5 * GiB)
            later = batch.report_so_far()
    assert (so_far.items, so_far.cleanups, so_far.ended_by) == (3, 1, None)
    assert so_far.peak_allocated == 3 * GiB
    assert later.peak_allocated == 5 * GiB
    assert later.elapsed_seconds >= so_far.elapsed_seconds
    assert (batch.report.items, batch.report.cleanups) == (3, 2)


def test_report_so_far_needs_a_running_batch() -> None:
    """Before the batch starts and after it ends, report_so_far() raises BatchStateError."""
    batch = managed_batch(manager=RecordingManager())
    with pytest.raises(BatchStateError, match="report_so_far"):
        batch.report_so_far()
    with batch:
        pass
    with pytest.raises(BatchStateError, match="report_so_far"):
        batch.report_so_far()


# What a cleanup step reads ----------------------------------------------------------------


def test_a_step_that_frees_nothing_reads_the_device_once() -> None:
    """With nothing to free, each step of an every=1 batch reads the device once: the cache
    policy, the threshold check and the leak watch share one reading."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        with managed_batch("cuda", every=1) as batch:
            fake.calls.clear()
            for _ in range(10):
                batch.step()
            calls = [call.function for call in fake.calls]
    assert calls == ["torch.cuda.mem_get_info", "torch.cuda.memory_stats_as_nested_dict"] * 10


def test_a_step_that_clears_the_cache_reads_the_device_after_the_clear() -> None:
    """ClearAlways clears first, then one reading serves the threshold check and the leak
    watch."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=2 * GiB)
        with managed_batch("cuda", every=1, cache_policy=ClearAlways()) as batch:
            fake.calls.clear()
            for _ in range(3):
                batch.step()
            calls = [call.function for call in fake.calls]
    step = [
        "torch.cuda.empty_cache",
        "torch.cuda.mem_get_info",
        "torch.cuda.memory_stats_as_nested_dict",
    ]
    assert calls == step * 3


def test_a_manager_subclass_s_own_threshold_check_is_still_called() -> None:
    """A MemoryManager subclass that overrides trigger_gc_if_needed (the Cobra API) has its
    method called at every cleanup step, not bypassed by the shared reading."""

    class CountingManager(MemoryManager):
        checks = 0

        def trigger_gc_if_needed(self) -> bool:
            self.checks += 1
            return super().trigger_gc_if_needed()

    with FakeDevice("cuda", total=8 * GiB):
        manager = CountingManager("cuda")
        with managed_batch(manager=manager, every=1) as batch:
            for _ in range(5):
                batch.step()
    assert manager.checks == 6  # five steps and the batch's final cleanup
