"""Batch reports as files: the report as JSON, its timeline as CSV, and back."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.report import BatchReport
from memscope.timeline import TimelineEntry

__all__: list[str] = []

TIMELINE_COLUMNS = ("item", "seconds", "usage", "allocated", "reserved", "gc_ran")

_REPORT_FIELDS = {field.name for field in dataclasses.fields(BatchReport)}
_REQUIRED_REPORT_FIELDS = {
    field.name
    for field in dataclasses.fields(BatchReport)
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
}
_ENTRY_FIELDS = {field.name for field in dataclasses.fields(TimelineEntry)}


def write_json(report: BatchReport, path: str | os.PathLike[str]) -> Path:
    """Write ``report.to_dict()`` to ``path``, indented for people to read."""
    target = Path(path)
    target.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return target


def write_csv(report: BatchReport, path: str | os.PathLike[str]) -> Path:
    """Write the report's timeline to ``path``: a header row, then one row per item."""
    target = Path(path)
    with target.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(TIMELINE_COLUMNS)
        for entry in report.timeline:
            writer.writerow(
                (
                    entry.item,
                    f"{entry.seconds:.6f}",
                    f"{entry.usage:.6f}",
                    "" if entry.allocated is None else entry.allocated,
                    "" if entry.reserved is None else entry.reserved,
                    "true" if entry.gc_ran else "false",
                )
            )
    return target


def read_json(path: str | os.PathLike[str]) -> BatchReport:
    """The report that :func:`write_json` wrote to ``path``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return report_from_dict(data, source=str(path))


def report_from_dict(data: object, *, source: str = "data") -> BatchReport:
    """Rebuild a report from ``BatchReport.to_dict()``; unknown keys are ignored."""
    if not isinstance(data, dict):
        raise InvalidArgumentTypeError(
            f"{source} must hold a JSON object (a batch report), got {type(data).__name__}"
        )
    missing = sorted(_REQUIRED_REPORT_FIELDS - data.keys())
    if missing:
        raise InvalidArgumentError(
            f"{source} is not a batch report: it lacks {', '.join(map(repr, missing))}"
        )
    fields: dict[str, Any] = {name: value for name, value in data.items() if name in _REPORT_FIELDS}
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
    # JSON has no tuples: other sequences (memory_snapshots) come back as lists.
    for name, value in fields.items():
        if isinstance(value, list):
            fields[name] = tuple(value)
    return BatchReport(**fields)
