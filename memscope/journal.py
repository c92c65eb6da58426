"""Durable batch runs: a journal of finished and failed items, so a rerun resumes.

``managed_batch(..., journal="run.jsonl")`` appends one JSON line per finished item (its
key) and per failed one (key, error type, message, notes), flushed and ``os.fsync``-ed every
``journal_sync_every`` items. Rerunning the same code with the same journal skips the items
it names. What is guaranteed (tested with a real ``SIGKILL``):

- **nothing lost**: an item is journaled only after its work finished, so every item the
  journal does not name is processed by the rerun;
- **at least once**: the item in flight when the process died is processed again; with
  ``journal_sync_every=N``, up to the N - 1 items finished since the last sync may be too
  (the operating system usually writes them anyway; ``fsync`` makes sure).

A journal carries a header naming its job; one written for another job is refused, and a lock
file beside it refuses a second writer while one is running.

:func:`read_journal` summarises a journal without running anything (``memscope report``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from memscope._validation import check_int
from memscope._version import __version__
from memscope.exceptions import InvalidArgumentTypeError, JournalError
from memscope.reports import ItemFailure, TimelineEntry
from memscope.reports._item_failure import Key

__all__ = ["Journal", "JournalSummary", "Key", "item_key", "read_journal"]

logger = logging.getLogger("memscope")

FORMAT = 1
"""The journal format this version writes and reads."""


def item_key(item: object, key: Callable[[Any], object] | None = None) -> Key:
    """The journal key of ``item``: ``key(item)`` when given, else the item itself.

    Keys are strings, ``os.PathLike`` objects (kept as their path string) or ints; anything
    else is an :class:`~memscope.InvalidArgumentTypeError` naming the item, so the problem
    shows before any work is done.
    """
    value = key(item) if key is not None else item
    if isinstance(value, bool):
        raise InvalidArgumentTypeError(_key_message(item, value, key))
    if isinstance(value, (str, int)):
        return value
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return path if isinstance(path, str) else os.fsdecode(path)
    raise InvalidArgumentTypeError(_key_message(item, value, key))


def _key_message(item: object, value: object, key: object) -> str:
    source = "the item itself" if key is None else f"key({item!r:.60})"
    return (
        f"a journal needs a key for each item: a str, an os.PathLike or an int; {source} is "
        f"{value!r:.60} of type {type(value).__name__}. Pass key= to track() or map() to make "
        "one (e.g. key=lambda image: image.path)"
    )


@dataclass
class JournalSummary:
    """What a journal says: the items finished and failed, and the runs that wrote it."""

    path: Path
    job: str | None
    done: set[Key] = field(default_factory=set)
    failed: dict[Key, ItemFailure] = field(default_factory=dict)
    runs: int = 0
    """How many runs wrote to it (each run's first line is a "start" record)."""
    elapsed_seconds: float = 0.0
    """The runs' time, from their "end" records and, for a run that died, its last record."""
    truncated_tail: bool = False
    """Whether the last line was cut off (a process killed while writing it)."""

    @property
    def items_per_second(self) -> float:
        """Finished items per second of the runs' time."""
        return len(self.done) / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-serialisable dict."""
        return {
            "path": str(self.path),
            "job": self.job,
            "done": len(self.done),
            "failed": len(self.failed),
            "failures": [failure.to_dict() for failure in self.failed.values()],
            "runs": self.runs,
            "elapsed_seconds": self.elapsed_seconds,
            "items_per_second": self.items_per_second,
            "truncated_tail": self.truncated_tail,
        }


def read_journal(path: str | os.PathLike[str]) -> JournalSummary:
    """Read the journal at ``path``; raises :class:`~memscope.exceptions.JournalError` when it
    is not a memscope journal or is damaged before its last line."""
    journal_path = Path(path)
    try:
        text = journal_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JournalError(f"there is no journal at {journal_path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise JournalError(f"the journal {journal_path} cannot be read: {error}") from None
    return _parse(journal_path, text)


def _parse(path: Path, text: str) -> JournalSummary:
    lines = text.split("\n")
    truncated = bool(lines) and lines[-1] != ""
    complete = lines[:-1] if text.endswith("\n") or truncated else lines
    if truncated:
        # The process died while writing this line: the item it names was not journaled.
        logger.warning("%s: ignoring its last line, which was cut off", path)
        complete = lines[:-1]
    records = []
    for number, line in enumerate(complete, start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise JournalError(
                f"{path}, line {number}: not a journal record: {line!r:.80}"
            ) from None
        if not isinstance(record, dict) or "type" not in record:
            raise JournalError(f"{path}, line {number}: not a journal record: {line!r:.80}")
        records.append(record)
    if not records or records[0]["type"] != "header":
        raise JournalError(f"{path} is not a memscope journal: it has no header line")
    header = records[0]
    if header.get("format") != FORMAT:
        raise JournalError(
            f"{path} is a journal of format {header.get('format')!r}; this memscope reads "
            f"format {FORMAT}"
        )
    summary = JournalSummary(path, header.get("job"), truncated_tail=truncated)
    run_started: float | None = None
    run_last: float | None = None
    for record in records[1:]:
        kind = record["type"]
        stamp = record.get("time")
        if kind == "start":
            if run_started is not None and run_last is not None:
                summary.elapsed_seconds += run_last - run_started  # a run that died
            summary.runs += 1
            run_started = run_last = stamp
        elif kind == "end":
            summary.elapsed_seconds += float(record.get("elapsed_seconds", 0.0))
            run_started = run_last = None
        elif kind == "done":
            summary.done.add(record["key"])
            summary.failed.pop(record["key"], None)
            run_last = stamp if stamp is not None else run_last
        elif kind == "failed":
            failure = ItemFailure.from_dict(record)
            if failure.key is not None:
                summary.failed[failure.key] = failure
            run_last = stamp if stamp is not None else run_last
    if run_started is not None and run_last is not None:
        summary.elapsed_seconds += run_last - run_started
    return summary


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "type" in record else None


class _Lock:
    """A lock file beside the journal: one writer at a time, cleaned up when done."""

    def __init__(self, journal: Path) -> None:
        self.path = journal.with_name(journal.name + ".lock")

    def acquire(self) -> None:
        owner = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    raise JournalError(
                        f"{self.path.parent / self.path.name[:-5]} is in use by another run "
                        f"({self._owner() or 'unknown owner'}); if no such run is alive, delete "
                        f"{self.path}"
                    ) from None
                logger.warning("taking over %s: the run that held it is gone", self.path)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as file:
                file.write(owner)
            return
        raise JournalError(f"could not take the lock {self.path}")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def _owner(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def _stale(self) -> bool:
        host, _, pid = self._owner().partition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class Journal:
    """A batch's journal: ``managed_batch(journal=Journal("run.jsonl", ...))``.

    Args:
        path: the file (JSON lines); created on first use.
        job: a name for the job, kept in the header; a journal written under another name
            is refused rather than mixed.
        sync_every: ``os.fsync`` every this many items (1: every item, the safest).
        retry_failed: on a rerun, process again the items the journal records as failed
            (by default they are skipped like finished ones, their failures carried into
            the report).

    One batch at a time uses a journal; it is opened when the batch starts.
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
        self._lock = _Lock(self.path)
        self._file: TextIO | None = None
        # Items finish in many threads; each record must reach the file as one whole line.
        self._write_lock = threading.Lock()
        self._unsynced = 0
        self._started = 0.0
        self.previous: JournalSummary | None = None

    def open(self) -> JournalSummary:
        """Take the lock, read what earlier runs journaled, and start this run's records."""
        self._lock.acquire()
        try:
            previous = self._read_or_create()
            self._file = self.path.open("a", encoding="utf-8")
            self._started = time.time()
            self._write({"type": "start", "time": self._started, "pid": os.getpid()}, sync=True)
        except BaseException:
            self._lock.release()
            raise
        self.previous = previous
        return previous

    def _read_or_create(self) -> JournalSummary:
        if self.path.exists() and self.path.stat().st_size > 0:
            previous = read_journal(self.path)
            if previous.job != self.job:
                raise JournalError(
                    f"{self.path} was written by job {previous.job!r}, not {self.job!r}: "
                    "refusing to mix two jobs' items; pass another journal path, or "
                    "journal_job= as the earlier run did"
                )
            if previous.truncated_tail:
                self._drop_cut_off_line()
            return previous
        header = {"type": "header", "format": FORMAT, "job": self.job, "memscope": __version__}
        with self.path.open("w", encoding="utf-8") as file:
            file.write(json.dumps(header) + "\n")
            file.flush()
            os.fsync(file.fileno())
        return JournalSummary(self.path, self.job)

    def _drop_cut_off_line(self) -> None:
        data = self.path.read_bytes()
        with self.path.open("r+b") as file:
            file.truncate(data.rfind(b"\n") + 1)

    def done(self, key: Key) -> None:
        """Journal that ``key`` finished."""
        self._write({"type": "done", "key": key, "time": time.time()})

    def failed(self, failure: ItemFailure) -> None:
        """Journal that an item failed, and why."""
        self._write({"type": "failed", "time": time.time(), **failure.to_dict()})

    def timeline(self, entry: TimelineEntry) -> None:
        """Stream one timeline entry (not synced on its own: it rides on the items' syncs)."""
        self._write({"type": "timeline", **dataclasses.asdict(entry)}, counts=False)

    def close(self, elapsed_seconds: float) -> None:
        """End this run's records, sync them, and release the lock."""
        try:
            if self._file is not None:
                self._write(
                    {"type": "end", "time": time.time(), "elapsed_seconds": elapsed_seconds},
                    sync=True,
                )
                self._file.close()
                self._file = None
        finally:
            self._lock.release()

    def _write(self, record: dict[str, Any], *, sync: bool = False, counts: bool = True) -> None:
        line = json.dumps(record) + "\n"
        with self._write_lock:
            file = self._file
            if file is None:
                raise JournalError(f"the journal {self.path} is not open")
            file.write(line)
            self._unsynced += int(counts)
            if sync or self._unsynced >= self.sync_every:
                file.flush()
                os.fsync(file.fileno())
                self._unsynced = 0
