"""What a managed batch did, as an immutable record."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memscope.reports import _export
from memscope.reports._timeline import TimelineEntry
from memscope.units import format_bytes

__all__ = ["BatchReport"]

# The plot lives in _plot, imported when called: it brings in matplotlib.


@dataclass(frozen=True, slots=True)
class BatchReport:
    """The figures of one ``managed_batch``, available as ``batch.report`` after it ends.

    Counts of items, calls and cleanups belong to the innermost batch active when they
    happened, so the reports of nested batches never count the same event twice. Peaks are
    the device's peaks during the batch, nested batches included; ``None`` where the
    device keeps none.

    ``timeline`` holds one :class:`TimelineEntry` per item; ``to_json``, ``to_csv`` and
    ``plot`` write the report and its timeline to files.
    """

    device: str
    items: int
    calls: int
    failures: int
    cleanup_failures: int
    elapsed_seconds: float
    usage_start: float
    usage_end: float
    peak_allocated: int | None
    peak_reserved: int | None
    cache_clears: int
    gc_runs: int
    gc_seconds: float
    ended_by: str | None = None
    """The name of the exception that ended the batch, or ``None`` if it ended normally."""
    host_resident_start: int | None = None
    """The process's resident memory when the batch started, when the host is watched."""
    host_resident_end: int | None = None
    """The process's resident memory when the batch ended, when the host is watched."""
    host_limit: int | None = None
    """The host's effective memory limit, when the host is watched."""
    budget: int | None = None
    """The manager's byte budget, if it has one."""
    rank: int | None = None
    """This process's rank in a torch.distributed job, or ``None`` outside of one."""
    world_size: int | None = None
    """How many processes the distributed job has, or ``None`` outside of one."""
    ooms: int = 0
    """Out-of-memory errors seen inside the batch (each counted once)."""
    oom_retries: int = 0
    """Calls repeated after an out-of-memory error (``oom_retries``, ``adaptive_batch``)."""
    batch_size_reductions: int = 0
    """Times ``adaptive_batch`` shrank a batch size after an out-of-memory error."""
    memory_snapshots: tuple[str, ...] = ()
    """Memory-history snapshot files written on out-of-memory (``record_history=True``)."""
    memory_threshold: float | None = None
    """The usage at or above which the batch's manager collected garbage."""
    timeline: tuple[TimelineEntry, ...] = ()
    """The device's memory as each item finished, in the order the items finished."""

    @property
    def items_per_second(self) -> float:
        """Items completed per second of the batch (0.0 for an instant batch)."""
        return self.items / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-serialisable dict, ``items_per_second`` included."""
        data = asdict(self)
        data["timeline"] = [asdict(entry) for entry in self.timeline]
        data["memory_snapshots"] = list(self.memory_snapshots)
        data["items_per_second"] = self.items_per_second
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchReport:
        """The report :meth:`to_dict` gave, for example after a trip through JSON."""
        return _export.report_from_dict(cls, data)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> BatchReport:
        """Read a report that :meth:`to_json` wrote."""
        return _export.read_json(cls, path)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` to ``path`` as JSON; returns the path."""
        return _export.write_json(self.to_dict(), path)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the timeline to ``path`` as CSV with a header row; returns the path.

        Columns: ``item, seconds, usage, allocated, reserved, gc_ran``; an empty cell is a
        figure the device cannot tell, ``gc_ran`` is ``true`` or ``false``.
        """
        return _export.write_csv(self.timeline, path)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the timeline as a PNG (or any format matplotlib infers from the suffix).

        Usage over items with the GC threshold as a line and GC runs marked, plus allocated
        and reserved memory where the device reports them. Needs matplotlib: ``pip install
        'memscope[plot]'``; without it this raises an ``ImportError`` saying so.
        """
        from memscope.reports._plot import plot_timeline

        return plot_timeline(self, path)

    def summary(self) -> str:
        """One line for a log or a terminal."""
        line = self._rank_prefix() + (
            f"{self.device}: {self.items} items in {self.elapsed_seconds:.2f} s "
            f"({self.items_per_second:.2f} items/s), usage {self.usage_start:.1%} -> "
            f"{self.usage_end:.1%}, peak allocated {format_bytes(self.peak_allocated)}, "
            f"{self.cache_clears} cache clears, {self.gc_runs} GC runs "
            f"({self.gc_seconds * 1000:.0f} ms)"
        )
        if self.host_resident_end is not None:
            line += (
                f", resident {format_bytes(self.host_resident_start)} -> "
                f"{format_bytes(self.host_resident_end)} of {format_bytes(self.host_limit)}"
            )
        if self.budget is not None:
            line += f", budget {format_bytes(self.budget)}"
        if self.ooms:
            line += (
                f", {self.ooms} out-of-memory errors ({self.oom_retries} retried, "
                f"{self.batch_size_reductions} batch size reductions)"
            )
        if self.failures or self.cleanup_failures:
            line += f", {self.failures} failures, {self.cleanup_failures} failed cleanups"
        if self.ended_by is not None:
            line += f", ended by {self.ended_by}"
        return line

    def _rank_prefix(self) -> str:
        if self.rank is None:
            return ""
        if self.world_size is None:
            return f"rank {self.rank} "
        return f"rank {self.rank}/{self.world_size} "

    def __str__(self) -> str:
        return self.summary()
