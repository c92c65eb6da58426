"""What a batch did: one process's :class:`BatchReport`, and every process's combined.

A :class:`BatchReport` is what ``managed_batch`` leaves in ``batch.report``; its
:class:`TimelineEntry` rows are the memory after each item. ``to_json``, ``to_csv`` and
``plot`` write it out, ``BatchReport.from_json`` reads it back. :class:`CombinedReport` holds
the reports of several processes (the ranks of a torch.distributed job) with job-wide totals;
:mod:`memscope.distributed` gathers one. How a figure combines across processes (summed,
the largest rank's, or not at all) is declared on its :class:`BatchReport` field, as
``metadata={"combine": "sum"}`` or ``{"combine": "max"}``. Memory that crept up during a
batch is named in ``report.leak``, a :class:`LeakFinding` with its :class:`LeakSuspect` groups
(see :mod:`memscope.leaks`).
"""

from memscope.reports._batch import BatchReport
from memscope.reports._combined import (
    CombinedReport,
    RankReport,
    process_rank,
    with_process_rank,
)
from memscope.reports._item_failure import ItemFailure
from memscope.reports._leak import LeakFinding, LeakSuspect
from memscope.reports._timeline import Timeline, TimelineEntry

__all__ = [
    "BatchReport",
    "CombinedReport",
    "ItemFailure",
    "LeakFinding",
    "LeakSuspect",
    "RankReport",
    "Timeline",
    "TimelineEntry",
    "process_rank",
    "with_process_rank",
]
