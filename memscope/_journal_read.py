"""Reading a journal file safely: regular files only, line by line, each line bounded.

A journal is read before anything runs and by ``memscope report``, on whatever path it was
given. Refusing what is not a regular file before reading (``/dev/zero``, ``/dev/urandom``, a
FIFO, which would never end or block forever) and bounding each line keep that read from
hanging or filling memory.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from memscope.exceptions import JournalError
from memscope.reports import ItemFailure
from memscope.typing import ItemKey

logger = logging.getLogger("memscope")

FORMAT = 2
"""The journal format this version writes; it reads this one and format 1."""

__all__: list[str] = []

MAX_LINE_BYTES = 1 << 20
"""The longest line a journal holds (its newline included); the writer keeps within it."""

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)


def open_regular(path: Path, flags: int) -> int:
    """A descriptor of the regular file at ``path``, opened with ``flags``; anything else is
    a :class:`JournalError` naming the path. Opening never blocks (a FIFO would)."""
    try:
        descriptor = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise JournalError(f"there is no journal at {path}") from None
    except OSError as error:
        raise JournalError(f"the journal {path} cannot be opened: {error}") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        _refuse(path, mode)
    return descriptor


def refuse_special(path: Path) -> None:
    """A :class:`JournalError` when ``path`` names something other than a regular file
    (checked before a lock file is made beside it: ``/dev/zero.lock`` would be litter)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the writer creates it; other problems show when it is opened
    if not stat.S_ISREG(mode):
        _refuse(path, mode)


def _refuse(path: Path, mode: int) -> NoReturn:
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    raise JournalError(f"{path} is not a regular file (it is a {kind}); a journal must be one")


def lines(path: Path, descriptor: int) -> Iterator[tuple[int, bytes]]:
    """The file's lines from its start, numbered from 1, each with its newline (the last one
    may lack it: cut off by a crash); a line over :data:`MAX_LINE_BYTES` is an error."""
    with os.fdopen(os.dup(descriptor), "rb") as file:
        file.seek(0)
        number = 0
        while line := file.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES:
                raise JournalError(
                    f"{path}, line {number}: not a journal record: it is longer than "
                    f"{MAX_LINE_BYTES} bytes"
                )
            yield number, line


def parse_record(path: Path, number: int, line: bytes) -> dict[str, Any]:
    """The record on ``line`` (without its newline), or a :class:`JournalError` naming it."""
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise JournalError(f"{path}, line {number}: not a journal record: {line!r:.80}")
    if value["type"] in ("done", "failed") and (
        isinstance(value.get("key"), bool) or not isinstance(value.get("key"), (str, int))
    ):
        raise JournalError(f"{path}, line {number}: a {value['type']} record without a key")
    return value


@dataclass
class JournalSummary:
    """What a journal says: the items finished and failed, and the runs that wrote it."""

    path: Path
    job: str | None
    done: set[ItemKey] = field(default_factory=set)
    """The keys of the finished items (each once: see ``done_repeats``)."""
    failed: dict[ItemKey, ItemFailure] = field(default_factory=dict)
    """The failed items by key, each with its latest failure (see ``failed_repeats``)."""
    runs: int = 0
    """How many runs wrote to it (each run's first line is a "start" record)."""
    elapsed_seconds: float = 0.0
    """The runs' time, from their "end" records and, for a run that died, its last record."""
    truncated_tail: bool = False
    """Whether the last line was cut off (a process killed while writing it)."""
    done_repeats: dict[ItemKey, int] = field(default_factory=dict)
    """For a key met several times in a run: how many finished occurrences beyond the first."""
    failed_repeats: dict[ItemKey, int] = field(default_factory=dict)
    """For a key met several times in a run: how many failed occurrences beyond the first."""
    legacy: bool = field(default=False, repr=False)
    """Written as format 1, which knew no repeated keys: a finished item clears its failure."""

    @property
    def items_done(self) -> int:
        """How many items finished, each occurrence of a repeated key counted."""
        return len(self.done) + sum(self.done_repeats.values())

    @property
    def items_failed(self) -> int:
        """How many items failed and were not finished since, each occurrence counted."""
        return len(self.failed) + sum(self.failed_repeats.values())

    @property
    def items_per_second(self) -> float:
        """Finished items per second of the runs' time."""
        return self.items_done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-serialisable dict."""
        return {
            "path": str(self.path),
            "job": self.job,
            "done": self.items_done,
            "failed": self.items_failed,
            "failures": [failure.to_dict() for failure in self.failed.values()],
            "runs": self.runs,
            "elapsed_seconds": self.elapsed_seconds,
            "items_per_second": self.items_per_second,
            "truncated_tail": self.truncated_tail,
        }

    def _finished(self, key: ItemKey, *, retry: bool) -> None:
        if key in self.done:
            self.done_repeats[key] = self.done_repeats.get(key, 0) + 1
        else:
            self.done.add(key)
        if (retry or self.legacy) and key in self.failed:
            take_one(self.failed, self.failed_repeats, key)

    def _failed(self, failure: ItemFailure, key: ItemKey, *, retry: bool) -> None:
        if key in self.failed and not (retry or self.legacy):
            self.failed_repeats[key] = self.failed_repeats.get(key, 0) + 1
        self.failed[key] = failure  # the latest reason


def take_one(
    first: set[ItemKey] | dict[ItemKey, Any], repeats: dict[ItemKey, int], key: ItemKey
) -> None:
    """Remove one occurrence of ``key``: from its repeat count, else from ``first``."""
    extra = repeats.get(key, 0)
    if extra > 1:
        repeats[key] = extra - 1
    elif extra == 1:
        del repeats[key]
    elif isinstance(first, set):
        first.discard(key)
    else:
        del first[key]


def parse(path: Path, descriptor: int) -> tuple[JournalSummary | None, int]:
    """The summary (``None`` for an empty file) and the length of its complete lines."""
    summary: JournalSummary | None = None
    complete_bytes = 0
    run_started: float | None = None
    run_last: float | None = None
    for number, line in lines(path, descriptor):
        if not line.endswith(b"\n"):
            # The process died while writing this line: the item it names was not journaled.
            logger.warning("%s: ignoring its last line, which was cut off", path)
            if summary is None:
                logger.warning("%s: its only line is a header cut off by a crash", path)
                return JournalSummary(path, None, truncated_tail=True), 0
            summary.truncated_tail = True
            break
        complete_bytes += len(line)
        if not line.strip():
            continue
        record = parse_record(path, number, line[:-1])
        if summary is None:
            summary = header(path, number, record)
            continue
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
        elif kind in ("done", "failed"):
            retry = record.get("retry") is True
            if kind == "done":
                summary._finished(record["key"], retry=retry)
            else:
                summary._failed(ItemFailure.from_dict(record), record["key"], retry=retry)
            run_last = stamp if stamp is not None else run_last
    if summary is not None and run_started is not None and run_last is not None:
        summary.elapsed_seconds += run_last - run_started
    return summary, complete_bytes


def header(path: Path, number: int, record: dict[str, Any]) -> JournalSummary:
    if record["type"] != "header":
        raise JournalError(
            f"{path} is not a memscope journal: line {number} is a {record['type']!r} record, "
            "not its header"
        )
    if record.get("format") not in (1, FORMAT):
        raise JournalError(
            f"{path} is a journal of format {record.get('format')!r}; this memscope reads "
            f"formats 1 and {FORMAT}"
        )
    return JournalSummary(path, record.get("job"), legacy=record.get("format") == 1)
