"""CUDA's allocation history across a batch, and a snapshot file when an OOM ends it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memscope.oom import MemoryHistory, MemoryHistoryRecorder, add_oom_note
from memscope.watch import WatchedBatch, Watcher

__all__: list[str] = []


class HistoryWatch(Watcher):
    """Records the allocation history while the batch runs (see :class:`MemoryHistory`)."""

    def __init__(self, options: MemoryHistory) -> None:
        self._options = options
        self._recorder: MemoryHistoryRecorder | None = None

    def __repr__(self) -> str:
        return f"HistoryWatch({self._options!r})"

    def started(self, batch: WatchedBatch) -> None:
        manager = batch.manager
        self._recorder = MemoryHistoryRecorder(
            manager.resolved_device,
            self._options.folder,
            max_entries=self._options.max_entries,
            manager=manager,
        )
        self._recorder.start()

    def oom_seen(self, batch: WatchedBatch, error: BaseException, *, leaving: bool) -> None:
        if leaving and self._recorder is not None:
            path = self._recorder.dump()
            if path is not None:
                add_oom_note(error, batch.manager, snapshot_path=path)

    def report_part(self, batch: WatchedBatch, figures: Mapping[str, Any]) -> Mapping[str, Any]:
        paths = () if self._recorder is None else self._recorder.snapshot_paths
        return {"memory_snapshots": tuple(str(path) for path in paths)}

    def finished(self, batch: WatchedBatch, error: BaseException | None) -> None:
        if self._recorder is not None:
            self._recorder.stop()
