"""Small kernel files read with one ``os.pread`` on a descriptor kept open, fork-safely.

Opening a ``/proc`` or cgroup file is most of what reading it costs; a descriptor kept open
reads the current figures at offset 0 each time. A forked child reopens its files: an
inherited descriptor on ``/proc/self/...`` still reads the parent (``/proc/self`` resolved
at open), so ``os.register_at_fork`` drops every descriptor in the child.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

__all__ = ["KeptOpenFile"]

_ALL: weakref.WeakSet[KeptOpenFile] = weakref.WeakSet()


def _forget_all_after_fork() -> None:
    for kept_open in list(_ALL):
        kept_open.forget_descriptor()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_after_fork)


class KeptOpenFile:
    """One file, opened at the first read and read whole (up to ``size`` bytes) each time."""

    def __init__(self, path: Path, size: int = 4096) -> None:
        self.path = path
        self.size = size
        self._descriptor: int | None = None
        _ALL.add(self)

    def _open(self) -> int:
        descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._descriptor = descriptor
        return descriptor

    def forget_descriptor(self) -> None:
        """Close the descriptor (in a forked child: the parent's file); the next read reopens."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(descriptor)

    def read(self) -> bytes:
        """The file's content now; ``OSError`` where it cannot be opened."""
        descriptor = self._descriptor
        if descriptor is None:
            descriptor = self._open()
        try:
            return os.pread(descriptor, self.size, 0)
        except OSError:
            # A descriptor closed under us: reopen once, and let a second failure propagate.
            self.forget_descriptor()
            return os.pread(self._open(), self.size, 0)

    def __del__(self) -> None:
        self.forget_descriptor()


def pread_available() -> bool:
    """Whether this platform reads at an offset (``os.pread``; not on Windows)."""
    return hasattr(os, "pread")
