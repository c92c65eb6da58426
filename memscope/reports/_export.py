"""Batch reports as files: the report as JSON, its timeline as CSV, and back."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports._item_failure import ItemFailure
from memscope.reports._leak import FIT_WINDOW, LeakFinding, fitted_line
from memscope.reports._timeline import TimelineEntry

__all__: list[str] = []

# host_resident, fitted_memory and usage_of came later than the others: last, so that readers
# that index the columns by position still find the older ones where they were.
TIMELINE_COLUMNS = (
    "item",
    "seconds",
    "usage",
    "allocated",
    "reserved",
    "gc_ran",
    "host_resident",
    "fitted_memory",
    "usage_of",
)

Report = TypeVar("Report")

_ENTRY_FIELDS = {field.name for field in dataclasses.fields(TimelineEntry)}


_BYTES = "bytes"
_SECONDS = "seconds"
_USAGE = (
    "fraction (0 to 1) of what usage_of names in use: device memory, the host's limit "
    "(resident memory over it, on the CPU), the budget, or the largest of those shares"
)

REPORT_UNITS: dict[str, Any] = {
    "elapsed_seconds": _SECONDS,
    "items_per_second": "items per second",
    "usage_start": _USAGE,
    "usage_end": _USAGE,
    "memory_threshold": "fraction (0 to 1), compared with usage",
    "peak_allocated": _BYTES,
    "peak_reserved": _BYTES,
    "gc_seconds": _SECONDS,
    "host_resident_start": _BYTES,
    "host_resident_end": _BYTES,
    "host_resident_peak": _BYTES,
    "host_limit": _BYTES,
    "budget": _BYTES,
    "every": "items",
    "largest_oom_request": _BYTES,
    "cached_but_free_end": _BYTES,
    "inactive_split_end": _BYTES,
    "memory_growth_per_item": (
        "bytes per item (device bytes allocated, or the process's resident bytes on the CPU)"
    ),
    "timeline": {
        "seconds": "seconds since the batch started",
        "usage": _USAGE,
        "allocated": _BYTES,
        "reserved": _BYTES,
        "host_resident": _BYTES,
    },
}
"""What :func:`write_json` says the report's figures are measured in, under ``"units"``.

The field names stay as they were (files written before the map read back unchanged); the
map says what each number means. Counts (items, calls, clears, runs) are plain numbers.
"""


def write_json(
    data: dict[str, Any], path: str | os.PathLike[str], units: dict[str, Any] | None = None
) -> Path:
    """Write a report's dict to ``path``, indented for people to read.

    ``units`` (such as :data:`REPORT_UNITS`) goes under the key ``"units"``, which readers
    of the report ignore.
    """
    target = Path(path)
    if units is not None:
        data = {**data, "units": units}
    target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target


def write_csv(
    timeline: Iterable[TimelineEntry],
    path: str | os.PathLike[str],
    growth_per_item: float | None = None,
    usage_of: str | None = None,
) -> Path:
    """Write a report's timeline to ``path``: a header row, then one row per item.

    ``fitted_memory`` holds the fitted line of ``growth_per_item`` over the last items,
    rounded to bytes, and is empty elsewhere; ``usage_of`` (what ``usage`` is a share of)
    is on every row. The timeline may be streamed from a journal:
    only those last items are held back until the end.
    """
    target = Path(path)
    last_entries: deque[TimelineEntry] = deque()
    with target.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(TIMELINE_COLUMNS)
        for entry in timeline:
            last_entries.append(entry)
            if len(last_entries) > FIT_WINDOW:
                writer.writerow(_csv_row(last_entries.popleft(), None, usage_of))
        fitted = fitted_line(tuple(last_entries), growth_per_item)
        for entry in last_entries:
            writer.writerow(_csv_row(entry, fitted.get(entry.item), usage_of))
    return target


def _csv_row(
    entry: TimelineEntry, fitted: float | None, usage_of: str | None
) -> tuple[object, ...]:
    return (
        entry.item,
        f"{entry.seconds:.6f}",
        f"{entry.usage:.6f}",
        "" if entry.allocated is None else entry.allocated,
        "" if entry.reserved is None else entry.reserved,
        "true" if entry.gc_ran else "false",
        "" if entry.host_resident is None else entry.host_resident,
        "" if fitted is None else round(fitted),
        usage_of or "",
    )


def write_failures_csv(failures: Iterable[ItemFailure], path: str | os.PathLike[str]) -> Path:
    """Write failed items to ``path``: a header row, then one row per item.

    The file is UTF-8, except that a key or message made from a non-UTF-8 file name keeps
    that name's own bytes (Python's ``surrogateescape``), so it reads back as the same string,
    as through JSON: ``open(path, newline="", encoding="utf-8", errors="surrogateescape")``.
    """
    target = Path(path)
    with target.open("w", newline="", encoding="utf-8", errors=_CSV_ERRORS) as file:
        writer = csv.writer(file)
        writer.writerow(("key", "error_type", "message", "notes"))
        for failure in failures:
            key = "" if failure.key is None else failure.key
            writer.writerow((key, failure.error_type, failure.message, "\n".join(failure.notes)))
    return target


_CSV_ERRORS = "memscope.surrogateescape"


def _escape_surrogates(error: UnicodeError) -> tuple[bytes, int]:
    """``surrogateescape`` for the CSV: a lone surrogate that stands for a byte becomes that
    byte; any other (which no file name makes) is written as its ``\\uXXXX`` escape."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    written = bytearray()
    for character in error.object[error.start : error.end]:
        code = ord(character)
        if 0xDC80 <= code <= 0xDCFF:
            written.append(code - 0xDC00)
        else:
            written += f"\\u{code:04x}".encode("ascii")
    return bytes(written), error.end


codecs.register_error(_CSV_ERRORS, _escape_surrogates)


def read_streamed_timeline(path: str | os.PathLike[str]) -> Iterator[TimelineEntry]:
    """The timeline entries a journaled batch streamed into ``path``, one at a time."""
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if '"timeline"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut off by a crash
            if record.get("type") == "timeline":
                yield TimelineEntry(
                    **{name: value for name, value in record.items() if name in _ENTRY_FIELDS}
                )


def read_json(report_type: type[Report], path: str | os.PathLike[str]) -> Report:
    """The report of ``report_type`` that :func:`write_json` wrote to ``path``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return report_from_dict(report_type, data, source=str(path))


def report_from_dict(report_type: type[Report], data: object, *, source: str = "data") -> Report:
    """Rebuild a report from its ``to_dict()``; unknown keys are ignored."""
    report_fields = dataclasses.fields(report_type)  # type: ignore[arg-type]
    known = {field.name for field in report_fields}
    required = {
        field.name
        for field in report_fields
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    }
    if not isinstance(data, dict):
        raise InvalidArgumentTypeError(
            f"{source} must hold a JSON object (a batch report), got {type(data).__name__}"
        )
    missing = sorted(required - data.keys())
    if missing:
        raise InvalidArgumentError(
            f"{source} is not a batch report: it lacks {', '.join(map(repr, missing))}"
        )
    fields: dict[str, Any] = {name: value for name, value in data.items() if name in known}
    timeline = fields.get("timeline", ())
    if not isinstance(timeline, (list, tuple)) or not all(
        isinstance(entry, dict) for entry in timeline
    ):
        raise InvalidArgumentTypeError(
            f"{source}: timeline must be a list of objects, got {timeline!r:.80}"
        )
    fields["timeline"] = tuple(
        TimelineEntry(**{name: value for name, value in entry.items() if name in _ENTRY_FIELDS})
        for entry in timeline
    )
    fields["failed_items"] = tuple(
        ItemFailure.from_dict(failure) for failure in fields.get("failed_items", ())
    )
    leak = fields.get("leak")
    if leak is not None and not isinstance(leak, LeakFinding):
        fields["leak"] = LeakFinding.from_dict(leak)
    extras = fields.get("extras", {})
    if not isinstance(extras, dict):
        raise InvalidArgumentTypeError(
            f"{source}: extras must be an object of names and values, got {extras!r:.80}"
        )
    # JSON has no tuples: other sequences (memory_snapshots) come back as lists.
    for name, value in fields.items():
        if isinstance(value, list):
            fields[name] = tuple(value)
    return report_type(**fields)
