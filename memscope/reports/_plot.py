"""A batch report's memory timeline as a picture (needs matplotlib: ``memscope[plot]``).

A device with memory figures (a GPU) gets its usage panel, then its allocated and reserved
bytes, then the host's resident memory where the batch watched the host. The CPU reports no
figures of its own, so a CPU batch that watched the host is drawn as host memory alone, rather
than as a usage line flat at 0 %.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from memscope._leak_rule import MIN_GROWTH_PER_ITEM, Sampled
from memscope.reports._figures import ShownReport, counted, device_reports_figures
from memscope.reports._leak import fitted_line, fitted_series
from memscope.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from memscope.reports._timeline import TimelineEntry

__all__: list[str] = []

PLOT_MISSING = (
    "report.plot() needs matplotlib, which is not installed: pip install 'memscope[plot]'"
)

HOST_RESIDENT_LABEL = "host memory (resident)"

MIN_SAMPLES: Final = 12
"""The fewest timeline entries the plot draws a growth line through, unless a leak was named."""

_MEBIBYTE = 1024**2
_GIBIBYTE = 1024**3

# Panel heights in inches: the usage panel is the one people read first, so it is the tallest.
_USAGE_HEIGHT = 3.0
_BYTES_HEIGHT = 2.0
_HOST_HEIGHT = 2.0
_TITLE_HEIGHT = 1.5


def plot_timeline(report: ShownReport, path: str | os.PathLike[str]) -> Path:
    """Draw the report's timeline into ``path``; the suffix picks the format (``.png``)."""
    target = Path(path)
    draw_timeline(report).savefig(target)
    return target


def draw_timeline(report: ShownReport) -> Figure:
    """The report's timeline as a matplotlib ``Figure``, not yet saved."""
    try:
        # The package first: a hidden or broken matplotlib must fail here even when a
        # submodule was imported before.
        import matplotlib
        from matplotlib.figure import Figure as MatplotlibFigure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(PLOT_MISSING) from None
    del matplotlib

    timeline = report.timeline
    has_bytes = any(entry.allocated is not None or entry.reserved is not None for entry in timeline)
    has_host = any(entry.host_resident is not None for entry in timeline)
    host_only = has_host and not device_reports_figures(report)

    # Host-only: one panel, as tall as the usage panel it stands in for.
    heights = [_USAGE_HEIGHT]
    if has_bytes and not host_only:
        heights.append(_BYTES_HEIGHT)
    if has_host and not host_only:
        heights.append(_HOST_HEIGHT)

    # A Figure without pyplot: no global state, no GUI backend, safe in threads and servers.
    # Wider than the panels need: the legends stand to their right.
    figure = MatplotlibFigure(
        figsize=(10, _TITLE_HEIGHT + sum(heights)), dpi=100, layout="constrained"
    )
    panels: list[Axes] = list(
        figure.subplots(len(heights), 1, sharex=True, height_ratios=heights, squeeze=False)[:, 0]
    )
    figure.suptitle(
        f"memscope: {report.device}, {counted(report.items, 'item')} in "
        f"{report.elapsed_seconds:.1f} s, {counted(report.gc_runs, 'GC run')}"
    )

    if host_only:
        _plot_host(panels[0], report, marks_gc_runs=True)
    else:
        remaining = iter(panels)
        _plot_usage(next(remaining), report, has_bytes=has_bytes)
        if has_bytes:
            _plot_bytes(next(remaining), report)
        if has_host:
            _plot_host(next(remaining), report, marks_gc_runs=False)

    bottom_axes = panels[-1]
    bottom_axes.set_xlabel("item")
    if report.timeline:
        bottom_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        bottom_axes.set_xticks([])  # no items to number: matplotlib would invent -0.04 to 0.04
    return figure


def _plot_usage(axes: Axes, report: ShownReport, *, has_bytes: bool) -> None:
    from matplotlib.ticker import PercentFormatter

    timeline = report.timeline
    axes.plot(
        [entry.item for entry in timeline],
        [entry.usage for entry in timeline],
        marker=".",
        label="device memory usage",
    )
    if report.memory_threshold is not None:
        axes.axhline(
            report.memory_threshold,
            color="tab:red",
            linestyle="--",
            label=f"GC threshold ({report.memory_threshold:.0%})",
        )
    _mark_gc_runs(axes, [(entry, entry.usage) for entry in timeline])
    axes.set_ylim(0, 1.05)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    axes.set_ylabel("device memory usage")
    axes.grid(alpha=0.3)
    _legend_beside(axes)
    note = None
    if not timeline:
        note = "no timeline recorded: managed_batch(..., timeline=True) records one"
    elif not has_bytes and not any(entry.usage for entry in timeline):
        note = f"{report.device} reports no memory figures: usage reads 0%"
    if note is not None:
        axes.text(
            0.5,
            0.5,
            note,
            transform=axes.transAxes,
            horizontalalignment="center",
            color="gray",
        )


def _mark_gc_runs(axes: Axes, points: list[tuple[TimelineEntry, float]]) -> None:
    collected = [(entry.item, value) for entry, value in points if entry.gc_ran]
    if collected:
        items, values = zip(*collected, strict=True)
        axes.scatter(items, values, marker="v", s=70, color="tab:orange", zorder=3, label="GC ran")


def _plot_bytes(axes: Axes, report: ShownReport) -> None:
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
    _plot_growth(axes, report, "allocated", _MEBIBYTE)
    axes.set_ylabel("memory (MiB)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    _legend_beside(axes)


def host_axis_range(residents: list[int], limit: int | None) -> tuple[int, int, bool]:
    """The host panel's y range in bytes, and whether the limit is drawn in it.

    The range fits the measured resident memory, with a margin, so that 90 MiB of growth
    under a 23 GiB limit is a slope and not a flat line at the floor. The limit is drawn as
    a line when it lies within half the data's span (or the margin) above the top figure;
    further away it would squash the data again, so only its value is given.
    """
    low, high = min(residents), max(residents)
    span = high - low
    margin = max(span // 10, _MEBIBYTE)
    shows_limit = limit is not None and limit <= high + max(span // 2, margin)
    top = max(high, limit if shows_limit and limit is not None else high) + margin
    return max(0, low - margin), top, shows_limit


def _plot_host(axes: Axes, report: ShownReport, *, marks_gc_runs: bool) -> None:
    measured = [entry for entry in report.timeline if entry.host_resident is not None]
    limit = report.host_limit
    bottom, top, shows_limit = host_axis_range(
        [entry.host_resident for entry in measured if entry.host_resident is not None], limit
    )
    # GiB once the axis reaches one, so that a 20 GiB host does not read 20480.
    unit, divisor = ("GiB", _GIBIBYTE) if top >= _GIBIBYTE else ("MiB", _MEBIBYTE)
    points = [
        (entry, entry.host_resident / divisor)
        for entry in measured
        if entry.host_resident is not None
    ]
    axes.plot(
        [entry.item for entry, _ in points],
        [value for _, value in points],
        marker=".",
        color="tab:purple",
        label=HOST_RESIDENT_LABEL,
    )
    if limit is not None and shows_limit:
        axes.axhline(
            limit / divisor,
            color="tab:gray",
            linestyle="-.",
            label=f"limit ({format_bytes(limit)})",
        )
    _plot_growth(axes, report, "resident", divisor)
    if marks_gc_runs:
        # No GC threshold line here: whether the threshold watched the host (host=True) or
        # only the CPU's usage of 0.0 is not in the report, and a line that may not apply
        # would mislead.
        _mark_gc_runs(axes, points)
    label = f"host memory ({unit})"
    if limit is not None and not shows_limit:
        label = f"host memory ({unit}; limit {format_bytes(limit)})"
    axes.set_ylabel(label)
    axes.set_ylim(bottom / divisor, top / divisor)
    axes.grid(alpha=0.3)
    _legend_beside(axes)


def _legend_beside(axes: Axes) -> None:
    """The legend to the right of the panel, where it never covers a line."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _plot_growth(axes: Axes, report: ShownReport, series: Sampled, divisor: int) -> None:
    """The fitted growth as a dashed line, and the item a leak was named at, on the panel of
    the memory they describe."""
    if fitted_series(report.timeline) != series or not _shows_growth(report):
        return
    fitted = fitted_line(report.timeline, report.memory_growth_per_item)
    if fitted:
        growth = report.memory_growth_per_item
        axes.plot(
            list(fitted),
            [value / divisor for value in fitted.values()],
            linestyle="--",
            color="tab:red",
            label=f"fitted growth ({format_bytes(growth)}/item)",
        )
    leak = report.leak
    if leak is not None:
        state = "named" if leak.active else f"named, cleared at item {leak.cleared_at_item:,}"
        axes.axvline(
            leak.detected_at_item,
            color="tab:red",
            linestyle=":",
            label=f"leak {state} (item {leak.detected_at_item:,})",
        )


def _shows_growth(report: ShownReport) -> bool:
    """Whether the plot draws the fitted line: a leak was named, or the growth is worth a
    look (64 KiB per item or more, either way) over a dozen items or more."""
    if report.leak is not None:
        return True
    growth = report.memory_growth_per_item
    return (
        growth is not None
        and abs(growth) >= MIN_GROWTH_PER_ITEM
        and len(report.timeline) >= MIN_SAMPLES
    )
