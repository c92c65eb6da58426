"""The demo's plot: the two runs' memory after each image, side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memscope.manager import DEFAULT_MEMORY_THRESHOLD
from memscope.reports import BatchReport
from memscope.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_SKIPPED", "draw_comparison", "footprint_timeline"]

PLOT_SKIPPED = (
    "the timeline plot needs matplotlib, which is not installed: pip install 'memscope[plot]'"
)

_MEBIBYTE = 1024**2


def footprint_timeline(report: BatchReport) -> list[tuple[int, int]]:
    """``(item, bytes)`` after each item: resident memory on the CPU, reserved elsewhere."""
    on_host = report.device.partition(":")[0] == "cpu"
    points = []
    for entry in report.timeline:
        value = entry.host_resident if on_host else entry.reserved
        if value is not None:
            points.append((entry.item, value))
    return points


def draw_comparison(
    without_cleanup: BatchReport,
    with_cleanup: BatchReport,
    *,
    budget: int,
    leftover_bytes: int,
    every: int,
) -> Figure:
    """The two runs' memory after each image, side by side, as a matplotlib ``Figure``."""
    try:
        import matplotlib
        from matplotlib.figure import Figure as MatplotlibFigure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(PLOT_SKIPPED) from None
    del matplotlib

    on_host = without_cleanup.device.partition(":")[0] == "cpu"
    figure = MatplotlibFigure(figsize=(10, 4.2), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    figure.suptitle(
        f"memscope demo on {without_cleanup.device}: each image leaves "
        f"{format_bytes(leftover_bytes)} behind in a reference cycle"
    )
    threshold = with_cleanup.memory_threshold or DEFAULT_MEMORY_THRESHOLD
    panels: tuple[tuple[Axes, BatchReport, str], ...] = (
        (left, without_cleanup, "without cleanup: managed_batch(every=None)"),
        (
            right,
            with_cleanup,
            f"with cleanup: managed_batch(every={every}, budget={format_bytes(budget)})",
        ),
    )
    for axes, report, title in panels:
        points = footprint_timeline(report)
        axes.plot(
            [item for item, _ in points],
            [value / _MEBIBYTE for _, value in points],
            marker=".",
            color="tab:purple" if on_host else "tab:green",
            label="resident (host memory)" if on_host else "reserved (device memory)",
        )
        value_at = dict(points)
        collected = [
            (entry.item, value_at[entry.item] / _MEBIBYTE)
            for entry in report.timeline
            if entry.gc_ran and entry.item in value_at
        ]
        if collected:
            items, values = zip(*collected, strict=True)
            axes.scatter(
                items, values, marker="v", s=70, color="tab:orange", zorder=3, label="GC ran"
            )
        axes.set_title(title, fontsize="medium")
        axes.set_xlabel("image")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for step, item in enumerate(range(every, with_cleanup.items + 1, every)):
        right.axvline(
            item,
            color="tab:gray",
            linestyle=":",
            alpha=0.7,
            label=f"cleanup step (every {every})" if step == 0 else None,
        )
    right.axhline(
        threshold * budget / _MEBIBYTE,
        color="tab:red",
        linestyle="--",
        label=f"GC threshold ({threshold:.0%} of the budget)",
    )
    left.set_ylabel(f"{'host' if on_host else 'device'} memory (MiB)")
    for axes in (left, right):
        axes.legend(loc="upper left")
    return figure
