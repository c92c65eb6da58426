"""How a job report shows its rows: the plain-text table and the CSV, written once.

A job report (:class:`~memscope.reports.CombinedReport`, and the Ray job report that extends
it) declares its columns as :class:`Column` values; the rows say who they are (their label,
host, device text, status and CSV identity). This module turns both into text or a file, so a
torch.distributed job and a Ray job share one table layout and one CSV layout.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from memscope.reports._batch import BatchReport

__all__: list[str] = []


class JobRow(Protocol):
    """What a job report's row says about itself (a rank's, an actor's)."""

    @property
    def report(self) -> BatchReport | None: ...

    @property
    def host(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def device_text(self) -> str: ...

    @property
    def status(self) -> str: ...


def known(value: Any) -> bool:
    """A figure someone could tell: the default test of whether a column is shown."""
    return value is not None


@dataclass(frozen=True, slots=True)
class Column:
    """One figure column of a job table."""

    header: str
    value: Callable[[BatchReport], Any]
    """The row's figure, from its report."""
    text: Callable[[Any], str]
    """How a figure (a row's, or the total) is written in the table."""
    total: str | None = None
    """The ``totals`` key the total row shows; ``None``: the total row leaves it empty."""
    shown_if: Callable[[Any], bool] | None = None
    """The column is left out unless some row's figure passes this; ``None``: always shown.
    (A peak the CPU cannot tell, a figure older reports lack, is left out, not n/a.)"""


def count_text(value: Any) -> str:
    """A count, or n/a for one nobody could tell."""
    return "n/a" if value is None else str(value)


def decimal_text(places: int) -> Callable[[Any], str]:
    """A writer of numbers with ``places`` decimals (n/a for none)."""

    def format_decimal(value: Any) -> str:
        return "n/a" if value is None else f"{value:.{places}f}"

    return format_decimal


def render_table(
    title: str,
    label_header: str,
    rows: Sequence[JobRow],
    columns: Sequence[Column],
    totals: Mapping[str, Any],
    total_status: str,
) -> str:
    """The table: a title, the header, one line per row, then the totals line."""
    reports = [row.report for row in rows if row.report is not None]
    shown = [
        column
        for column in columns
        if column.shown_if is None
        or any(column.shown_if(column.value(report)) for report in reports)
    ]
    headers = [label_header, "host", "device", *(column.header for column in shown), "status"]
    lines_cells = [headers]
    for row in rows:
        report = row.report
        figures = ["" if report is None else column.text(column.value(report)) for column in shown]
        lines_cells.append([row.label, row.host, row.device_text, *figures, row.status])
    total_figures = [
        "" if column.total is None else column.text(totals.get(column.total)) for column in shown
    ]
    lines_cells.append(["all", "", "", *total_figures, total_status])
    # Numbers read best right-aligned; the label, host, device and status are text.
    right_aligned = range(3, 3 + len(shown))
    widths = [max(len(cells[index]) for cells in lines_cells) for index in range(len(headers))]
    lines = [title]
    for cells in lines_cells:
        padded = [
            cell.rjust(width) if index in right_aligned else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def write_csv(
    path: str | os.PathLike[str],
    identity_columns: Sequence[str],
    figure_columns: Sequence[str],
    rows: Sequence[JobRow],
    totals: Mapping[str, Any],
    total_identity: Mapping[str, Any],
) -> Path:
    """One line per row (its identity, then its report's figures), then the totals line."""
    target = Path(path)
    with target.open("w", newline="", encoding="utf-8", errors="surrogateescape") as file:
        writer = csv.writer(file)
        writer.writerow([*identity_columns, *figure_columns])
        for row in rows:
            report = row.report
            writer.writerow(
                [
                    # The identity columns are the row's attributes of those names.
                    *(_cell(getattr(row, name)) for name in identity_columns),
                    *(
                        _cell(None if report is None else getattr(report, name, None))
                        for name in figure_columns
                    ),
                ]
            )
        writer.writerow(
            [
                *(_cell(total_identity.get(name)) for name in identity_columns),
                *(_cell(totals.get(name)) for name in figure_columns),
            ]
        )
    return target


def _cell(value: Any) -> Any:
    # An empty cell is a figure nobody could tell.
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return ";".join(map(str, value))
    return value
