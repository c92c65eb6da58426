"""Recording CUDA allocation history, and writing it to a file when memory runs out.

While recording, PyTorch's CUDA caching allocator keeps every allocation and free with its
stack trace (``torch.cuda.memory._record_memory_history``). A snapshot of that history
(``torch.cuda.memory._dump_snapshot``) opens in PyTorch's memory viewer at
https://pytorch.org/memory_viz and shows which code held the memory when it ran out.

Only CUDA (and ROCm, which torch exposes as CUDA) records this history; on other devices the
recorder does nothing and says so in an INFO log record. Under CUDA's ``cudaMallocAsync``
allocator torch records none either, which a WARNING says once. The device-specific calls sit
in the backends (``DeviceBackend.start_memory_history`` and friends).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from os import PathLike
from pathlib import Path

import torch

from memscope._context_manager import SyncAndAsyncContextManager
from memscope._devices import as_torch_device
from memscope._validation import check_int
from memscope.backends import DeviceBackend, create_backend
from memscope.exceptions import InvalidArgumentTypeError
from memscope.manager import MemoryManager
from memscope.oom._detection import is_oom_error
from memscope.oom._diagnosis import MEMORY_VIEWER_URL, add_oom_note
from memscope.typing import DeviceLike

__all__ = ["MemoryHistory", "MemoryHistoryRecorder"]

logger = logging.getLogger("memscope")

DEFAULT_MAX_ENTRIES = 100_000
"""Allocation events kept by default. PyTorch keeps the newest ones in a ring buffer; each
takes a few KB in the snapshot file, so this bounds a snapshot to some hundreds of MB."""

# Recording is process-wide in torch, so nested or concurrent recorders share it: the first
# to start switches it on, the last to stop switches it off.
_recording_lock = threading.Lock()
_active_recorders = 0
_file_numbers = itertools.count(1)


DEFAULT_HISTORY_FOLDER = "memscope-memory-history"


class MemoryHistory:
    """How ``managed_batch(history=...)`` records CUDA's allocation history.

    While the batch runs, torch keeps the newest ``max_entries`` allocation events; an
    out-of-memory error that ends the batch gets a snapshot file in ``folder`` (created when
    the first one is written), named in the error's note and in ``report.memory_snapshots``.
    On other devices nothing is recorded (said once in an INFO record).
    """

    __slots__ = ("folder", "max_entries")

    def __init__(
        self,
        folder: str | PathLike[str] = DEFAULT_HISTORY_FOLDER,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if not isinstance(folder, (str, PathLike)):
            raise InvalidArgumentTypeError(
                f"folder must be a str or a path, got {folder!r} of type {type(folder).__name__}"
            )
        self.folder = Path(folder)
        self.max_entries = check_int(max_entries, "max_entries", minimum=1)

    def __repr__(self) -> str:
        return f"MemoryHistory({str(self.folder)!r}, max_entries={self.max_entries})"


_warned: set[str] = set()


def _say_why_not_recorded(device: torch.device, backend: DeviceBackend) -> None:
    """An INFO record where the device type keeps no history; a WARNING, once per reason,
    where a setting of the process stops a device that could (cudaMallocAsync)."""
    try:
        reason = backend.why_no_memory_history()
    except Exception:
        reason = None
    if reason is None:
        logger.info("%s records no allocation history (CUDA does)", device)
    elif reason not in _warned:
        _warned.add(reason)
        logger.warning("%s: no memory history is recorded: %s", device, reason)


def _safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "snapshot"


class MemoryHistoryRecorder(SyncAndAsyncContextManager):
    """Records CUDA allocation history and writes a snapshot file when asked or on OOM.

    Args:
        device: the device whose memory is watched; recording happens only when it is a
            CUDA device. ``None`` auto-detects, at :meth:`start`.
        folder: where snapshot files go; created when the first one is written.
        max_entries: how many allocation events torch keeps (the newest ones).
        manager: the manager whose figures an out-of-memory note shows (see
            :func:`~memscope.add_oom_note`); optional.

    Use it as a context manager (sync or async): recording starts on entry and stops on
    exit, and an out-of-memory error leaving the block gets a snapshot file, named in a note
    attached to the error. Or call :meth:`start`, :meth:`dump` and :meth:`stop` yourself.

    Constructing a recorder touches no device.
    """

    def __init__(
        self,
        device: DeviceLike,
        folder: str | PathLike[str],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        manager: MemoryManager | None = None,
    ) -> None:
        if not isinstance(folder, (str, PathLike)):
            raise InvalidArgumentTypeError(
                f"folder must be a str or a path, got {folder!r} of type {type(folder).__name__}"
            )
        if manager is not None and not isinstance(manager, MemoryManager):
            raise InvalidArgumentTypeError(
                f"manager must be a MemoryManager or None, got {manager!r}"
            )
        # Parsing a named device touches no hardware; None is detected at start().
        self._device = None if device is None else as_torch_device(device)
        self.folder = Path(folder)
        self.max_entries = check_int(max_entries, "max_entries", minimum=1)
        self.manager = manager
        self.snapshot_paths: list[Path] = []
        self._recording = False
        self._backend: DeviceBackend | None = None
        self._lock = threading.Lock()

    def _backend_for(self, device: torch.device) -> DeviceBackend:
        if self.manager is not None and self.manager.resolved_device.type == device.type:
            return self.manager.backend
        return create_backend(device)

    def __repr__(self) -> str:
        return (
            f"MemoryHistoryRecorder(device={str(self._device)!r}, folder={str(self.folder)!r}, "
            f"max_entries={self.max_entries}, recording={self._recording})"
        )

    @property
    def recording(self) -> bool:
        """Whether this recorder has started recording and not stopped."""
        return self._recording

    def start(self) -> bool:
        """Start recording; returns whether history is being recorded.

        On a device without allocation history, or when torch refuses, this logs why and
        returns ``False``; it never raises for that.
        """
        with self._lock:
            if self._recording:
                return True
            if self._device is None:
                self._device = as_torch_device(None)
            device = self._device
            backend = self._backend_for(device)
            global _active_recorders
            with _recording_lock:
                if _active_recorders == 0:
                    try:
                        started = backend.start_memory_history(self.max_entries)
                    except Exception:
                        logger.warning("could not start recording memory history", exc_info=True)
                        return False
                    if not started:
                        _say_why_not_recorded(device, backend)
                        return False
                _active_recorders += 1
            self._backend = backend
            self._recording = True
            logger.debug(
                "recording memory history of %s (max %d entries)", device, self.max_entries
            )
            return True

    def stop(self) -> None:
        """Stop recording, if this recorder started it. Never raises."""
        with self._lock:
            if not self._recording:
                return
            self._recording = False
            global _active_recorders
            with _recording_lock:
                _active_recorders -= 1
                if _active_recorders > 0:
                    return
                try:
                    if self._backend is not None:
                        self._backend.stop_memory_history()
                except Exception:
                    logger.warning("could not stop recording memory history", exc_info=True)

    def dump(self, label: str = "oom") -> Path | None:
        """Write the recorded history to a new file in ``folder``; returns its path.

        The name says what and when: ``memscope-oom-cuda0-20250131-142501-pid4242-1.pickle``.
        Returns ``None`` (and logs why) when nothing is being recorded or the file cannot be
        written; it never raises.
        """
        if not self._recording or self._backend is None:
            logger.debug("no memory history snapshot: nothing is being recorded")
            return None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._new_path(label)
            if not self._backend.dump_memory_history(str(path)):
                logger.info("%s cannot write allocation history snapshots", self._device)
                return None
        except Exception:
            logger.warning(
                "could not write a memory history snapshot to %s", self.folder, exc_info=True
            )
            return None
        self.snapshot_paths.append(path)
        logger.info("memory history snapshot written to %s; open it at %s", path, MEMORY_VIEWER_URL)
        return path

    def _new_path(self, label: str) -> Path:
        device = re.sub(r"[^A-Za-z0-9]+", "", str(self._device))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        while True:
            name = (
                f"memscope-{_safe_label(label)}-{device}-{stamp}-pid{os.getpid()}-"
                f"{next(_file_numbers)}.pickle"
            )
            path = self.folder / name
            if not path.exists():
                return path

    def record_oom(self, error: BaseException, label: str = "oom") -> Path | None:
        """Dump a snapshot for ``error`` and name the file in its out-of-memory note."""
        path = self.dump(label)
        if path is not None:
            add_oom_note(error, self.manager, snapshot_path=path)
        return path

    def __enter__(self) -> MemoryHistoryRecorder:
        self.start()
        return self

    def _leave(self, error: BaseException | None) -> None:
        try:
            if error is not None and is_oom_error(error):
                self.record_oom(error)
        finally:
            self.stop()
