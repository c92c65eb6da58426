"""Durable batch runs: a journal of finished and failed items, so a rerun resumes.

``managed_batch(..., journal="run.jsonl")`` appends one JSON line per finished item (its
key) and per failed one (key, error type, message, notes). Each line reaches the operating
system when it is written (one ``os.write`` on an append-only descriptor, nothing buffered in
Python); ``Journal(sync_every=...)`` only spaces the ``os.fsync`` calls. Rerunning the same code
with the same journal skips the items it names. What is guaranteed (tested with real
``SIGKILL`` s):

- **nothing lost**: an item is journaled only after its work finished, so every item the
  journal does not name is processed by the rerun;
- **at least once**: the item in flight when the process died is processed again, and only
  it, whatever ``sync_every``; with ``sync_every=N``, a power loss or a kernel
  crash (not a killed process) may also cost the N - 1 items finished since the last sync.

A key met several times in one run is counted per occurrence: a rerun skips as many
occurrences as the journal records. A journal carries a header naming its job; one written for
another job is refused, and an ``flock`` on a lock file beside it admits one writer at a time.

:func:`read_journal` summarises a journal without running anything (``memscope report``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from memscope import _journal_read
from memscope._journal_lock import JournalLock
from memscope._journal_read import JournalSummary
from memscope._notes import add_note
from memscope._validation import check_int
from memscope._version import __version__
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError, JournalError
from memscope.reports import ItemFailure, TimelineEntry
from memscope.typing import ItemKey

__all__ = ["Journal", "JournalSummary", "Key", "item_key", "read_journal"]

Key = ItemKey
"""What names an item in a journal: :data:`memscope.typing.ItemKey` (a string or an int)."""

logger = logging.getLogger("memscope")

FORMAT = _journal_read.FORMAT
"""The journal format this version writes; it reads this one and format 1."""

MAX_KEY_LENGTH = 4096
"""The longest key, in characters (of the string, or of the int's decimal digits)."""

# An int of more bits than this has more than MAX_KEY_LENGTH digits: refused without making
# its decimal string, which is slow for huge ints and refused by Python past 4300 digits.
_MAX_KEY_BITS = int(MAX_KEY_LENGTH * 3.3219280948873626) + 1

Reached = Literal["new", "done", "failed", "retry"]


def item_key(item: object, key: Callable[[Any], object] | None = None) -> ItemKey:
    """The journal key of ``item``: ``key(item)`` when given, else the item itself.

    Keys are strings, ``os.PathLike`` objects (kept as their path string) or ints, of at most
    :data:`MAX_KEY_LENGTH` characters or digits; anything else is an
    :class:`~memscope.InvalidArgumentTypeError` (another type) or
    :class:`~memscope.InvalidArgumentError` (too long) naming the item. The check is complete:
    a key it accepts is always journaled, so a bad key fails before that item's work.
    """
    value = key(item) if key is not None else item
    if isinstance(value, bool):
        raise InvalidArgumentTypeError(_key_message(item, value, key))
    if isinstance(value, int):
        if value.bit_length() > _MAX_KEY_BITS or len(str(abs(value))) > MAX_KEY_LENGTH:
            raise InvalidArgumentError(_too_long(item, key, f"an int of {value.bit_length()} bits"))
        return value
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        value = path if isinstance(path, str) else os.fsdecode(path)
    if isinstance(value, str):
        if len(value) > MAX_KEY_LENGTH:
            raise InvalidArgumentError(_too_long(item, key, f"a str of {len(value)} characters"))
        return value
    raise InvalidArgumentTypeError(_key_message(item, value, key))


def _shown(value: object) -> str:
    try:
        return f"{value!r:.60}"
    except Exception:  # a huge int, or a __repr__ that raises
        return f"<{type(value).__name__} object>"


def _source(item: object, key: object) -> str:
    return "the item itself" if key is None else f"key({_shown(item)})"


def _key_message(item: object, value: object, key: object) -> str:
    return (
        f"a journal needs a key for each item: a str, an os.PathLike or an int; "
        f"{_source(item, key)} is {_shown(value)} of type {type(value).__name__}. Pass key= to "
        "track() or map() to make one (e.g. key=lambda image: image.path)"
    )


def _too_long(item: object, key: object, what: str) -> str:
    return (
        f"a journal key has at most {MAX_KEY_LENGTH} characters or digits; {_source(item, key)} "
        f"is {what}. Pass key= to track() or map() to make a shorter one"
    )


def read_journal(path: str | os.PathLike[str]) -> JournalSummary:
    """Read the journal at ``path``; raises :class:`~memscope.exceptions.JournalError` (naming
    the path) when it is not a regular file, not a memscope journal, or damaged before its last
    line. A journal whose only line is a header cut off by a crash reads as empty."""
    journal_path = Path(path)
    descriptor = _journal_read.open_regular(journal_path, os.O_RDONLY)
    try:
        summary, _ = _journal_read.parse(journal_path, descriptor)
    except OSError as error:
        raise JournalError(f"the journal {journal_path} cannot be read: {error}") from None
    finally:
        os.close(descriptor)
    if summary is None:
        raise JournalError(f"{journal_path} is not a memscope journal: it has no header line")
    return summary


class Journal:
    """A batch's journal: ``managed_batch(journal=Journal("run.jsonl", ...))``.

    Args:
        path: the file (JSON lines); created on first use.
        job: a name for the job, kept in the header; a journal written under another name
            is refused rather than mixed.
        sync_every: ``os.fsync`` every this many items (1: every item, the safest); every
            record reaches the OS when it is written, so only a power loss or a kernel crash
            can cost repeats.
        retry_failed: on a rerun, process again the items the journal records as failed
            (by default they are skipped like finished ones, their failures carried into
            the report).

    One batch at a time uses a journal. The batch calls, in order: :meth:`open` on entry;
    per item :func:`item_key` (or :meth:`key`), then :meth:`reached` (skip the item unless it
    says ``"new"`` or ``"retry"``), then after its work :meth:`done` or :meth:`failed`;
    :meth:`timeline` for streamed entries; and :meth:`close` on exit, with the exception the
    batch is ending with. ``skipped_done``, ``skipped_failed`` and ``retried`` count what
    :meth:`reached` said.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        job: str | None = None,
        sync_every: int = 1,
        retry_failed: bool = False,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgumentTypeError(f"journal must be a str or a path, got {path!r}")
        if job is not None and not isinstance(job, str):
            raise InvalidArgumentTypeError(f"job must be a str or None, got {job!r}")
        if not isinstance(retry_failed, bool):
            raise InvalidArgumentTypeError(f"retry_failed must be a bool, got {retry_failed!r}")
        self.path = Path(path)
        self.job = job
        self.sync_every = check_int(sync_every, "sync_every", minimum=1)
        self.retry_failed = retry_failed
        self._lock = JournalLock(self.path)
        self._descriptor: int | None = None
        self._size = 0
        # Items finish in many threads; each record must reach the file as one whole line.
        self._write_lock = threading.Lock()
        self._unsynced = 0
        self.previous: JournalSummary | None = None
        # What earlier runs did and this run has not met yet, consumed by reached().
        self._to_skip = JournalSummary(self.path, job)
        self._retrying: dict[ItemKey, int] = {}
        self._reached_called = False
        self.skipped_done = 0
        """Items :meth:`reached` skipped because an earlier run finished them."""
        self.skipped_failed = 0
        """Items :meth:`reached` skipped because an earlier run failed them."""
        self.retried = 0
        """Items an earlier run failed that this run tries again (``retry_failed=True``)."""

    def open(self) -> JournalSummary:
        """Take the lock, read what earlier runs journaled, and start this run's records."""
        _journal_read.refuse_special(self.path)
        self._lock.acquire()
        try:
            previous = self._read_or_create()
            self._write({"type": "start", "time": time.time(), "pid": os.getpid()}, sync=True)
        except BaseException:
            self._close_descriptor()
            self._lock.release()
            raise
        self.previous = previous
        self._to_skip = dataclasses.replace(
            previous,
            done=set(previous.done),
            failed=dict(previous.failed),
            done_repeats=dict(previous.done_repeats),
            failed_repeats=dict(previous.failed_repeats),
        )
        return previous

    def _read_or_create(self) -> JournalSummary:
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        self._descriptor = descriptor = _journal_read.open_regular(self.path, flags)
        try:
            previous, complete_bytes = _journal_read.parse(self.path, descriptor)
            if previous is not None and previous.truncated_tail and complete_bytes == 0:
                logger.warning("%s: starting afresh", self.path)  # only a torn header
                previous = None
            if previous is None:
                os.ftruncate(descriptor, 0)
                self._size = 0
                header = {"type": "header", "format": FORMAT, "job": self.job}
                self._write({**header, "memscope": __version__}, sync=True, counts=False)
                return JournalSummary(self.path, self.job)
            if previous.job != self.job:
                raise JournalError(
                    f"{self.path} was written by job {previous.job!r}, not {self.job!r}: "
                    "refusing to mix two jobs' items; pass another journal path, or "
                    "Journal(job=...) as the earlier run did"
                )
            if previous.truncated_tail:
                os.ftruncate(descriptor, complete_bytes)
            self._size = complete_bytes
            return previous
        except OSError as error:
            raise JournalError(f"the journal {self.path} cannot be read: {error}") from None

    def key(self, item: object, key: Callable[[Any], object] | None = None) -> ItemKey:
        """The journal key of ``item``, checked completely: :func:`item_key`."""
        return item_key(item, key)

    def reached(self, key: ItemKey) -> Reached:
        """What to do with the item ``key`` this run has reached: ``"done"`` or ``"failed"``
        (skip it: an earlier run finished or failed it), ``"retry"`` (an earlier failure,
        tried again with ``retry_failed=True``) or ``"new"``. Each occurrence of a key
        consumes one that the journal records."""
        with self._write_lock:
            self._reached_called = True
            remaining = self._to_skip
            if key in remaining.done:
                _journal_read.take_one(remaining.done, remaining.done_repeats, key)
                self.skipped_done += 1
                return "done"
            if key not in remaining.failed:
                return "new"
            _journal_read.take_one(remaining.failed, remaining.failed_repeats, key)
            if not self.retry_failed:
                self.skipped_failed += 1
                return "failed"
            self._retrying[key] = self._retrying.get(key, 0) + 1
            self.retried += 1
            return "retry"

    def done(self, key: ItemKey) -> None:
        """Journal that ``key`` finished."""
        self._write({"type": "done", "key": key, "time": time.time(), **self._retry(key)})

    def failed(self, failure: ItemFailure) -> None:
        """Journal that an item failed, and why (a very long message or notes are cut to fit
        a journal line; the batch's report keeps them whole)."""
        record = {"type": "failed", "time": time.time(), **failure.to_dict()}
        if failure.key is not None:
            record.update(self._retry(failure.key))
        if len(json.dumps(record)) >= _journal_read.MAX_LINE_BYTES:
            record.update(message=_cut(failure.message), notes=[_cut(n) for n in failure.notes])
            record["notes"] = record["notes"][:8]
        self._write(record)

    def _retry(self, key: ItemKey) -> dict[str, bool]:
        with self._write_lock:
            pending = self._retrying.get(key, 0)
            if not pending and not self._reached_called and key in self._to_skip.failed:
                # A caller that skips by itself (never asks reached()) ran this item only to
                # try an earlier failure again.
                _journal_read.take_one(self._to_skip.failed, self._to_skip.failed_repeats, key)
                return {"retry": True}
            if not pending:
                return {}
            if pending == 1:
                del self._retrying[key]
            else:
                self._retrying[key] = pending - 1
            return {"retry": True}

    def timeline(self, entry: TimelineEntry) -> None:
        """Stream one timeline entry (not synced on its own: it rides on the items' syncs)."""
        self._write({"type": "timeline", **dataclasses.asdict(entry)}, counts=False)

    def close(self, elapsed_seconds: float, error: BaseException | None = None) -> None:
        """End this run's records, sync them, and release the lock.

        ``error`` is the exception the run is ending with, if any. When memscope's own I/O
        fails here (a full disk, say), that failure never replaces it: it is logged and added
        to ``error`` as a note; with no ``error``, it is raised as a :class:`JournalError`.
        """
        problem: BaseException | None = None
        try:
            if self._descriptor is not None:
                end = {"type": "end", "time": time.time(), "elapsed_seconds": elapsed_seconds}
                self._write(end, sync=True)
        except Exception as failure:
            problem = failure
        for release in (self._close_descriptor, self._lock.release):
            try:
                release()
            except Exception as failure:
                problem = problem or failure
        if problem is None:
            return
        message = f"the journal {self.path} could not record the end of the run: {problem}"
        if error is None:
            raise JournalError(message) from problem
        logger.error("%s (the run ended with %s)", message, type(error).__name__)
        add_note(error, f"memscope: {message}")

    def _close_descriptor(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            os.close(descriptor)

    def _write(self, record: dict[str, Any], *, sync: bool = False, counts: bool = True) -> None:
        data = (json.dumps(record) + "\n").encode("ascii")
        if len(data) > _journal_read.MAX_LINE_BYTES:
            raise JournalError(f"a record for {self.path} is too long: {data[:80]!r}...")
        with self._write_lock:
            descriptor = self._descriptor
            if descriptor is None:
                raise JournalError(f"the journal {self.path} is not open")
            try:
                written = 0
                while written < len(data):
                    written += os.write(descriptor, data[written:])
            except OSError:
                # A line half written (a full disk) would damage the journal for every
                # later run: take it back; this run's failure is the error raised.
                _truncate_quietly(descriptor, self._size)
                raise
            self._size += len(data)
            self._unsynced += int(counts)
            if sync or self._unsynced >= self.sync_every:
                os.fsync(descriptor)
                self._unsynced = 0


def _cut(text: str, limit: int = 16384) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more)"


def _truncate_quietly(descriptor: int, size: int) -> None:
    try:
        os.ftruncate(descriptor, size)
    except OSError:
        logger.debug("could not take back a half-written journal line", exc_info=True)
