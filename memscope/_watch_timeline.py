"""The batch's memory timeline: one row per finished item (per chunk for chunked work).

Each row reuses the reading the item's cleanup step took, if it took one. With a journal,
rows are streamed into the journal's file, so a run of a million items holds no timeline
in memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from memscope._watch_host import HostWatch
from memscope.reports import TimelineEntry
from memscope.watch import Watcher

if TYPE_CHECKING:
    from memscope._watch_journal import JournalWatch
    from memscope.batch import ManagedBatch

__all__: list[str] = []


class TimelineWatch(Watcher):
    """Records memory after every item."""

    def __init__(self, host: HostWatch, journal: JournalWatch | None) -> None:
        self._host = host
        self._journal = journal
        self._entries: list[TimelineEntry] = []
        self._gc_runs_at_last_entry = 0

    def __repr__(self) -> str:
        return "TimelineWatch()"

    def items_done(self, batch: ManagedBatch, item: int, count: int) -> None:
        snapshot = batch.memory_now()
        host_resident = self._host.sample()
        seconds = time.perf_counter() - batch.started_at
        gc_runs = batch._ledger.gc_runs
        journal = self._journal
        entry = TimelineEntry(
            item=item if journal is None else journal.items_before + item,
            seconds=seconds if journal is None else journal.seconds_before + seconds,
            usage=snapshot.usage,
            allocated=snapshot.allocated,
            reserved=snapshot.reserved,
            gc_ran=gc_runs > self._gc_runs_at_last_entry,
            host_resident=host_resident,
        )
        self._gc_runs_at_last_entry = gc_runs
        if journal is None:
            self._entries.append(entry)
        else:
            journal.timeline(entry)

    def report_part(self, batch: ManagedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._journal is not None:
            return {"timeline_file": str(self._journal.journal.path)}
        return {"timeline": tuple(self._entries)}
