"""``memscope report JOURNAL``: what a batch journal says, without running anything."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from memscope.exceptions import JournalError

if TYPE_CHECKING:
    from memscope.journal import JournalSummary

__all__ = ["add_report_arguments", "run_report"]


def add_report_arguments(report: argparse.ArgumentParser) -> None:
    """summarise a batch journal: done, failed (with reasons), elapsed, items/s

    Summarise the journal a managed_batch(journal=...) wrote: how many items are done,
    which failed and why, the runs' time and throughput.
    """
    report.add_argument("journal", help="the journal file, such as run.jsonl")


def run_report(arguments: argparse.Namespace) -> int:
    """Print the journal's summary; a journal that cannot be read is one line and status 2.

    What is not a regular file (a device, a FIFO) is refused before reading, and lines are
    read one at a time, each bounded, so no path makes this hang or fill memory.
    """
    # Imported here: the parser is built without torch, which memscope.journal imports.
    from memscope.journal import read_journal

    try:
        summary = read_journal(arguments.journal)
    except JournalError as error:
        sys.stderr.write(f"memscope report: {error}\n")
        return 2
    if arguments.json:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_text(summary))
    return 0


def _text(summary: JournalSummary) -> str:
    runs = f"{summary.runs} run" + ("" if summary.runs == 1 else "s")
    job = "" if summary.job is None else f" (job {summary.job})"
    lines = [
        f"{summary.path}{job}: {summary.items_done} done, {summary.items_failed} failed, "
        f"{runs}, {summary.elapsed_seconds:.1f} s, {summary.items_per_second:.2f} items/s"
    ]
    for failure in summary.failed.values():
        lines.append(f"  failed {failure.key!r}: {failure.error_type}: {failure.message}")
        lines.extend(f"    {note}" for note in failure.notes)
    if summary.truncated_tail:
        lines.append("  (the last line was cut off by a crash; its item will run again)")
    return "\n".join(lines) + "\n"
