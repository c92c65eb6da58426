"""What a managed batch did, as an immutable record."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from memscope.reports import _export
from memscope.reports._figures import counted, device_reports_figures, host_reports_figures
from memscope.reports._item_failure import ItemFailure
from memscope.reports._leak import LeakFinding
from memscope.reports._timeline import TimelineEntry
from memscope.units import format_bytes

__all__ = ["BatchReport"]

# The plot lives in _plot, imported when called: it brings in matplotlib.

COMBINE_KEY: Final = "combine"
"""The field-metadata key that says how a figure combines across the ranks of a job."""

CombineRule = Literal["sum", "max"]
COMBINE_RULES: Final[tuple[CombineRule, ...]] = ("sum", "max")

# Counts add up over ranks. Peaks and durations take the largest rank's: each rank has its own
# device and runs at the same time as the others, so the figure that matters is the most loaded
# (or slowest) rank's. A field with neither describes one rank only (its device, its start).
_SUM: Final = MappingProxyType({COMBINE_KEY: "sum"})
_MAX: Final = MappingProxyType({COMBINE_KEY: "max"})


@dataclass(frozen=True, slots=True)
class BatchReport:
    """The figures of one ``managed_batch``, available as ``batch.report`` after it ends.

    Counts of items, calls and cleanups belong to the innermost batch active when they
    happened, so the reports of nested batches never count the same event twice. Peaks are
    the device's peaks during the batch, nested batches included; ``None`` where the
    device keeps none.

    ``timeline`` holds one :class:`TimelineEntry` per item; ``to_json``, ``to_csv`` and
    ``plot`` write the report and its timeline to files.

    How a figure combines across the ranks of a distributed job is declared on its field:
    ``metadata={"combine": "sum"}`` for counts, ``{"combine": "max"}`` for peaks and
    durations, nothing for figures of one rank alone (its device, its usage). The totals of a
    :class:`~memscope.reports.CombinedReport` follow that metadata, so a figure added here
    with it is totalled with no other change.
    """

    device: str
    items: int = field(metadata=_SUM)
    calls: int = field(metadata=_SUM)
    failures: int = field(metadata=_SUM)
    cleanup_failures: int = field(metadata=_SUM)
    elapsed_seconds: float = field(metadata=_MAX)
    usage_start: float
    usage_end: float
    peak_allocated: int | None = field(metadata=_MAX)
    peak_reserved: int | None = field(metadata=_MAX)
    cache_clears: int = field(metadata=_SUM)
    gc_runs: int = field(metadata=_SUM)
    gc_seconds: float = field(metadata=_SUM)
    ended_by: str | None = None
    """The name of the exception that ended the batch, or ``None`` if it ended normally."""
    host_resident_start: int | None = None
    """The process's resident memory when the batch started, when the host is watched."""
    host_resident_end: int | None = None
    """The process's resident memory when the batch ended, when the host is watched."""
    host_resident_peak: int | None = field(default=None, metadata=_MAX)
    """The largest resident memory of the process seen during the batch, when the host is
    watched."""
    host_limit: int | None = None
    """The host's effective memory limit, when the host is watched."""
    budget: int | None = None
    """The manager's byte budget, if it has one."""
    usage_of: str | None = None
    """What ``usage_start``, ``usage_end`` and the timeline's ``usage`` are a share of:
    ``"device memory"``, ``"host limit"`` (the process's resident memory over the host's
    limit: the CPU's usage), ``"budget"``, or the largest share of several (``"the larger of
    device memory and host limit"``);
    ``None`` in reports from before it was recorded, and where usage is a share of nothing
    (the CPU with no host figures)."""
    rank: int | None = None
    """This process's rank in a torch.distributed job, or ``None`` outside of one."""
    world_size: int | None = None
    """How many processes the distributed job has, or ``None`` outside of one."""
    ooms: int = field(default=0, metadata=_SUM)
    """Out-of-memory errors seen inside the batch (each counted once)."""
    oom_retries: int = field(default=0, metadata=_SUM)
    """Calls repeated after an out-of-memory error (``oom_retries``, ``adaptive_batch``)."""
    batch_size_reductions: int = field(default=0, metadata=_SUM)
    """Times ``adaptive_batch`` shrank a batch size after an out-of-memory error."""
    allocator_ooms: int | None = field(default=None, metadata=_SUM)
    """Out-of-memory errors CUDA's caching allocator raised during the batch, those that
    torch, cuDNN or memscope caught and recovered from included; ``None`` where the
    allocator keeps no count (other devices, ``cudaMallocAsync``)."""
    allocator_ooms_recovered: int | None = field(default=None, metadata=_SUM)
    """Of ``allocator_ooms``, those the batch went on after (all but one that ended it)."""
    largest_oom_request: int | None = field(default=None, metadata=_MAX)
    """The largest allocation the allocator refused, where torch's observer told it."""
    alloc_retries: int | None = field(default=None, metadata=_SUM)
    """Allocations that succeeded only after the allocator freed its cache and retried."""
    cached_but_free_end: int | None = None
    """Memory the allocator reserved but no tensor used when the batch ended."""
    inactive_split_end: int | None = None
    """Of that, bytes in split blocks the allocator cannot hand out whole (fragments)."""
    memory_snapshots: tuple[str, ...] = ()
    """Memory-history snapshot files written on out-of-memory (``record_history=True``)."""
    memory_threshold: float | None = None
    """The usage at or above which the batch's manager collected garbage."""
    every: int | None = None
    """The batch's cleanup cadence in items, or ``None`` where the batch only counted."""
    cleanups: int = field(default=0, metadata=_SUM)
    """Cleanup steps the batch ran."""
    skipped: int = field(default=0, metadata=_SUM)
    """Items skipped because the batch's journal says an earlier run finished (or failed)
    them."""
    skipped_failed: int = field(default=0, metadata=_SUM)
    """Of ``skipped``, the items an earlier run failed (the rest it finished)."""
    retried: int = field(default=0, metadata=_SUM)
    """Items an earlier run failed that this run tried again (``Journal(retry_failed=True)``)."""
    timeline_file: str | None = None
    """With a journal, where the timeline was streamed instead of kept in memory (the
    journal itself); :meth:`timeline_entries`, :meth:`to_csv` and :meth:`plot` read it."""
    failed_items: tuple[ItemFailure, ...] = ()
    """Items that ``batch.map(on_error="skip")`` recorded as failed (with a journal, earlier
    runs' failures that were not retried too)."""
    memory_growth_per_item: float | None = field(default=None, metadata=_MAX)
    """How many bytes per item the memory that stays after cleanup grew over the batch's
    latest cleanups (128 at most, the leak watch's window): the device's allocated bytes,
    or the process's resident bytes on the CPU. A robust (Theil-Sen) slope, so one odd item
    moves it little; ``None`` where the batch could not sample (a device without figures,
    fewer than two cleanups). Across ranks, the fastest-growing rank's."""
    leak: LeakFinding | None = None
    """The leak the batch named (a :class:`~memscope.reports.LeakFinding`): its rate, the
    item at which memory would run out, the evidence and the suspects. ``None`` when none
    was named; a leak whose growth stopped later stays here with ``active`` false."""
    timeline: Sequence[TimelineEntry] = ()
    """The memory as each item finished, in the order the items finished."""
    extras: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """What your own watchers add to the report, by the names they give it: JSON values
    (numbers, strings, booleans, ``None``, and lists and dicts of them). A watcher's
    :meth:`~memscope.watch.Watcher.report_part` adds them as ``{"extras": {name: value}}``;
    memscope's own watchers fill the fields above."""

    @property
    def items_per_second(self) -> float:
        """Items completed per second of the batch (0.0 for an instant batch)."""
        return self.items / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-serialisable dict, ``items_per_second`` included."""
        data = asdict(self)
        data["timeline"] = [asdict(entry) for entry in self.timeline]
        data["failed_items"] = [failure.to_dict() for failure in self.failed_items]
        data["memory_snapshots"] = list(self.memory_snapshots)
        data["leak"] = None if self.leak is None else self.leak.to_dict()
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
        """Write :meth:`to_dict` to ``path`` as JSON; returns the path.

        The file also holds ``"units"``: what each figure is measured in (bytes, seconds,
        bytes per item, usage as a fraction of what).
        """
        return _export.write_json(self.to_dict(), path, _export.REPORT_UNITS)

    def timeline_entries(self) -> Iterator[TimelineEntry]:
        """The timeline's entries: from memory, or read back from ``timeline_file``."""
        if self.timeline or self.timeline_file is None:
            return iter(self.timeline)
        return _export.read_streamed_timeline(self.timeline_file)

    def failures_to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write ``failed_items`` to ``path`` as CSV with a header row; returns the path.

        Columns: ``key, error_type, message, notes`` (notes joined by newlines).
        """
        return _export.write_failures_csv(self.failed_items, path)

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the timeline to ``path`` as CSV with a header row; returns the path.

        Columns: ``item, seconds, usage, allocated, reserved, gc_ran, host_resident,
        fitted_memory, usage_of``; an empty cell is a figure nobody could tell, ``gc_ran`` is
        ``true`` or ``false``. ``fitted_memory`` is the line of ``memory_growth_per_item``
        through the allocated (or, on the CPU, resident) bytes of the last 64 items, empty
        elsewhere; ``usage_of`` says on every row what ``usage`` is a share of.
        """
        return _export.write_csv(
            self.timeline_entries(), path, self.memory_growth_per_item, self.usage_of
        )

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the timeline as a PNG (or any format matplotlib infers from the suffix).

        On a device with memory figures (a GPU): usage over items with the GC threshold as a
        line and GC runs marked, allocated and reserved memory where the device reports them,
        and the host's resident memory where the batch watched the host. On the CPU, which
        reports no figures of its own, the host's resident memory over items with its limit
        as a line. The fitted growth (``memory_growth_per_item``) is a dashed line over the
        last 64 items of the memory it describes, where a leak was named or the growth is
        64 KiB per item or more over a dozen items; a named leak is a dotted line at the item
        it was named. Needs matplotlib: ``pip install 'memscope[plot]'``; without it this raises
        an ``ImportError`` saying so.
        """
        from memscope.reports._plot import plot_timeline

        report = self
        if not self.timeline and self.timeline_file is not None:
            report = replace(self, timeline=tuple(self.timeline_entries()))
        return plot_timeline(report, path)

    def summary(self) -> str:
        """One line for a log: every part of :meth:`lines`, joined by commas.

        The device's usage and peak appear where the device reports figures, the host's
        resident memory where the batch watched the host, the growth per item and any leak
        where the batch measured them; the CPU reports none of its own, so a CPU batch that
        watched the host is summarised by its host memory, its usage the host's share.
        """
        head, *groups = self._parts(labelled=False)
        parts = [head, *(part for _label, group in groups for part in group)]
        if self.ended_by is not None:
            parts.append(f"ended by {self.ended_by}")
        return self._rank_prefix() + ", ".join(parts)

    def lines(self) -> list[str]:
        """The summary as a few short lines for a terminal: what ran, then one line each for
        memory, cleanup, and (where there were any) out-of-memory errors, failures and items
        that earlier runs handled. ``str(report)`` joins them."""
        head, *groups = self._parts(labelled=True)
        if self.ended_by is not None:
            head += f", ended by {self.ended_by}"
        return [self._rank_prefix() + head] + [
            f"  {label}: {'; '.join(group)}" for label, group in groups if group
        ]

    def _parts(self, *, labelled: bool) -> list[Any]:
        """The head, then ``(label, parts)`` groups; a group without parts is left out.

        ``labelled``: the parts follow their group's label, which says what they are."""
        head = (
            f"{self.device}: {counted(self.items, 'item')} in {self.elapsed_seconds:.2f} s "
            f"({self.items_per_second:.2f} items/s)"
        )
        memory: list[str] = []
        usage = f"usage {self.usage_start:.1%} -> {self.usage_end:.1%}"
        if self.usage_of is not None:
            usage += f" of {self.usage_of}"
        if device_reports_figures(self):
            memory.append(f"{usage}, peak allocated {format_bytes(self.peak_allocated)}")
        elif self.usage_of is not None:
            memory.append(usage)
        host = []
        if host_reports_figures(self):
            figures = self._host_memory()
            # Its own line in a terminal: with the device's usage it ran past 110 characters.
            host.append(
                figures.replace("host memory: resident", "resident") if labelled else figures
            )
        if self.inactive_split_end:
            memory.append(
                f"{format_bytes(self.cached_but_free_end)} reserved but free at the end, "
                f"{format_bytes(self.inactive_split_end)} of it in split blocks"
            )
        growth = []
        if self.memory_growth_per_item is not None:
            per_item = f"{format_bytes(self.memory_growth_per_item)}/item"
            growth.append(per_item if labelled else f"memory growth {per_item}")
        leak = [] if self.leak is None else [self.leak.summary()]
        cleanup = [
            f"{counted(self.cache_clears, 'cache clear')}, {counted(self.gc_runs, 'GC run')} "
            f"({self.gc_seconds * 1000:.0f} ms)"
        ]
        if self.budget is not None:
            cleanup.append(f"budget {format_bytes(self.budget)}")
        ooms = []
        if self.ooms:
            ooms.append(
                f"{counted(self.ooms, 'out-of-memory error')} ({self.oom_retries} retried, "
                f"{counted(self.batch_size_reductions, 'batch size reduction')})"
            )
        ooms.extend(self._allocator_parts())
        failures = []
        if self.failures or self.cleanup_failures:
            failures.append(
                f"{counted(self.failures, 'failure')}, "
                f"{counted(self.cleanup_failures, 'failed cleanup')}"
            )
        if self.failed_items:
            failures.append(f"{counted(len(self.failed_items), 'failed item')} (skipped)")
        skipped = []
        done_before = self.skipped - self.skipped_failed
        if self.skipped:
            # Done and failed apart, so the numbers add up to what the journal holds.
            earlier = f"{counted(done_before, 'item')} done"
            if self.skipped_failed:
                earlier += f" and {self.skipped_failed} failed"
            skipped.append(f"{earlier} by earlier runs (skipped)")
        if self.retried:
            skipped.append(f"{counted(self.retried, 'failed item')} of earlier runs retried")
        return [
            head,
            ("memory", memory),
            ("host", host),
            ("memory growth", growth),
            ("leak", leak),
            ("cleanup", cleanup),
            ("out of memory", ooms),
            ("failures", failures),
            ("earlier runs", skipped),
            ("extras", [f"{name} {value!r}" for name, value in self.extras.items()]),
        ]

    def _allocator_parts(self) -> list[str]:
        parts = []
        if self.allocator_ooms:
            recovered = self.allocator_ooms_recovered
            how_many = "all" if recovered == self.allocator_ooms else recovered
            text = f"{counted(self.allocator_ooms, 'allocator OOM')}, {how_many} recovered"
            if self.largest_oom_request is not None:
                text += f" (largest request {format_bytes(self.largest_oom_request)})"
            parts.append(text)
        if self.alloc_retries:
            parts.append(counted(self.alloc_retries, "allocation retry", "allocation retries"))
        return parts

    def _host_memory(self) -> str:
        text = (
            f"host memory: resident {format_bytes(self.host_resident_start)} -> "
            f"{format_bytes(self.host_resident_end)}"
        )
        if self.host_resident_peak is not None:
            text += f" (peak {format_bytes(self.host_resident_peak)})"
        if self.host_limit is not None:
            text += f" of {format_bytes(self.host_limit)} limit"
        return text

    def _rank_prefix(self) -> str:
        if self.rank is None:
            return ""
        if self.world_size is None:
            return f"rank {self.rank} "
        return f"rank {self.rank}/{self.world_size} "

    def __str__(self) -> str:
        return "\n".join(self.lines())
