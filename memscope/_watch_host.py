"""The process's resident memory across a batch: at its start, at each cleanup, at its end.

Sampled where the batch already pays for a cleanup, so the report's host peak costs nothing
on the per-item path. On the CPU, which reports no memory figures of its own, this is the
batch's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from memscope.exceptions import HostMemoryUnavailableError
from memscope.host import HostMemoryMonitor
from memscope.manager import MemoryManager
from memscope.watch import CleanupStep, WatchedBatch, Watcher

__all__: list[str] = []

logger = logging.getLogger("memscope")

_host_figures_missing_said = False


def host_monitor_for(manager: MemoryManager) -> HostMemoryMonitor | None:
    """The manager's host monitor; on the CPU without one, a monitor of this process's
    memory (so a CPU batch's report has figures); otherwise none."""
    global _host_figures_missing_said
    if manager.host_monitor is not None:
        return manager.host_monitor
    if manager.resolved_device.type != "cpu":
        return None
    try:
        return HostMemoryMonitor()
    except HostMemoryUnavailableError:
        if not _host_figures_missing_said:
            _host_figures_missing_said = True
            logger.warning(
                "the CPU reports no memory figures and this process's resident memory cannot "
                "be read here; pip install 'memscope[host]' (psutil) for host memory figures"
            )
        return None


class HostWatch(Watcher):
    """Samples the process's resident memory; other watchers read its latest sample."""

    def __init__(self) -> None:
        self.monitor: HostMemoryMonitor | None = None
        self.start: int | None = None
        self.peak: int | None = None
        self.last: int | None = None
        self.samples = 0
        """Samples taken so far: a reader of :attr:`last` sees whether it is new."""
        self._item = -1
        self._read: Callable[[], int] | None = None
        self.reuse_for = 0.0
        """Seconds for which a reader after every item may repeat :attr:`last` (the
        monitor's :attr:`~memscope.host.HostMemoryMonitor.reuse_for`)."""
        self.share: Callable[[int], float] | None = None
        """Where the batch's usage is the host's share of its limit (the CPU): resident bytes
        to that share; ``None`` elsewhere."""

    def __repr__(self) -> str:
        return "HostWatch()"

    def started(self, batch: WatchedBatch) -> None:
        self.monitor = monitor = host_monitor_for(batch.manager)
        self._read = None if monitor is None else monitor.resident_bytes
        self.reuse_for = 0.0 if monitor is None else monitor.reuse_for
        self.start = self.sample()
        # Known once: whether the batch's usage is the host's share (see host_share).
        on_device = batch.start_figures.total is not None
        if monitor is not None and batch.manager.host_monitor is None and not on_device:
            self.share = monitor.usage

    def sample(self) -> int | None:
        """The process's resident memory now, folded into the peak; ``None`` if unknown."""
        return self.sample_at(None)

    def sample_at(self, item: int | None) -> int | None:
        """:meth:`sample`, taken at most once per item: within one item (its cleanup step,
        then the timeline, say) the first sample is shared. ``None`` samples anew."""
        if item is not None:
            if item == self._item:
                return self.last
            self._item = item
        read = self._read
        if read is None:
            return None
        try:
            resident = read()
        except Exception:
            logger.debug("could not read the process's resident memory", exc_info=True)
            return None
        peak = self.peak
        self.peak = resident if peak is None or resident > peak else peak
        self.last = resident
        self.samples += 1
        return resident

    def host_share(self, resident: int | None) -> float | None:
        """On the CPU, whose usage the manager reports as 0.0 when it watches no host (the
        Cobra MemoryManager API's figure), ``resident`` over the host's limit: the batch's
        usage then; ``None`` elsewhere."""
        share = self.share
        return None if share is None or resident is None else share(resident)

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        usage_of = usage_basis(batch, None if self.monitor is None else self.monitor.limit.size)
        if self.monitor is None:
            return {"usage_of": usage_of}
        end = self.sample()
        part: dict[str, Any] = {
            "host_resident_start": self.start,
            "host_resident_end": end,
            "host_resident_peak": self.peak,
            "host_limit": self.monitor.limit.size,
            "usage_of": usage_of,
        }
        start_share, end_share = self.host_share(self.start), self.host_share(end)
        if start_share is not None and end_share is not None:
            part.update(usage_start=start_share, usage_end=end_share)
        return part


def usage_basis(batch: WatchedBatch, host_limit: int | None) -> str | None:
    """What the batch's usage is a share of (the report's ``usage_of``), given the limit of
    the host when it is watched; ``None`` where it is a share of nothing (the CPU with no
    host figures)."""
    manager = batch.manager
    budget = manager.budget
    on_device = batch.start_figures.total is not None
    shares = ["device memory"] if on_device else []
    # On the CPU a budget counts the resident memory the host's share counts: a budget
    # under the host's limit is always the larger share.
    budget_under_limit = budget is not None and host_limit is not None and budget <= host_limit
    if (
        host_limit is not None
        and (manager.host_monitor is not None or not on_device)
        and (on_device or not budget_under_limit)
    ):
        shares.append("host limit")
    if budget is not None:
        shares.append("budget")
    if len(shares) > 1:
        return f"the {'larger' if len(shares) == 2 else 'largest'} of " + (
            f"{', '.join(shares[:-1])} and {shares[-1]}"
        )
    return shares[0] if shares else None


class SteppedHostWatch(HostWatch):
    """A :class:`HostWatch` that samples at each cleanup step too: the batch's, where the
    host is watched at all (the CPU, or a manager with ``host=``); elsewhere the plain watch
    has no per-step hook."""

    # The step's sample: the one other watchers of the step (the leak watch, the timeline)
    # read.
    def cleaned(self, batch: WatchedBatch, step: CleanupStep) -> None:
        self.sample_at(step.item)


def host_watch_for(manager: MemoryManager) -> HostWatch:
    """The host watch a batch on ``manager`` needs."""
    watched = manager.host_monitor is not None or manager.resolved_device.type == "cpu"
    return SteppedHostWatch() if watched else HostWatch()
