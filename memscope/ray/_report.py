"""What the actors of a Ray Data job did: one row per actor, and the job's totals.

The shapes are the ones :mod:`memscope.distributed` gathers for a torch.distributed job, so
code that reads a :class:`~memscope.reports.CombinedReport` reads these too:

* :class:`ActorBatchReport` is a :class:`~memscope.BatchReport` with what only a Ray actor
  has: how many Ray batches it ran, how many it split, how many raised, and the chunk size
  it learned. Its figures are those of the actor's one long-lived batch, so far.
* :class:`ActorReport` is a :class:`~memscope.reports.RankReport` row with the actor's
  identity: Ray's actor id, which incarnation of it (Ray restarts an actor that died under
  the same id), its worker process, node and GPUs.
* :class:`RayJobReport` is memscope's one job report, :class:`~memscope.reports.CombinedReport`,
  filled with those rows: the same table, JSON and CSV, with actors named instead of ranks
  and the actors' own columns. It declares only what differs; the collector is the
  transport that fills it.

A row's ``rank`` is its position in the report (Ray actors have no rank); ``error`` says how
an actor that died, or went silent in the middle of a batch, ended, so such an actor is
shown, not hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

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
    redone_rows: int = field(default=0, metadata=_SUM)
    """Rows this worker processed in blocks that Ray Data then ran again (it retries the
    block a dead actor was running): the block's last attempt counts them, so they are left
    out of ``items`` here. Set by the job report, 0 as the actor sends it."""

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

    @property
    def device_text(self) -> str:
        """The device, with the GPUs Ray assigned, as the table shows it."""
        device = "" if self.report is None else self.report.device
        if self.gpu_ids:
            device += f" (GPU {','.join(self.gpu_ids)})"
        return device

    @property
    def status(self) -> str:
        """``error`` for an actor that did not end well; else ``"ok"``, with the latest
        failed batch if any."""
        if self.error is not None:
            return self.error
        if self.last_failure is not None:
            return f"ok (last failed batch: {self.last_failure})"
        return "ok"

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
            incarnation=int(data.get("incarnation", 0)),
            last_failure=data.get("last_failure"),
            **identity_fields(data),
            closed=bool(data.get("closed", False)),
        )


def identity_fields(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an :class:`ActorReport` that say which worker it is, from a dict of
    them (a worker's identity, or a report's dict)."""
    return {
        "actor_id": identity.get("actor_id"),
        "worker_id": str(identity.get("worker_id", "")),
        "node_id": str(identity.get("node_id", "")),
        "node_ip": str(identity.get("node_ip", "")),
        "pid": identity.get("pid"),
        "gpu_ids": tuple(str(gpu) for gpu in identity.get("gpu_ids", ())),
        "function": str(identity.get("function", "")),
    }


def _peak(report: BatchReport) -> int | None:
    # The device's peak where it keeps one; on the CPU, the process's resident memory.
    if report.peak_allocated is not None:
        return report.peak_allocated
    return report.host_resident_peak


def _actor_figure(name: str) -> Any:
    """A reader of the actor figure ``name`` (a plain BatchReport row has none)."""
    return lambda report: getattr(report, name, None)


_column = CombinedReport.column

_ACTOR_COLUMNS = (
    _column("batches", _actor_figure("batches"), total="batches"),
    _column("rows", lambda report: report.items, total="items"),
    _column(
        "rows/s",
        _actor_figure("rows_per_busy_second"),
        lambda value: "n/a" if value is None else f"{value:.1f}",
    ),
    _column("OOMs", lambda report: report.ooms, total="ooms"),
    _column("split", _actor_figure("split_batches"), total="split_batches"),
    _column(
        "chunk",
        _actor_figure("chunk_size"),
        lambda value: "whole" if value is None else str(value),
    ),
    _column("peak", _peak, format_bytes),
    _column("cleanups", lambda report: report.cleanups, total="cleanups"),
    _column(
        "GC ms",
        lambda report: report.gc_seconds,
        lambda seconds: "n/a" if seconds is None else f"{seconds * 1000:.0f}",
        total="gc_seconds",
    ),
    _column("failed", _actor_figure("failed_batches"), total="failed_batches"),
    # Shown only for a job where Ray Data ran a block again after an actor died.
    _column("redone", _actor_figure("redone_rows"), total="redone_rows", shown_if=bool),
)


@dataclass(frozen=True, slots=True)
class RayJobReport(CombinedReport):
    """Every actor's row (:class:`ActorReport`) of a Ray Data job, and the job's totals.

    It is memscope's one job report, :class:`~memscope.reports.CombinedReport`: ``ranks``
    holds the rows (in the order the actors started), ``totals`` the job's figures,
    ``failed_ranks`` the rows of actors that died; ``str()``, JSON and CSV are the combined
    report's, with the actors' identity and columns. Each row is counted once: rows a dead
    actor processed in a block that Ray Data ran again are in ``redone_rows``, not ``items``.
    """

    kind = "ray"
    row_type = ActorReport
    label_header = "actor"
    columns = _ACTOR_COLUMNS
    csv_identity_columns = (
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
    csv_extra_figures = (
        "items_per_second",
        "rows_per_busy_second",
        "chunk_size",
    )
    failed_word = "died"

    @property
    def actors(self) -> tuple[ActorReport, ...]:
        """The rows, typed as the actor rows they are."""
        return cast(tuple[ActorReport, ...], self.ranks)

    @property
    def died(self) -> tuple[ActorReport, ...]:
        """The rows of actors that died or went silent in the middle of a batch."""
        return tuple(actor for actor in self.actors if actor.failed)

    def title(self) -> str:
        """The table's first line: how many actors, on how many nodes."""
        nodes = len({actor.node_id or actor.host for actor in self.actors})
        return f"memscope report of {self.world_size} Ray actor(s) on {nodes} node(s)"
