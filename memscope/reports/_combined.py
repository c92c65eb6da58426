"""Reports across processes: this process's rank, and every rank's report combined.

:class:`CombinedReport` is the shape memscope gives a job that ran on several processes (the
ranks of a torch.distributed job): a row per rank and totals for the whole job. How each
:class:`~memscope.BatchReport` figure combines is declared once, on the report's own fields.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch.distributed as dist

from memscope.reports._batch import BatchReport
from memscope.units import format_bytes

__all__ = [
    "LARGEST_FIELDS",
    "SUMMED_FIELDS",
    "CombinedReport",
    "RankReport",
    "process_rank",
    "with_process_rank",
]

logger = logging.getLogger("memscope")

SUMMED_FIELDS = (
    "items",
    "calls",
    "failures",
    "cleanup_failures",
    "cache_clears",
    "gc_runs",
    "gc_seconds",
    "ooms",
    "oom_retries",
    "batch_size_reductions",
)
"""Report fields that add up across ranks. Names the report does not have are skipped, so a
count added to :class:`BatchReport` later is totalled once it is named here."""

LARGEST_FIELDS = ("elapsed_seconds", "peak_allocated", "peak_reserved")
"""Report fields whose job-wide figure is the largest rank's: each rank has its own device,
so the peak that matters is the peak of the most loaded one."""

_REPORT_FIELDS = frozenset(field.name for field in fields(BatchReport))

# This process's rank ----------------------------------------------------------------------


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _environment_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        logger.warning("ignoring %s=%r in the environment: it is not an int", name, value)
        return None


def process_rank() -> tuple[int | None, int | None]:
    """This process's ``(rank, world_size)`` in a distributed job; ``(None, None)`` outside one.

    The figures come from torch.distributed when its default process group is initialised,
    else from the ``RANK`` and ``WORLD_SIZE`` variables that torchrun sets.
    """
    if distributed_ready():
        try:
            return dist.get_rank(), dist.get_world_size()
        except Exception:
            # The group was torn down between the check and the call; a report without a rank
            # beats a batch whose exit raises.
            logger.debug("could not read the rank from torch.distributed", exc_info=True)
    return _environment_int("RANK"), _environment_int("WORLD_SIZE")


def with_process_rank(report: BatchReport) -> BatchReport:
    """``report`` with this process's rank and world size filled in (see :func:`process_rank`)."""
    rank, world_size = process_rank()
    if rank is None and world_size is None:
        return report
    return replace(report, rank=rank, world_size=world_size)


# The combined report ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankReport:
    """One rank's part of a :class:`CombinedReport`."""

    rank: int
    """The rank's global rank in the job."""
    host: str
    """The name of the machine the rank ran on."""
    report: BatchReport | None
    """The rank's batch report; ``None`` if it failed before a batch ended."""
    error: str | None = None
    """``"RuntimeError: message"`` if the rank's work raised, else ``None``."""

    @property
    def failed(self) -> bool:
        """Whether the rank's work raised."""
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        """The rank's part as a JSON-serialisable dict."""
        return {
            "rank": self.rank,
            "host": self.host,
            "error": self.error,
            "report": None if self.report is None else self.report.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankReport:
        """The inverse of :meth:`to_dict`."""
        report = data["report"]
        return cls(
            rank=int(data["rank"]),
            host=str(data["host"]),
            report=None if report is None else BatchReport.from_dict(report),
            error=data["error"],
        )


def _largest(values: list[Any]) -> Any:
    present = [value for value in values if value is not None]
    return max(present) if present else None


@dataclass(frozen=True, slots=True)
class CombinedReport:
    """Every rank's batch report, in rank order, and totals for the whole job.

    ``str()`` gives a table with one row per rank and a row of totals.
    """

    ranks: tuple[RankReport, ...]

    @property
    def world_size(self) -> int:
        """How many ranks took part."""
        return len(self.ranks)

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        """The ranks whose work raised."""
        return tuple(entry.rank for entry in self.ranks if entry.failed)

    @property
    def reports(self) -> tuple[BatchReport, ...]:
        """The batch reports of the ranks that have one."""
        return tuple(entry.report for entry in self.ranks if entry.report is not None)

    @property
    def totals(self) -> dict[str, Any]:
        """Job-wide figures: the sum over ranks of :data:`SUMMED_FIELDS` and the largest
        of :data:`LARGEST_FIELDS` (``None`` where no rank has a figure), for the fields the
        reports have."""
        reports = self.reports
        present = self._report_attributes()
        totals: dict[str, Any] = {}
        for name in SUMMED_FIELDS:
            if name in present:
                values = [getattr(report, name, None) for report in reports]
                totals[name] = sum(value for value in values if value is not None)
        for name in LARGEST_FIELDS:
            if name in present:
                totals[name] = _largest([getattr(report, name, None) for report in reports])
        return totals

    def _report_attributes(self) -> set[str]:
        # The reports' own fields, not a fixed list, so that a figure BatchReport gains later
        # (an OOM count, say) is totalled and shown as soon as it is named in SUMMED_FIELDS.
        names = set(_REPORT_FIELDS)
        for report in self.reports:
            names.update(field.name for field in fields(report))
        return names | {"items_per_second"}

    def to_dict(self) -> dict[str, Any]:
        """The combined report as a JSON-serialisable dict."""
        return {
            "world_size": self.world_size,
            "failed_ranks": list(self.failed_ranks),
            "totals": self.totals,
            "ranks": [entry.to_dict() for entry in self.ranks],
        }

    def table(self) -> str:
        """A plain-text table: one row per rank, then the totals."""
        # A column whose figure the reports do not have (yet) is left out.
        present = self._report_attributes()
        columns = [column for column in _COLUMNS if column.field in present]
        headers = ["rank", "host", "device", *(column.header for column in columns), "status"]
        rows = [_rank_row(entry, columns) for entry in self.ranks]
        totals = self.totals
        failed = len(self.failed_ranks)
        rows.append(
            [
                "all",
                "",
                "",
                *(column.format_total(totals) for column in columns),
                f"{failed} of {self.world_size} failed" if failed else "ok",
            ]
        )
        # Numbers read best right-aligned; the rank, host, device and status are text.
        right_aligned = {index + 3 for index in range(len(columns))}
        widths = [max(len(row[index]) for row in [headers, *rows]) for index in range(len(headers))]
        lines = [f"memscope report of {self.world_size} rank(s)"]
        for row in [headers, *rows]:
            cells = [
                cell.rjust(width) if index in right_aligned else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    field: str
    format_value: Callable[[Any], str]
    total: bool = True

    def format_total(self, totals: dict[str, Any]) -> str:
        if not self.total or self.field not in totals:
            return ""
        return self.format_value(totals[self.field])


def _count(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _decimal(places: int) -> Callable[[Any], str]:
    def format_decimal(value: Any) -> str:
        return "n/a" if value is None else f"{value:.{places}f}"

    return format_decimal


_COLUMNS = (
    _Column("items", "items", _count),
    _Column("items/s", "items_per_second", _decimal(2), total=False),
    _Column("peak allocated", "peak_allocated", format_bytes),
    _Column("GC runs", "gc_runs", _count),
    _Column("OOMs", "ooms", _count),
    _Column("seconds", "elapsed_seconds", _decimal(1)),
)


def _rank_row(entry: RankReport, columns: list[_Column]) -> list[str]:
    report = entry.report
    device = "" if report is None else report.device
    if report is None:
        values = ["" for _ in columns]
    else:
        values = [column.format_value(getattr(report, column.field, None)) for column in columns]
    status = "ok" if entry.error is None else f"failed: {entry.error}"
    return [str(entry.rank), entry.host, device, *values, status]
