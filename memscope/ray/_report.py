"""What the actors of a Ray Data job did: one row per actor, and the job's totals.

The shapes are the ones :mod:`memscope.distributed` gathers for a torch.distributed job, so
code that reads a :class:`~memscope.reports.CombinedReport` reads these too:

* :class:`ActorBatchReport` is a :class:`~memscope.BatchReport` with what only a Ray actor
  has: how many Ray batches it ran, how many it split, how many raised, and the chunk size
  it learned. Its figures are those of the actor's one long-lived batch, so far.
* :class:`ActorReport` is a :class:`~memscope.reports.RankReport` row with the actor's
  identity: Ray's actor id, which incarnation of it (Ray restarts an actor that died under
  the same id), its worker process, node and GPUs.
* :class:`RayJobReport` is a :class:`~memscope.reports.CombinedReport` of those rows, with a
  table that names actors instead of ranks, and JSON and CSV export.

A row's ``rank`` is its position in the report (Ray actors have no rank); ``error`` says how
an actor that died, or went silent in the middle of a batch, ended, so such an actor is
shown, not hidden.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports import BatchReport, CombinedReport, RankReport
from memscope.units import format_bytes

__all__ = ["ActorBatchReport", "ActorReport", "RayJobReport"]

# BatchReport's own metadata key and rules: the combined report's totals follow them.
_SUM = {"combine": "sum"}


@dataclass(frozen=True, slots=True)
class ActorBatchReport(BatchReport):
    """One actor's figures: its long-lived batch's report so far, and its Ray batches.

    Every Ray batch an actor runs is part of one ``managed_batch`` that lasts as long as the
    actor, so the figures are that batch's: items, OOMs and cleanups over the actor's life,
    peaks over all of it, ``elapsed_seconds`` since its first Ray batch began (idle time
    between batches included). ``ended_by`` stays ``None`` while the actor lives.
    """

    batches: int = field(default=0, metadata=_SUM)
    """Ray batches the actor ran, those that raised included."""
    split_batches: int = field(default=0, metadata=_SUM)
    """Ray batches that ran in more than one chunk: memory ran out at the batch's size, in
    this batch or an earlier one, and the chunk size learned is smaller than the batch."""
    failed_batches: int = field(default=0, metadata=_SUM)
    """Ray batches that raised (Ray Data may retry them, on this actor or another)."""
    chunk_size: int | None = None
    """The chunk size the actor's next batch starts at; ``None``: the whole batch, as no
    memory has run out."""
    busy_seconds: float = field(default=0.0, metadata=_SUM)
    """Time spent inside Ray batches: ``elapsed_seconds`` less the waits between them."""

    @property
    def rows_per_busy_second(self) -> float:
        """Rows per second of time spent inside Ray batches: the actor's throughput while
        busy (``items_per_second`` counts the waits between batches too)."""
        return self.items / self.busy_seconds if self.busy_seconds > 0 else 0.0

    @classmethod
    def of(
        cls,
        report: BatchReport,
        *,
        batches: int,
        split_batches: int,
        failed_batches: int,
        chunk_size: int | None,
        busy_seconds: float = 0.0,
    ) -> ActorBatchReport:
        """``report`` (the actor's batch's, so far or final) with the actor's Ray figures."""
        values = {
            report_field.name: getattr(report, report_field.name)
            for report_field in fields(BatchReport)
        }
        return cls(
            **values,
            batches=batches,
            split_batches=split_batches,
            failed_batches=failed_batches,
            chunk_size=chunk_size,
            busy_seconds=busy_seconds,
        )


@dataclass(frozen=True, slots=True)
class ActorReport(RankReport):
    """One actor's row of a :class:`RayJobReport`: who it was, where, and its figures.

    ``rank`` is the row's position in the report; ``host`` the machine's name. ``report``
    is an :class:`ActorBatchReport`, ``None`` for an actor that died before its first batch
    ended. ``error`` is set when the actor died (Ray restarted it, so a later incarnation
    took over), went silent in the middle of a batch, or raised while being constructed.
    """

    actor_id: str | None = None
    """Ray's actor id; ``None`` for a function run in Ray tasks (one row per worker)."""
    incarnation: int = 0
    """0 for the actor as first started; 1, 2... for each restart Ray made after it died."""
    worker_id: str = ""
    """Ray's id of the worker process (a restarted actor runs in a new one)."""
    node_id: str = ""
    """Ray's id of the node the actor ran on."""
    node_ip: str = ""
    """The node's IP address."""
    pid: int | None = None
    """The worker process's id on its node."""
    gpu_ids: tuple[str, ...] = ()
    """The GPUs Ray assigned (``ray.get_gpu_ids()``); empty on the CPU."""
    function: str = ""
    """The name of the function or class the actor ran."""
    last_failure: str | None = None
    """``"Type: message"`` of the latest batch that raised, if any."""
    closed: bool = False
    """Whether the actor said goodbye: Ray Data shut it down gracefully at the end."""

    @property
    def batch_report(self) -> ActorBatchReport | None:
        """``report``, typed as the actor's report it is."""
        return cast(ActorBatchReport | None, self.report)

    @property
    def label(self) -> str:
        """A short name for the row: the actor id's first 8 digits and the incarnation."""
        if self.actor_id is None:
            return f"task worker {self.worker_id[:8]}"
        return f"{self.actor_id[:8]}#{self.incarnation}"

    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-serialisable dict."""
        data = RankReport.to_dict(self)
        data.update(
            actor_id=self.actor_id,
            incarnation=self.incarnation,
            worker_id=self.worker_id,
            node_id=self.node_id,
            node_ip=self.node_ip,
            pid=self.pid,
            gpu_ids=list(self.gpu_ids),
            function=self.function,
            last_failure=self.last_failure,
            closed=self.closed,
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActorReport:
        """The inverse of :meth:`to_dict`."""
        report = data["report"]
        return cls(
            rank=int(data["rank"]),
            host=str(data["host"]),
            report=None if report is None else ActorBatchReport.from_dict(report),
            error=data["error"],
            actor_id=data.get("actor_id"),
            incarnation=int(data.get("incarnation", 0)),
            worker_id=str(data.get("worker_id", "")),
            node_id=str(data.get("node_id", "")),
            node_ip=str(data.get("node_ip", "")),
            pid=data.get("pid"),
            gpu_ids=tuple(str(gpu) for gpu in data.get("gpu_ids", ())),
            function=str(data.get("function", "")),
            last_failure=data.get("last_failure"),
            closed=bool(data.get("closed", False)),
        )


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    value: Callable[[ActorBatchReport], Any]
    text: Callable[[Any], str]
    total: str | None = None
    """The ``totals`` key the total row shows; ``None``: no total."""


def _count(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _peak(report: ActorBatchReport) -> int | None:
    # The device's peak where it keeps one; on the CPU, the process's resident memory.
    if report.peak_allocated is not None:
        return report.peak_allocated
    return report.host_resident_peak


_TABLE_COLUMNS = (
    _Column("batches", lambda report: report.batches, _count, "batches"),
    _Column("rows", lambda report: report.items, _count, "items"),
    _Column("rows/s", lambda report: report.rows_per_busy_second, lambda value: f"{value:.1f}"),
    _Column("OOMs", lambda report: report.ooms, _count, "ooms"),
    _Column("split", lambda report: report.split_batches, _count, "split_batches"),
    _Column(
        "chunk",
        lambda report: report.chunk_size,
        lambda value: "whole" if value is None else str(value),
    ),
    _Column("peak", _peak, format_bytes),
    _Column("cleanups", lambda report: report.cleanups, _count, "cleanups"),
    _Column(
        "GC ms", lambda report: report.gc_seconds * 1000, lambda value: f"{value:.0f}", "gc_seconds"
    ),
    _Column("failed", lambda report: report.failed_batches, _count, "failed_batches"),
)

# The figures one CSV row holds: the scalar ones, those a table would total first.
_CSV_IDENTITY = (
    "rank",
    "actor_id",
    "incarnation",
    "worker_id",
    "node_id",
    "node_ip",
    "host",
    "pid",
    "gpu_ids",
    "function",
    "status",
    "error",
    "last_failure",
)


@dataclass(frozen=True, slots=True)
class RayJobReport(CombinedReport):
    """Every actor's row (:class:`ActorReport`) of a Ray Data job, and the job's totals.

    It is a :class:`~memscope.reports.CombinedReport`: ``ranks`` holds the rows (in the
    order the actors started), ``totals`` the job's figures, ``failed_ranks`` the rows of
    actors that died. ``str()`` gives a table with one row per actor.
    """

    @property
    def actors(self) -> tuple[ActorReport, ...]:
        """The rows, typed as the actor rows they are."""
        return cast(tuple[ActorReport, ...], self.ranks)

    @property
    def died(self) -> tuple[ActorReport, ...]:
        """The rows of actors that died or went silent in the middle of a batch."""
        return tuple(actor for actor in self.actors if actor.failed)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-serialisable dict: the combined report's, with ``kind``."""
        data = CombinedReport.to_dict(self)
        data["kind"] = "ray"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RayJobReport:
        """The inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or not isinstance(data.get("ranks"), list):
            raise InvalidArgumentTypeError(
                f"data must be a dict with a 'ranks' list (a Ray job report), got {data!r:.80}"
            )
        return cls(ranks=tuple(ActorReport.from_dict(row) for row in data["ranks"]))

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` to ``path`` as JSON; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> RayJobReport:
        """Read a report that :meth:`to_json` wrote."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as error:
            raise InvalidArgumentError(f"{str(path)!r} is not JSON: {error}") from None
        return cls.from_dict(data)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one row per actor, then the totals, to ``path`` as CSV; returns the path.

        The columns are the actor's identity (``rank, actor_id, incarnation, worker_id,
        node_id, node_ip, host, pid, gpu_ids, function, status, error, last_failure``) and
        then its figures: ``device``, every figure the totals add up or take the largest of,
        ``items_per_second``, ``rows_per_busy_second`` and ``chunk_size``. ``gpu_ids`` are
        joined with ``;``; an
        empty cell is a figure nobody could tell.
        """
        figures = ["device", *self.totals, "items_per_second", "rows_per_busy_second", "chunk_size"]
        target = Path(path)
        with target.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow([*_CSV_IDENTITY, *figures])
            for actor in self.actors:
                identity = {
                    "rank": actor.rank,
                    "actor_id": actor.actor_id,
                    "incarnation": actor.incarnation,
                    "worker_id": actor.worker_id,
                    "node_id": actor.node_id,
                    "node_ip": actor.node_ip,
                    "host": actor.host,
                    "pid": actor.pid,
                    "gpu_ids": ";".join(actor.gpu_ids),
                    "function": actor.function,
                    "status": _status(actor),
                    "error": actor.error,
                    "last_failure": actor.last_failure,
                }
                report = actor.report
                writer.writerow(
                    [
                        *(_cell(identity[name]) for name in _CSV_IDENTITY),
                        *(
                            _cell(None if report is None else getattr(report, name, None))
                            for name in figures
                        ),
                    ]
                )
            totals = self.totals
            failed = len(self.failed_ranks)
            summary = {"rank": "all", "status": f"{failed} died" if failed else "ok"}
            writer.writerow(
                [
                    *(_cell(summary.get(name)) for name in _CSV_IDENTITY),
                    *(_cell(totals.get(name)) for name in figures),
                ]
            )
        return target

    def table(self) -> str:
        """A plain-text table: one row per actor, then the totals."""
        headers = ["actor", "host", "device", *(column.header for column in _TABLE_COLUMNS)]
        headers.append("status")
        rows: list[list[str]] = []
        for actor in self.actors:
            report = actor.batch_report
            device = "" if report is None else report.device
            if actor.gpu_ids:
                device += f" (GPU {','.join(actor.gpu_ids)})"
            figures = [
                "" if report is None else column.text(column.value(report))
                for column in _TABLE_COLUMNS
            ]
            rows.append([actor.label, actor.host, device, *figures, _status(actor)])
        totals = self.totals
        total_figures = []
        for column in _TABLE_COLUMNS:
            value = None if column.total is None else totals.get(column.total)
            if column.total == "gc_seconds" and value is not None:
                value *= 1000
            total_figures.append("" if column.total is None else column.text(value))
        died = len(self.failed_ranks)
        rows.append(
            ["all", "", "", *total_figures, f"{died} of {self.world_size} died" if died else "ok"]
        )
        # Numbers read best right-aligned; the actor, host, device and status are text.
        right_aligned = range(3, 3 + len(_TABLE_COLUMNS))
        widths = [max(len(row[index]) for row in [headers, *rows]) for index in range(len(headers))]
        hosts = len({actor.node_id or actor.host for actor in self.actors})
        lines = [f"memscope report of {self.world_size} Ray actor(s) on {hosts} node(s)"]
        for row in [headers, *rows]:
            cells = [
                cell.rjust(width) if index in right_aligned else cell.ljust(width)
                for index, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _status(actor: ActorReport) -> str:
    if actor.error is not None:
        return actor.error
    if actor.last_failure is not None:
        return f"ok (last failed batch: {actor.last_failure})"
    return "ok"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
