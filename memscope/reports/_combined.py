"""Reports across processes: this process's rank, and the one job report of every worker.

:class:`CombinedReport` is memscope's one job report, for a job that ran on several processes:
a row per worker and totals for the whole job, shown as a table and written as JSON and CSV.
torch.distributed's gathering fills it with one :class:`RankReport` row per rank; Ray's
collector fills its subclass, :class:`memscope.ray.RayJobReport`, with one row per actor
(incarnation). How each :class:`~memscope.BatchReport` figure combines is declared once, on
the report's own fields, as ``metadata={"combine": "sum"}`` or ``{"combine": "max"}``; the
totals follow it. A subclass names its rows' type, its label column and its extra columns.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch.distributed as dist

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports._batch import COMBINE_KEY, COMBINE_RULES, BatchReport, CombineRule
from memscope.reports._job_table import (
    Column,
    count_text,
    decimal_text,
    known,
    render_table,
    write_csv,
)
from memscope.units import format_bytes

__all__ = [
    "CombinedReport",
    "RankReport",
    "process_rank",
    "with_process_rank",
]

logger = logging.getLogger("memscope")

JobReport = TypeVar("JobReport", bound="CombinedReport")


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


# The job report ---------------------------------------------------------------------------


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

    @property
    def label(self) -> str:
        """The row's name in the table: its rank."""
        return str(self.rank)

    @property
    def device_text(self) -> str:
        """The row's device, as the table shows it; empty without a report."""
        return "" if self.report is None else self.report.device

    @property
    def status(self) -> str:
        """``"ok"``, or ``"failed: "`` and the error."""
        return "ok" if self.error is None else f"failed: {self.error}"

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


_RANK_COLUMNS = (
    Column("items", lambda report: report.items, count_text, "items", known),
    Column("items/s", lambda report: report.items_per_second, decimal_text(2), None, known),
    Column(
        "peak allocated",
        lambda report: report.peak_allocated,
        format_bytes,
        "peak_allocated",
        known,
    ),
    Column(
        "peak resident",
        lambda report: report.host_resident_peak,
        format_bytes,
        "host_resident_peak",
        known,
    ),
    Column("GC runs", lambda report: report.gc_runs, count_text, "gc_runs", known),
    Column("OOMs", lambda report: report.ooms, count_text, "ooms", known),
    Column(
        "seconds", lambda report: report.elapsed_seconds, decimal_text(1), "elapsed_seconds", known
    ),
)


@dataclass(frozen=True, slots=True)
class CombinedReport:
    """The job report: every worker's row, in order, and totals for the whole job.

    torch.distributed's gathering fills it with one :class:`RankReport` per rank, in rank
    order; :class:`memscope.ray.RayJobReport` is the same report with one row per Ray actor.
    ``str()`` gives a table with one row per worker and a row of totals; :meth:`to_json`,
    :meth:`from_json`, :meth:`to_csv` and :meth:`from_dict` write and read it.
    """

    ranks: tuple[RankReport, ...]

    kind: ClassVar[str] = "torch.distributed"
    """What filled the report; ``to_dict()`` writes it, ``from_dict()`` checks it."""
    row_type: ClassVar[type[RankReport]] = RankReport
    """The type of the rows, which :meth:`from_dict` rebuilds."""
    label_header: ClassVar[str] = "rank"
    """The header of the table's first column, the row's label."""
    columns: ClassVar[tuple[Column, ...]] = _RANK_COLUMNS
    """The table's figure columns, after the label, the host and the device."""
    csv_identity_columns: ClassVar[tuple[str, ...]] = ("rank", "host", "status", "error")
    """The CSV's first columns: who each row is."""
    csv_extra_figures: ClassVar[tuple[str, ...]] = ("items_per_second",)
    """The CSV's figures after the device and those the totals combine."""
    failed_word: ClassVar[str] = "failed"
    """How the totals row says that rows failed ("1 of 3 failed")."""

    @staticmethod
    def column(
        header: str,
        value: Callable[[BatchReport], Any],
        text: Callable[[Any], str] = count_text,
        *,
        total: str | None = None,
        shown_if: Callable[[Any], bool] | None = None,
    ) -> Column:
        """A figure column for a subclass's :attr:`columns`.

        Args:
            header: the column's header.
            value: the row's figure, from its report.
            text: how a figure is written (default: the number, n/a for ``None``).
            total: the ``totals`` key whose value the totals row shows; ``None``: none.
            shown_if: the column is left out unless some row's figure passes this test;
                ``None``: always shown.
        """
        return Column(header, value, text, total, shown_if)

    @property
    def world_size(self) -> int:
        """How many rows (ranks, actor incarnations) took part."""
        return len(self.ranks)

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        """The ranks (row positions) of the rows whose work raised, or that died."""
        return tuple(entry.rank for entry in self.ranks if entry.failed)

    @property
    def reports(self) -> tuple[BatchReport, ...]:
        """The batch reports of the rows that have one."""
        return tuple(entry.report for entry in self.ranks if entry.report is not None)

    @property
    def totals(self) -> dict[str, Any]:
        """Job-wide figures, combined as each report field's ``combine`` metadata says.

        ``"sum"`` fields add up over the rows' reports, ``"max"`` fields take the largest
        row's figure; a figure no row's report has is ``None`` (a sum over no reports at
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
        """The report as a JSON-serialisable dict: ``kind``, the size, failures, totals, rows."""
        return {
            "kind": self.kind,
            "world_size": self.world_size,
            "failed_ranks": list(self.failed_ranks),
            "totals": self.totals,
            "ranks": [entry.to_dict() for entry in self.ranks],
        }

    @classmethod
    def from_dict(cls: type[JobReport], data: dict[str, Any]) -> JobReport:
        """The inverse of :meth:`to_dict` (``totals`` are worked out again from the rows).

        Raises:
            InvalidArgumentTypeError: ``data`` is not a dict with a ``ranks`` list.
            InvalidArgumentError: ``data`` is the report of another kind of job (its
                ``kind`` says which class reads it).
        """
        if not isinstance(data, dict) or not isinstance(data.get("ranks"), list):
            raise InvalidArgumentTypeError(
                f"data must be a dict with a 'ranks' list (a {cls.kind} job report), "
                f"got {data!r:.80}"
            )
        kind = data.get("kind", cls.kind)
        if kind != cls.kind:
            raise InvalidArgumentError(
                f"data is a {kind!r} job report, not a {cls.kind!r} one: read it with the "
                f"report class of its kind (memscope.ray.RayJobReport for 'ray', "
                f"memscope.reports.CombinedReport for 'torch.distributed')"
            )
        return cls(ranks=tuple(cls.row_type.from_dict(row) for row in data["ranks"]))

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` to ``path`` as JSON; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def from_json(cls: type[JobReport], path: str | os.PathLike[str]) -> JobReport:
        """Read a report that :meth:`to_json` wrote.

        Raises:
            InvalidArgumentError: the file is not JSON (its path is named), or holds
                another kind of job's report.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as error:
            raise InvalidArgumentError(f"{str(path)!r} is not JSON: {error}") from None
        return cls.from_dict(data)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one line per row, then the totals, to ``path`` as CSV; returns the path.

        The columns are the row's identity (:attr:`csv_identity_columns`; for ranks: ``rank,
        host, status, error``), then its figures: ``device``, every figure the totals add up
        or take the largest of, then :attr:`csv_extra_figures` (for ranks:
        ``items_per_second``). The totals line has ``rank`` ``all``; an empty cell is a
        figure nobody could tell.
        """
        totals = self.totals
        failed = len(self.failed_ranks)
        return write_csv(
            path,
            self.csv_identity_columns,
            ["device", *totals, *self.csv_extra_figures],
            self.ranks,
            totals,
            {"rank": "all", "status": f"{failed} {self.failed_word}" if failed else "ok"},
        )

    def title(self) -> str:
        """The table's first line."""
        return f"memscope report of {self.world_size} rank(s)"

    def table(self) -> str:
        """A plain-text table: one row per worker, then the totals."""
        failed = len(self.failed_ranks)
        status = f"{failed} of {self.world_size} {self.failed_word}" if failed else "ok"
        return render_table(
            self.title(), self.label_header, self.ranks, self.columns, self.totals, status
        )

    def __str__(self) -> str:
        return self.table()
