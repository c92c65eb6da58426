"""The batch's journal: durable records of finished and failed items, and resuming.

On entry it takes the journal's lock and reads what earlier runs recorded; the batch then
skips the items they finished (and, unless ``retry_failed``, those they failed), and its
report carries their figures, so a resumed run reports the whole job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from memscope.journal import Journal
from memscope.reports import ItemFailure, TimelineEntry
from memscope.typing import ItemKey
from memscope.watch import WatchedBatch, Watcher

__all__: list[str] = []

logger = logging.getLogger("memscope")


class JournalWatch(Watcher):
    """Journals a batch's items through ``journal`` and skips what earlier runs did."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.items_before = 0
        """Items earlier runs of the job finished."""
        self.seconds_before = 0.0
        """Seconds earlier runs of the job took."""
        self._carried_failures: dict[ItemKey, ItemFailure] = {}

    def __repr__(self) -> str:
        return f"JournalWatch({str(self.journal.path)!r})"

    def started(self, batch: WatchedBatch) -> None:
        previous = self.journal.open()
        if not self.journal.retry_failed:
            self._carried_failures = dict(previous.failed)
        self.items_before = previous.items_done
        self.seconds_before = previous.elapsed_seconds
        if previous.runs:
            logger.info(
                "resuming from %s: %d items done, %d failed in %d earlier run(s)",
                previous.path,
                previous.items_done,
                previous.items_failed,
                previous.runs,
            )

    def skips(self, batch: WatchedBatch, key: ItemKey) -> bool:
        # Each occurrence of a key consumes one the journal records (repeated keys count
        # per occurrence).
        return self.journal.reached(key) in ("done", "failed")

    def item_finished(self, batch: WatchedBatch, key: ItemKey) -> None:
        self.journal.done(key)

    def item_failed(self, batch: WatchedBatch, failure: ItemFailure) -> None:
        self.journal.failed(failure)

    def timeline(self, entry: TimelineEntry) -> None:
        """Stream one timeline row into the journal."""
        self.journal.timeline(entry)

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        return {
            "items": self.items_before + figures["items"],
            "elapsed_seconds": self.seconds_before + figures["elapsed_seconds"],
            "failed_items": (*self._carried_failures.values(), *figures["failed_items"]),
            "skipped_failed": self.journal.skipped_failed,
            "retried": self.journal.retried,
        }

    def finished(self, batch: WatchedBatch, error: BaseException | None) -> None:
        started = batch.started_at
        # memscope's own I/O failing here never replaces the user's exception: the journal
        # attaches it to ``error`` as a note, and raises it only when there is none.
        self.journal.close(time.perf_counter() - started if started else 0.0, error=error)
