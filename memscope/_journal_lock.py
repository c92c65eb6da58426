"""The journal's lock: exactly one writer per journal, held by an ``flock`` on a lock file.

The kernel drops an ``flock`` when the process holding it dies, so a dead run's lock needs no
judging as stale and no removal by anyone else: the next run simply takes it. A run that is
refused closes only its own descriptor and never touches the file. The holder removes the file
when it is done, while still holding the lock; a run that opened the file just before that
and got the lock of the removed file notices (the path names another file, or none) and tries
again on the new one, so two runs never hold locks on two different files at once.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from memscope.exceptions import JournalError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

__all__: list[str] = []

logger = logging.getLogger("memscope")

_ATTEMPTS = 100
"""How often to retry when the lock file is replaced between opening and locking it."""


class JournalLock:
    """``journal.lock`` beside the journal: :meth:`acquire` or a :class:`JournalError`."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.path = journal.with_name(journal.name + ".lock")
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._descriptor is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`JournalError` naming the run that holds it."""
        if fcntl is None:  # pragma: no cover - Windows
            raise JournalError(
                f"the journal {self.journal} needs fcntl.flock, which this platform lacks"
            )
        for _ in range(_ATTEMPTS):
            descriptor = self._open()
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(descriptor)
                os.close(descriptor)
                raise JournalError(
                    f"{self.journal} is in use by another run ({owner or 'unknown owner'}); "
                    "one journal takes one writer at a time"
                ) from None
            except OSError as error:
                os.close(descriptor)
                raise JournalError(f"cannot lock {self.path}: {error}") from None
            if _names(self.path, descriptor):
                self._claim(descriptor)
                return
            os.close(descriptor)  # the holder removed this file as we opened it
        raise JournalError(f"could not take the lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file and let go of the lock; a no-op when not held."""
        descriptor = self._descriptor
        if descriptor is None:
            return
        self._descriptor = None
        try:
            # Removed while still locked: see the module's docstring for why that is safe.
            self.path.unlink(missing_ok=True)
        finally:
            os.close(descriptor)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise JournalError(f"cannot open the lock {self.path}: {error}") from None

    def _claim(self, descriptor: int) -> None:
        previous = _owner(descriptor)
        if previous:
            logger.warning("taking over %s: the run that held it (%s) is gone", self.path, previous)
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        except OSError as error:
            # The owner line is for people reading the file; the flock is what excludes.
            logger.warning("could not write the owner into %s: %s", self.path, error)
        self._descriptor = descriptor


def _owner(descriptor: int) -> str:
    try:
        return os.pread(descriptor, 512, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _names(path: Path, descriptor: int) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(descriptor)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
