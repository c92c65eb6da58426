"""What a managed batch did, as an immutable record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from memscope.units import format_bytes

__all__ = ["BatchReport"]


@dataclass(frozen=True, slots=True)
class BatchReport:
    """The figures of one ``managed_batch``, available as ``batch.report`` after it ends.

    Counts of items, calls and cleanups belong to the innermost batch active when they
    happened, so the reports of nested batches never count the same event twice. Peaks are
    the device's peaks during the batch, nested batches included; ``None`` where the
    device keeps none.
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

    @property
    def items_per_second(self) -> float:
        """Items completed per second of the batch (0.0 for an instant batch)."""
        return self.items / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-serialisable dict, ``items_per_second`` included."""
        data = asdict(self)
        data["items_per_second"] = self.items_per_second
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchReport:
        """The report :meth:`to_dict` gave, for example after a trip through JSON."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name in data:
                value = data[field.name]
                # JSON has no tuples: sequences come back as lists.
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

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
