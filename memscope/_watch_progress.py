"""The batch's progress bar (tqdm): items done, skipped or failed, and memory.

The bar is made when the first loop starts or the first item finishes, so a log without a
terminal gets no empty bar; its memory figure is refreshed at cleanup steps, from the
reading the step took, so the bar costs no device reading per item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memscope._watch_host import HostWatch
from memscope.units import format_bytes
from memscope.watch import CleanupStep, WatchedBatch, Watcher

if TYPE_CHECKING:
    from memscope.reports import ItemFailure
    from memscope.typing import ItemKey

__all__: list[str] = []

PROGRESS_MISSING = (
    "progress=True needs tqdm, which is not installed: pip install 'memscope[progress]'"
)


def load_tqdm() -> Any:
    """tqdm's bar class, or an ImportError saying how to install it."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(PROGRESS_MISSING) from None
    return tqdm


class ProgressBar(Watcher):
    """A tqdm bar of the batch's items."""

    def __init__(self, host: HostWatch) -> None:
        self._host = host
        self._bar: Any = None

    def __repr__(self) -> str:
        return "ProgressBar()"

    def _shown(self, batch: WatchedBatch) -> Any:
        if self._bar is None:
            self._bar = load_tqdm()(
                total=None, unit="item", desc=str(batch.manager.resolved_device)
            )
        return self._bar

    def iterating(self, batch: WatchedBatch, total: int | None) -> None:
        bar = self._shown(batch)
        if total is not None:
            bar.total = (bar.total or 0) + total
            bar.refresh()

    def items_done(self, batch: WatchedBatch, item: int, count: int) -> None:
        self._shown(batch).update(count)

    def item_skipped(self, batch: WatchedBatch, key: ItemKey) -> None:
        self._shown(batch).update(1)

    def item_failed(self, batch: WatchedBatch, failure: ItemFailure) -> None:
        self._shown(batch).update(1)

    def cleaned(self, batch: WatchedBatch, step: CleanupStep) -> None:
        if self._host.monitor is not None and batch.start_figures.total is None:
            figure = f"host memory {format_bytes(self._host.last)}"
        else:
            figure = f"memory {step.figures().usage:.0%}"
        self._shown(batch).set_postfix_str(figure, refresh=False)

    def finished(self, batch: WatchedBatch, error: BaseException | None) -> None:
        if self._bar is not None:
            self._bar.close()
