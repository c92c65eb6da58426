"""The batch's leak watch: the memory that stays after each cleanup, judged for a trend.

It samples the device's tensors (allocated bytes) where the device reports them, else the
process's resident memory; in count-only mode, which cleans nothing, it takes the timeline's
reading when there is one and reads nothing of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from memscope._watch_host import HostWatch
from memscope.leaks import LeakWatch
from memscope.watch import CleanupStep, WatchedBatch, Watcher

if TYPE_CHECKING:
    from memscope._watch_journal import JournalWatch

__all__: list[str] = []

logger = logging.getLogger("memscope")


class LeakWatcher(Watcher):
    """Feeds a :class:`~memscope.leaks.LeakWatch` from the batch's cleanup steps."""

    def __init__(
        self,
        host: HostWatch,
        *,
        after_cleanup: bool,
        history_recorded: bool,
        offset: JournalWatch | None,
    ) -> None:
        self._host = host
        self._after_cleanup = after_cleanup
        self._history_recorded = history_recorded
        self._offset = offset
        self._watch: LeakWatch | None = None
        self._device_figures = False

    def __repr__(self) -> str:
        return "LeakWatcher()"

    def started(self, batch: WatchedBatch) -> None:
        start = batch.start_figures
        device = batch.manager.resolved_device
        self._device_figures = start.total is not None or start.allocated is not None
        if self._device_figures:
            self._watch = LeakWatch(
                device,
                capacity=start.total,
                sampled="allocated",
                history_recorded=self._history_recorded,
                after_cleanup=self._after_cleanup,
            )
        elif self._host.monitor is not None:
            self._watch = LeakWatch(
                device,
                capacity=self._host.monitor.limit.size,
                sampled="resident",
                after_cleanup=self._after_cleanup,
            )

    def cleaned(self, batch: WatchedBatch, step: CleanupStep) -> None:
        watch = self._watch
        if watch is None:
            return
        collected = step.gc_runs > 0
        if not collected and watch.wants_collection:
            # The growth since the last floor may be garbage the threshold GC never reached:
            # one collection says whether it stays (a leak) or goes (no alarm).
            self._observe(step.item, self._collect(batch), collected=True)
            return
        retained = step.figures().allocated if self._device_figures else self._host.last
        self._observe(step.item, retained, collected=collected)

    def _collect(self, batch: WatchedBatch) -> int | None:
        """A collection and a cache clear now, counted in the batch's report; the memory that
        stays after it."""
        batch.collect()
        if self._device_figures:
            return batch.memory_now().allocated  # collect() dropped the reading it changed
        return self._host.sample()

    def _observe(self, item: int, retained: int | None, *, collected: bool | None) -> None:
        assert self._watch is not None
        offset = 0 if self._offset is None else self._offset.items_before
        try:
            self._watch.observe(offset + item, retained, collected=collected)
        except Exception:
            # Watching is a diagnosis: it never stops the batch.
            logger.debug("the leak watch failed", exc_info=True)

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._watch is None:
            return {}
        return {
            "memory_growth_per_item": self._watch.growth_per_item,
            "leak": self._watch.finding,
        }


class CountOnlyLeakWatcher(LeakWatcher):
    """The leak watch of a count-only batch, which cleans nothing: it judges the readings
    other watchers (the timeline) took after items, and reads nothing of its own."""

    _host_samples_seen = 0
    """The host watch's sample count at the last host sample judged."""

    def items_done(self, batch: WatchedBatch, item: int, count: int) -> None:
        if self._watch is None:
            return
        if self._device_figures:
            reading = batch.memory_if_read()
            retained = None if reading is None else reading.allocated
        elif self._host.samples > self._host_samples_seen:
            self._host_samples_seen = self._host.samples
            retained = self._host.last
        else:
            return  # no new sample: the last one again would be a false floor
        if retained is not None:
            self._observe(item, retained, collected=None)
