"""One model inside a batch: one cleanup cadence, one truthful report, every client counted."""

from __future__ import annotations

import gc
import logging

import pytest
import torch

from memscope import (
    ClearAlways,
    ClearWhenUseful,
    MemoryManager,
    auto_clear,
    is_oom_error,
    managed_batch,
)
from memscope.testing import FakeDevice, FakeHost, GiB, MiB, RecordingManager, oom_error

IMAGES = 40


@pytest.fixture
def gc_collect_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``gc.collect()`` made while the test runs, counted and still really run."""
    calls: list[int] = []
    collect = gc.collect

    def counting_collect(generation: int = 2) -> int:
        calls.append(generation)
        return collect(generation)

    monkeypatch.setattr(gc, "collect", counting_collect)
    return calls


def test_readme_pattern_cleans_up_once_per_five_images() -> None:
    """managed_batch(every=5) around @auto_clear(every=5): 8 cleanups over 40 images, plus the
    batch's final one, not one cadence per layer."""

    @auto_clear(every=5)
    def colorize(image: int) -> int:
        return image

    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=2 * GiB, reserved=2 * GiB)
        with managed_batch("cuda", every=5, cache_policy=ClearAlways()) as batch:
            for image in batch.track(range(IMAGES)):
                colorize(image)
            during = fake.count("torch.cuda.empty_cache")
    assert during == IMAGES // 5
    assert fake.count("torch.cuda.empty_cache") == IMAGES // 5 + 1
    report = batch.report
    assert (report.items, report.calls) == (IMAGES, IMAGES)
    assert report.cleanups == IMAGES // 5 + 1
    assert report.cache_clears == IMAGES // 5 + 1
    assert colorize.cleanup_stats.cleanups == 0


def test_decorated_calls_outside_a_tracked_item_are_the_items() -> None:
    """Without track(), each decorated call is one item and drives the batch's cadence."""

    @auto_clear(every=3)
    def colorize(image: int) -> int:
        return image

    manager = RecordingManager()
    with managed_batch(manager=manager, every=5, cache_policy=ClearAlways()) as batch:
        for image in range(IMAGES):
            colorize(image)
    assert batch.report.items == IMAGES
    assert manager.events.count("clear_cache") == IMAGES // 5 + 1


def test_calls_inside_a_tracked_item_add_no_items() -> None:
    """Two decorated calls per tracked image: 10 items, 20 calls, cadence by items."""

    @auto_clear(every=1)
    def stage(image: int) -> int:
        return image

    manager = RecordingManager()
    with managed_batch(manager=manager, every=5, cache_policy=ClearAlways()) as batch:
        for image in batch.track(range(10)):
            stage(image)
            stage(image)
    assert (batch.report.items, batch.report.calls) == (10, 20)
    assert manager.events.count("clear_cache") == 10 // 5 + 1


def test_outside_a_batch_the_decorator_keeps_its_own_cadence() -> None:
    """With no batch active, @auto_clear(every=4) cleans after calls 4 and 8."""
    manager = RecordingManager()

    @auto_clear(every=4, manager=manager, cache_policy=ClearAlways())
    def colorize(image: int) -> int:
        return image

    for image in range(9):
        colorize(image)
    assert manager.events.count("clear_cache") == 2
    assert colorize.cleanup_stats.cleanups == 2


def test_default_batch_leaves_a_cache_with_nothing_reclaimable_alone() -> None:
    """A default managed_batch("cuda") over 40 items makes at most one empty_cache call when
    the cache holds nothing that no tensor uses."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=6 * GiB, reserved=6 * GiB)
        with managed_batch("cuda") as batch:
            for _ in batch.track(range(IMAGES)):
                pass
    assert fake.count("torch.cuda.empty_cache") <= 1
    assert batch.report.cache_clears == fake.count("torch.cuda.empty_cache")


def test_default_batch_clears_a_cache_holding_a_share_of_the_device() -> None:
    """When reclaimable cache is at least 10 % of the device, the default policy clears it."""
    with FakeDevice("cuda", total=24 * GiB) as fake, managed_batch("cuda", every=5) as batch:
        for _ in batch.track(range(10)):
            # Each item leaves 3 GiB of freed blocks in the cache (the fake's
            # empty_cache gives them back).
            fake.set_memory(allocated=6 * GiB, reserved=9 * GiB)
    # After items 5 and 10; at exit the cache holds nothing reclaimable any more.
    assert fake.count("torch.cuda.empty_cache") == 2
    assert batch.report.cache_clears == 2


@pytest.mark.parametrize(
    ("allocated", "reserved", "usage_threshold", "clears"),
    [
        (6 * GiB, 6 * GiB, 0.8, False),  # nothing reclaimable
        (6 * GiB, 8 * GiB, 0.8, False),  # 2 GiB of 24: under 10 %
        (6 * GiB, 9 * GiB, 0.8, True),  # 3 GiB of 24: above 10 %
        (20 * GiB, 20 * GiB, 0.8, False),  # at the threshold, nothing reclaimable: no storm
        (20 * GiB, 21 * GiB, 0.8, True),  # at the threshold, 1 GiB (over 1 %) reclaimable
    ],
)
def test_clear_when_useful_decides_by_reclaimable_share(
    allocated: int, reserved: int, usage_threshold: float, clears: bool
) -> None:
    """ClearWhenUseful clears for reclaimable cache >= 10 % of the device or high usage."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=allocated, reserved=reserved)
        snapshot = MemoryManager("cuda").snapshot()
    assert ClearWhenUseful()(snapshot, usage_threshold) is clears


def test_manager_clear_cache_always_clears() -> None:
    """MemoryManager.clear_cache() keeps its literal contract whatever the policies say."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=6 * GiB, reserved=6 * GiB)
        MemoryManager("cuda").clear_cache()
        assert fake.count("torch.cuda.empty_cache") == 1


def test_report_totals_equal_every_clear_and_collection_in_a_run_with_ooms(
    gc_collect_calls: list[int],
) -> None:
    """With OOM retries and usage above the threshold, the report's cache_clears and gc_runs
    equal the empty_cache calls the fake recorded and the gc.collect calls memscope made."""
    failures = iter([True, True, False] * 4)

    @auto_clear(every=1, oom_retries=3)
    def colorize(image: int) -> int:
        if next(failures):
            raise oom_error("cuda")
        return image

    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.9)
        with managed_batch("cuda", every=2) as batch:
            for image in range(4):
                colorize(image)
        empty_cache_calls = fake.count("torch.cuda.empty_cache")
    report = batch.report
    assert report.ooms == 8
    assert report.oom_retries == 8
    assert report.cache_clears == empty_cache_calls
    assert report.gc_runs == len(gc_collect_calls)
    assert report.gc_runs >= 8  # at least one collection per recovery


def test_an_oom_crossing_several_layers_is_counted_once() -> None:
    """An OOM that exhausts the decorator's retries and then leaves the batch counts once."""

    @auto_clear(oom_retries=1)
    def colorize(image: int) -> int:
        raise oom_error("cuda")

    with (
        FakeDevice("cuda", total=8 * GiB),
        pytest.raises(torch.OutOfMemoryError) as raised,
        managed_batch("cuda") as batch,
    ):
        colorize(1)
    assert is_oom_error(raised.value)
    assert batch.report.ooms == 2  # the first attempt and the retry: two distinct errors
    assert batch.report.oom_retries == 1


def test_count_only_mode_counts_and_never_cleans(gc_collect_calls: list[int]) -> None:
    """every=None counts items and calls, runs no cleanup, not even at the end."""

    @auto_clear(every=1)
    def colorize(image: int) -> int:
        return image

    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.95)
        with managed_batch("cuda", every=None) as batch:
            for image in batch.track(range(12)):
                colorize(image)
        assert fake.count("torch.cuda.empty_cache") == 0
    report = batch.report
    assert (report.items, report.calls) == (12, 12)
    assert (report.cleanups, report.cache_clears, report.gc_runs) == (0, 0, 0)
    assert report.every is None
    assert gc_collect_calls == []


def test_cpu_batch_reports_host_memory() -> None:
    """On the CPU the batch reports the process's resident memory, its peak and the limit."""
    with (
        FakeHost(resident=2 * GiB, physical_memory=16 * GiB) as host,
        managed_batch("cpu", every=2, timeline=True) as batch,
    ):
        for item in batch.track(range(4)):
            host.set_resident(2 * GiB + (item + 1) * 256 * MiB)
        host.set_resident(2 * GiB + 512 * MiB)
    report = batch.report
    assert report.host_resident_start == 2 * GiB
    assert report.host_resident_end == 2 * GiB + 512 * MiB
    assert report.host_resident_peak == 3 * GiB
    assert report.host_limit == 16 * GiB
    assert [entry.host_resident for entry in report.timeline] == [
        2 * GiB + n * 256 * MiB for n in (1, 2, 3, 4)
    ]
    assert "host memory" in report.summary()


def test_cpu_manager_usage_stays_zero() -> None:
    """MemoryManager("cpu").check_memory_usage() is 0.0, as the compatibility contract says."""
    with FakeHost(resident=15 * GiB, physical_memory=16 * GiB):
        assert MemoryManager("cpu").check_memory_usage() == 0.0


def test_cpu_batch_without_host_figures_says_once_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, memscope_log: pytest.LogCaptureFixture
) -> None:
    """Where resident memory cannot be read, the first CPU batch says how to get figures."""
    import memscope._watch_host
    from memscope.exceptions import HostMemoryUnavailableError

    def unavailable() -> None:
        raise HostMemoryUnavailableError("no psutil, no /proc")

    monkeypatch.setattr(memscope._watch_host, "HostMemoryMonitor", unavailable)
    monkeypatch.setattr(memscope._watch_host, "_host_figures_missing_said", False)
    for _ in range(3):
        with managed_batch("cpu") as batch:
            batch.step()
        assert batch.report.host_resident_end is None
    warnings = [r.getMessage() for r in memscope_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pip install 'memscope[host]'" in warnings[0]
