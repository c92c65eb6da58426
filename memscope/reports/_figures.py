"""Which memory figures a report holds, and counts worded for people.

Shared by the summary line and the plot, which must agree on what a report can show: a
device with figures (a GPU) is drawn and summarised as one, while the CPU, whose backend
reports none, is shown through the host figures the batch watched instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from memscope.reports._leak import LeakFinding
    from memscope.reports._timeline import TimelineEntry

__all__: list[str] = []

_FIGURELESS_DEVICE_TYPES = frozenset({"cpu"})
"""Device types whose backend reports no memory figures: usage is 0.0 by definition."""


class ShownReport(Protocol):
    """What the summary line and the plot read of a report (a ``BatchReport`` is one): a
    protocol, so that these helpers, which the report calls, never import it."""

    @property
    def device(self) -> str: ...
    @property
    def items(self) -> int: ...
    @property
    def elapsed_seconds(self) -> float: ...
    @property
    def gc_runs(self) -> int: ...
    @property
    def peak_allocated(self) -> int | None: ...
    @property
    def peak_reserved(self) -> int | None: ...
    @property
    def host_resident_start(self) -> int | None: ...
    @property
    def host_resident_end(self) -> int | None: ...
    @property
    def host_resident_peak(self) -> int | None: ...
    @property
    def host_limit(self) -> int | None: ...
    @property
    def memory_threshold(self) -> float | None: ...
    @property
    def memory_growth_per_item(self) -> float | None: ...
    @property
    def leak(self) -> LeakFinding | None: ...
    @property
    def timeline(self) -> Sequence[TimelineEntry]: ...


def device_reports_figures(report: ShownReport) -> bool:
    """Whether the report's device told anything about its memory.

    A device with peaks or byte figures in its timeline does. So does any device other than
    the CPU: MPS keeps no peaks, yet its usage is a real figure. The CPU's usage is 0.0 by
    definition, or the host's usage in disguise when the host is watched.
    """
    if report.peak_allocated is not None or report.peak_reserved is not None:
        return True
    if any(entry.allocated is not None or entry.reserved is not None for entry in report.timeline):
        return True
    device_type = report.device.partition(":")[0]
    return device_type not in _FIGURELESS_DEVICE_TYPES


def host_reports_figures(report: ShownReport) -> bool:
    """Whether the batch watched the host: any resident-memory figure is set."""
    return (
        report.host_resident_start is not None
        or report.host_resident_end is not None
        or report.host_resident_peak is not None
        or any(entry.host_resident is not None for entry in report.timeline)
    )


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """``1 item``, ``2 items``: the number with its noun in the right number."""
    noun = singular if number == 1 else (plural if plural is not None else singular + "s")
    return f"{number} {noun}"
