"""The batch's memory timeline: one row per finished item (per chunk for chunked work).

Each row reuses the reading the item's cleanup step took, if it took one. The host's figure
(the CPU's memory) is read at most once per the host monitor's ``reuse_for`` (1 ms): rows
closer together repeat the latest reading. With a journal, rows are streamed into the
journal's file, so a run of a million items holds no timeline in memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from memscope._watch_host import HostWatch
from memscope.reports import Timeline, TimelineEntry
from memscope.snapshot import MemorySnapshot
from memscope.typing import BatchCounts
from memscope.watch import WatchedBatch, Watcher

if TYPE_CHECKING:
    from memscope._watch_journal import JournalWatch

__all__: list[str] = []


class TimelineWatch(Watcher):
    """Records memory after every item."""

    def __init__(self, host: HostWatch, journal: JournalWatch | None) -> None:
        self._host = host
        self._journal = journal
        self._entries = Timeline()
        self._gc_runs_at_last_entry = 0
        self._started_at = 0.0
        self._counts: BatchCounts  # set when the batch starts
        self._fixed: MemorySnapshot | None = None
        self._host_read_at = -math.inf
        self._host_samples = -1
        self._host_resident: int | None = None
        self._host_usage: float | None = None
        """The batch's usage as the host's share, where it is that (the CPU)."""

    def __repr__(self) -> str:
        return "TimelineWatch()"

    def started(self, batch: WatchedBatch) -> None:
        start = batch.start_figures
        self._started_at = batch.started_at
        self._counts = batch.counts
        # A device with no figures of its own, watched for neither host nor budget (the CPU
        # by default), reads the same at every item: read once.
        figureless = start.total is None and start.reserved is None and start.budget is None
        self._fixed = start if figureless and start.host_limit is None else None

    def items_done(self, batch: WatchedBatch, item: int, count: int) -> None:
        snapshot = self._fixed or batch.memory_now()
        now = time.perf_counter()
        host = self._host
        # A sample the batch took since (at a cleanup step, say) is used at once.
        if host.samples != self._host_samples or now - self._host_read_at >= host.reuse_for:
            self._host_resident = resident = host.sample_at(item)
            self._host_samples = host.samples
            self._host_read_at = now
            self._host_usage = host.host_share(resident)
        host_resident = self._host_resident
        usage = snapshot.usage if self._host_usage is None else self._host_usage
        seconds = now - self._started_at
        gc_runs = self._counts.gc_runs
        gc_ran = gc_runs > self._gc_runs_at_last_entry
        self._gc_runs_at_last_entry = gc_runs
        journal = self._journal
        if journal is None:
            # Compact columns: no entry object is built per item.
            self._entries.append(
                item,
                seconds,
                usage,
                snapshot.allocated,
                snapshot.reserved,
                gc_ran,
                host_resident,
            )
            return
        journal.timeline(
            TimelineEntry(
                item=journal.items_before + item,
                seconds=journal.seconds_before + seconds,
                usage=usage,
                allocated=snapshot.allocated,
                reserved=snapshot.reserved,
                gc_ran=gc_ran,
                host_resident=host_resident,
            )
        )

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._journal is not None:
            return {"timeline_file": str(self._journal.journal.path)}
        return {"timeline": self._entries.copy()}
