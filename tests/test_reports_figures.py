"""What a report shows: the device's figures where it has them, the host's where the batch
watched it (the CPU is summarised and drawn by its host memory), and counts said right."""

from __future__ import annotations

from typing import Any

import pytest

from memscope import BatchReport, managed_batch
from memscope.reports import TimelineEntry
from memscope.testing import FakeHost, GiB, MiB

HOST_LINE = "host memory (resident)"


def make_report(**changes: Any) -> BatchReport:
    """A GPU batch report with plain figures, changed where the test says."""
    figures: dict[str, Any] = {
        "device": "cuda:0",
        "items": 24,
        "calls": 24,
        "failures": 0,
        "cleanup_failures": 0,
        "elapsed_seconds": 0.91,
        "usage_start": 0.1,
        "usage_end": 0.2,
        "peak_allocated": 3 * GiB,
        "peak_reserved": 4 * GiB,
        "cache_clears": 5,
        "gc_runs": 0,
        "gc_seconds": 0.0,
    }
    figures.update(changes)
    return BatchReport(**figures)


def make_cpu_report(**changes: Any) -> BatchReport:
    """A CPU batch report with host figures and no device figures."""
    figures: dict[str, Any] = {
        "device": "cpu",
        "usage_start": 0.0,
        "usage_end": 0.0,
        "peak_allocated": None,
        "peak_reserved": None,
        "host_resident_start": round(1.2 * GiB),
        "host_resident_end": round(1.3 * GiB),
        "host_resident_peak": round(1.4 * GiB),
        "host_limit": round(23.4 * GiB),
    }
    figures.update(changes)
    return make_report(**figures)


def host_timeline(*residents: int | None, gc_at: tuple[int, ...] = ()) -> tuple[TimelineEntry, ...]:
    """A timeline without device figures whose item i+1 left ``residents[i]`` resident."""
    return tuple(
        TimelineEntry(
            item=item,
            seconds=0.1 * item,
            usage=0.0,
            gc_ran=item in gc_at,
            host_resident=resident,
        )
        for item, resident in enumerate(residents, start=1)
    )


# summary() ---------------------------------------------------------------------------------


def test_cpu_summary_labels_host_memory_and_prints_no_device_part() -> None:
    """A CPU report with host figures reads as host memory, with no 0 % usage or n/a peak."""
    assert make_cpu_report().summary() == (
        "cpu: 24 items in 0.91 s (26.37 items/s), host memory: resident 1.2 GiB -> 1.3 GiB "
        "(peak 1.4 GiB) of 23.4 GiB limit, 5 cache clears, 0 GC runs (0 ms)"
    )


def test_host_summary_leaves_out_the_peak_and_limit_it_does_not_know() -> None:
    """Without a host peak or limit, the host part says only what is known."""
    summary = make_cpu_report(host_resident_peak=None, host_limit=None).summary()
    assert "host memory: resident 1.2 GiB -> 1.3 GiB," in summary
    assert "peak" not in summary
    assert "limit" not in summary


def test_gpu_summary_keeps_its_device_part_and_adds_host_memory_when_watched() -> None:
    """On a GPU the usage and peak stay; host figures, when present, follow as host memory."""
    plain = make_report().summary()
    assert "usage 10.0% -> 20.0%, peak allocated 3.0 GiB" in plain
    assert "host memory" not in plain
    watched = make_report(
        host_resident_start=GiB, host_resident_end=2 * GiB, host_limit=16 * GiB
    ).summary()
    assert "usage 10.0% -> 20.0%, peak allocated 3.0 GiB, host memory: resident 1.0 GiB" in (
        watched
    )
    assert "of 16.0 GiB limit" in watched


def test_cpu_summary_without_any_figures_claims_no_usage() -> None:
    """A CPU report with neither device nor host figures prints no usage or peak at all."""
    summary = make_cpu_report(
        host_resident_start=None, host_resident_end=None, host_resident_peak=None, host_limit=None
    ).summary()
    assert summary == "cpu: 24 items in 0.91 s (26.37 items/s), 5 cache clears, 0 GC runs (0 ms)"


def test_device_without_peaks_other_than_the_cpu_keeps_its_usage() -> None:
    """MPS keeps no peaks, but its usage is a real figure: the summary still shows it."""
    summary = make_report(device="mps", peak_allocated=None, peak_reserved=None).summary()
    assert "usage 10.0% -> 20.0%, peak allocated n/a" in summary


def test_summary_keeps_rank_budget_ooms_failures_and_ended_by() -> None:
    """The rank prefix, budget, OOM counts, failures and ending survive the CPU layout."""
    summary = make_cpu_report(
        rank=1,
        world_size=4,
        budget=6 * GiB,
        ooms=2,
        oom_retries=2,
        batch_size_reductions=1,
        failures=3,
        cleanup_failures=1,
        ended_by="RuntimeError",
    ).summary()
    assert summary.startswith("rank 1/4 cpu: 24 items")
    assert summary.endswith(
        ", budget 6.0 GiB, 2 out-of-memory errors (2 retried, 1 batch size reduction), "
        "3 failures, 1 failed cleanup, ended by RuntimeError"
    )


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0 items in 0.91 s (0.00 items/s), 0 cache clears, 0 GC runs"),
        (1, "1 item in 0.91 s (1.10 items/s), 1 cache clear, 1 GC run"),
        (2, "2 items in 0.91 s (2.20 items/s), 2 cache clears, 2 GC runs"),
    ],
)
def test_summary_pluralises_items_cache_clears_and_gc_runs(count: int, expected: str) -> None:
    """One is singular ("1 item", "1 cache clear", "1 GC run"); zero and more are plural."""
    report = make_cpu_report(
        items=count,
        cache_clears=count,
        gc_runs=count,
        host_resident_start=None,
        host_resident_end=None,
        host_resident_peak=None,
    )
    assert report.summary().startswith(f"cpu: {expected} (0 ms)")


def test_summary_pluralises_single_ooms_and_failures() -> None:
    """One OOM, one failure and one failed cleanup read in the singular."""
    summary = make_report(ooms=1, oom_retries=1, failures=1, cleanup_failures=1).summary()
    assert "1 out-of-memory error (1 retried, 0 batch size reductions)" in summary
    assert "1 failure, 1 failed cleanup" in summary


def test_a_cpu_batch_watching_the_host_is_summarised_by_its_host_memory() -> None:
    """A real CPU batch on a faked host reports its resident memory, peak and limit, and its
    usage as the host's share of that limit."""
    with (
        FakeHost(resident=2 * GiB, physical_memory=16 * GiB) as host,
        managed_batch("cpu", timeline=True) as batch,
    ):
        for item in batch.track(range(4)):
            host.set_resident(2 * GiB + (item + 1) * 256 * MiB)
    report = batch.report
    assert [entry.host_resident for entry in report.timeline] == [
        2 * GiB + item * 256 * MiB for item in range(1, 5)
    ]
    assert report.host_resident_peak == 3 * GiB
    summary = report.summary()
    assert "host memory: resident 2.0 GiB -> 3.0 GiB (peak 3.0 GiB) of 16.0 GiB limit" in summary
    assert "usage 12.5% -> 18.8% of host limit" in summary


# plot() ------------------------------------------------------------------------------------


def test_cpu_plot_draws_host_resident_memory_and_its_limit() -> None:
    """A CPU report with host figures is one panel: resident memory over items in GiB, the
    limit as a flat line, GC runs marked; no device usage line."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    report = make_cpu_report(
        items=3,
        gc_runs=1,
        host_limit=8 * GiB,
        timeline=host_timeline(GiB, 3 * GiB // 2, 2 * GiB, gc_at=(2,)),
    )
    figure = draw_timeline(report)
    (host_axes,) = figure.axes
    lines = {line.get_label(): line for line in host_axes.get_lines()}
    # The limit, far above the data, is named in the axis label rather than drawn.
    assert set(lines) == {HOST_LINE}
    assert list(lines[HOST_LINE].get_xdata()) == [1, 2, 3]
    assert list(lines[HOST_LINE].get_ydata()) == pytest.approx([1.0, 1.5, 2.0])
    assert host_axes.get_ylabel() == "host memory (GiB; limit 8.0 GiB)"
    assert host_axes.get_xlabel() == "item"
    (gc_markers,) = host_axes.collections
    assert gc_markers.get_offsets().tolist() == [[2, pytest.approx(1.5)]]
    assert list(host_axes.texts) == []
    assert figure.get_suptitle() == "memscope: cpu, 3 items in 0.9 s, 1 GC run"


def test_cpu_plot_uses_mebibytes_below_one_gibibyte() -> None:
    """Resident figures under 1 GiB with no known limit are drawn in MiB."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    report = make_cpu_report(host_limit=None, timeline=host_timeline(300 * MiB, None, 500 * MiB))
    (host_axes,) = draw_timeline(report).axes
    (line,) = host_axes.get_lines()
    assert line.get_label() == HOST_LINE
    assert list(line.get_xdata()) == [1, 3]
    assert list(line.get_ydata()) == pytest.approx([300.0, 500.0])
    assert host_axes.get_ylabel() == "host memory (MiB)"


def test_gpu_plot_keeps_its_panels_and_adds_the_host_one_when_present() -> None:
    """On a GPU, usage and bytes panels stay as they were; host figures add a third panel."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    timeline = tuple(
        TimelineEntry(
            item=item,
            seconds=0.1 * item,
            usage=0.25 * item,
            allocated=item * GiB,
            reserved=item * GiB,
            host_resident=(4 + item) * GiB,
        )
        for item in (1, 2)
    )
    figure = draw_timeline(make_report(host_limit=32 * GiB, timeline=timeline))
    usage_axes, bytes_axes, host_axes = figure.axes
    assert usage_axes.get_ylabel() == "device memory usage"
    assert bytes_axes.get_ylabel() == "memory (MiB)"
    assert host_axes.get_ylabel() == "host memory (GiB; limit 32.0 GiB)"
    assert host_axes.get_xlabel() == "item"
    host_lines = {line.get_label(): line for line in host_axes.get_lines()}
    assert list(host_lines[HOST_LINE].get_ydata()) == pytest.approx([5.0, 6.0])

    unwatched = [
        TimelineEntry(item=entry.item, seconds=entry.seconds, usage=entry.usage, allocated=GiB)
        for entry in timeline
    ]
    assert len(draw_timeline(make_report(timeline=tuple(unwatched))).axes) == 2


def test_a_real_cpu_batch_plots_its_host_memory() -> None:
    """A CPU batch on a faked host plots the resident memory it recorded, in GiB."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    with (
        FakeHost(resident=2 * GiB, physical_memory=16 * GiB) as host,
        managed_batch("cpu", timeline=True) as batch,
    ):
        for item in batch.track(range(2)):
            host.set_resident(2 * GiB + (item + 1) * 512 * MiB)
    (host_axes,) = draw_timeline(batch.report).axes
    lines = {line.get_label(): line for line in host_axes.get_lines()}
    assert list(lines[HOST_LINE].get_ydata()) == pytest.approx([2.5, 3.0])
    assert "limit 16.0 GiB" in host_axes.get_ylabel()
