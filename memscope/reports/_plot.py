"""A batch report's memory timeline as a picture (needs matplotlib: ``memscope[plot]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from memscope.reports._batch import BatchReport

__all__: list[str] = []

PLOT_MISSING = (
    "report.plot() needs matplotlib, which is not installed: pip install 'memscope[plot]'"
)

_MEBIBYTE = 1024**2


def plot_timeline(report: BatchReport, path: str | os.PathLike[str]) -> Path:
    """Draw the report's timeline into ``path``; the suffix picks the format (``.png``)."""
    target = Path(path)
    draw_timeline(report).savefig(target)
    return target


def draw_timeline(report: BatchReport) -> Figure:
    """The report's timeline as a matplotlib ``Figure``, not yet saved."""
    try:
        # The package first: a hidden or broken matplotlib must fail here even when a
        # submodule was imported before.
        import matplotlib
        from matplotlib.figure import Figure as MatplotlibFigure
        from matplotlib.ticker import MaxNLocator, PercentFormatter
    except ImportError:
        raise ImportError(PLOT_MISSING) from None
    del matplotlib

    timeline = report.timeline
    items = [entry.item for entry in timeline]
    has_bytes = any(entry.allocated is not None or entry.reserved is not None for entry in timeline)

    # A Figure without pyplot: no global state, no GUI backend, safe in threads and servers.
    figure = MatplotlibFigure(figsize=(8, 6.5 if has_bytes else 4.5), dpi=100, layout="constrained")
    if has_bytes:
        usage_axes, bytes_axes = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    else:
        usage_axes, bytes_axes = figure.subplots(1, 1), None
    figure.suptitle(
        f"memscope: {report.device}, {report.items} items in {report.elapsed_seconds:.1f} s, "
        f"{report.gc_runs} GC runs"
    )

    usage_axes.plot(
        items, [entry.usage for entry in timeline], marker=".", label="device memory usage"
    )
    if report.memory_threshold is not None:
        usage_axes.axhline(
            report.memory_threshold,
            color="tab:red",
            linestyle="--",
            label=f"GC threshold ({report.memory_threshold:.0%})",
        )
    collected = [entry for entry in timeline if entry.gc_ran]
    if collected:
        usage_axes.scatter(
            [entry.item for entry in collected],
            [entry.usage for entry in collected],
            marker="v",
            s=70,
            color="tab:orange",
            zorder=3,
            label="GC ran",
        )
    usage_axes.set_ylim(0, 1.05)
    usage_axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    usage_axes.set_ylabel("device memory usage")
    usage_axes.grid(alpha=0.3)
    usage_axes.legend(loc="upper left")
    note = None
    if not timeline:
        note = "no timeline recorded: managed_batch(..., timeline=True) records one"
    elif not has_bytes and not any(entry.usage for entry in timeline):
        note = f"{report.device} reports no memory figures: usage reads 0%"
    if note is not None:
        usage_axes.text(
            0.5,
            0.5,
            note,
            transform=usage_axes.transAxes,
            horizontalalignment="center",
            color="gray",
        )

    bottom_axes: Axes = usage_axes
    if bytes_axes is not None:
        _plot_bytes(bytes_axes, report)
        bottom_axes = bytes_axes
    bottom_axes.set_xlabel("item")
    bottom_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def _plot_bytes(axes: Axes, report: BatchReport) -> None:
    for label, colour, values in (
        ("allocated", "tab:blue", [entry.allocated for entry in report.timeline]),
        ("reserved", "tab:green", [entry.reserved for entry in report.timeline]),
    ):
        points = [
            (entry.item, value / _MEBIBYTE)
            for entry, value in zip(report.timeline, values, strict=True)
            if value is not None
        ]
        if points:
            axes.plot(*zip(*points, strict=True), marker=".", color=colour, label=label)
    axes.set_ylabel("memory (MiB)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
