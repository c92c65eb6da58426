"""Reports across processes: this process's rank, and every rank's report combined.

:class:`CombinedReport` is the shape memscope gives a job that ran on several processes (the
ranks of a torch.distributed job): a row per rank and totals for the whole job. How each
:class:`~memscope.BatchReport` figure combines is declared once, on the report's own fields,
as ``metadata={"combine": "sum"}`` or ``{"combine": "max"}``; the totals follow it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, cast

import torch.distributed as dist

from memscope.exceptions import InvalidArgumentError
from memscope.reports._batch import COMBINE_KEY, COMBINE_RULES, BatchReport, CombineRule
from memscope.units import format_bytes

__all__ = [
    "CombinedReport",
    "RankReport",
    "process_rank",
    "with_process_rank",
]

logger = logging.getLogger("memscope")


def combine_rules(report_type: type[BatchReport]) -> dict[str, CombineRule]:
    """How each figure of ``report_type`` combines across ranks, in field order.

    Read from the fields' ``combine`` metadata; a field without it is left out.
    """
    rules: dict[str, CombineRule] = {}
    for report_field in fields(report_type):
        rule = report_field.metadata.get(COMBINE_KEY)
        if rule is None:
            continue
        if rule not in COMBINE_RULES:
            raise InvalidArgumentError(
                f"{report_type.__name__}.{report_field.name} has metadata "
                f"{COMBINE_KEY}={rule!r}; it must be one of {', '.join(map(repr, COMBINE_RULES))}"
                " or absent"
            )
        rules[report_field.name] = cast(CombineRule, rule)
    return rules


# A mistake in BatchReport's own metadata fails on import, not in a job's last minute.
combine_rules(BatchReport)


def _combined_rules(reports: Iterable[BatchReport]) -> dict[str, CombineRule]:
    # BatchReport's own figures first, so totals keep their keys when no rank has a report;
    # then those of any subclass a rank used, so a figure added there is totalled too.
    rules = dict(combine_rules(BatchReport))
    for report_type in dict.fromkeys(type(report) for report in reports):
        for name, rule in combine_rules(report_type).items():
            rules.setdefault(name, rule)
    return rules


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
        """Job-wide figures, combined as each report field's ``combine`` metadata says.

        ``"sum"`` fields add up over the ranks' reports, ``"max"`` fields take the largest
        rank's figure; a figure no rank's report has is ``None`` (a sum over no reports at
        all is 0). Fields without the metadata are not totalled.
        """
        reports = self.reports
        totals: dict[str, Any] = {}
        for name, rule in _combined_rules(reports).items():
            present = [
                value for report in reports if (value := getattr(report, name, None)) is not None
            ]
            if rule == "sum":
                totals[name] = sum(present) if present or not reports else None
            else:
                totals[name] = max(present) if present else None
        return totals

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
        # A column no rank has a figure for (a peak the CPU cannot tell, a figure older
        # reports lack) is left out rather than filled with n/a.
        reports = self.reports
        columns = [
            column
            for column in _COLUMNS
            if any(getattr(report, column.field, None) is not None for report in reports)
        ]
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

    def format_total(self, totals: dict[str, Any]) -> str:
        # Only figures with a combine rule have a total (items/s, say, has none).
        if self.field not in totals:
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
    _Column("items/s", "items_per_second", _decimal(2)),
    _Column("peak allocated", "peak_allocated", format_bytes),
    _Column("peak resident", "host_resident_peak", format_bytes),
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
