"""A batch's report, assembled: the core's figures, then each watcher's part.

The core knows only its own figures (the ledger's counts, time, usage, the device); every
other field of :class:`~memscope.reports.BatchReport` comes from the watcher that knows it,
so a feature adds its fields without an edit here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from memscope._notes import add_note
from memscope.exceptions import MemscopeError
from memscope.reports import BatchReport, ItemFailure, with_process_rank
from memscope.watch import WatchedBatch, defined_hooks

if TYPE_CHECKING:
    from memscope._ledger import Ledger

__all__: list[str] = []

logger = logging.getLogger("memscope")


_REPORT_FIELDS = frozenset(BatchReport.__dataclass_fields__)


def assemble_report(
    batch: WatchedBatch,
    ledger: Ledger,
    failed_items: tuple[ItemFailure, ...],
    ended_by: str | None,
    *,
    ending: BaseException | None = None,
    failures: list[Exception] | None = None,
) -> BatchReport:
    """The batch's report now: one reading of the device, the ledger, the watchers' parts.

    With ``failures`` (the report the batch ends with), a watcher whose part fails adds
    nothing and its failure is appended there, and noted on ``ending``, the exception ending
    the batch, which it never replaces. Without (a report so far), the failure is raised.
    """
    manager = batch.manager
    end = batch.memory_now(fresh=True)  # shared with the watchers' parts (one reading)
    ledger.peaks(end.peak_allocated, end.peak_reserved)
    figures: dict[str, Any] = {
        "device": str(manager.resolved_device),
        **ledger.figures(),
        "elapsed_seconds": time.perf_counter() - batch.started_at,
        "usage_start": batch.start_figures.usage,
        "usage_end": end.usage,
        "every": batch.every,
        "ended_by": ended_by,
        "budget": end.budget,
        "memory_threshold": manager.memory_threshold,
        "failed_items": failed_items,
    }
    extras: dict[str, Any] = {}
    added_by: dict[str, object] = {}
    for watcher in batch.watchers:
        if "report_part" not in defined_hooks(watcher):
            continue
        try:
            part = dict(watcher.report_part(batch, figures))
            unknown = set(part) - _REPORT_FIELDS
            if unknown:
                raise MemscopeError(
                    f"the watcher {watcher!r} contributes {sorted(unknown)} to the report, "
                    f'which has no such fields (a watcher\'s own figures go under "extras")'
                )
            own = _checked_extras(part.pop("extras", {}), watcher, added_by)
        except Exception as failure:
            if failures is None:
                raise
            failures.append(failure)
            tell_failure(ending, failure, f"{watcher!r}, making its part of the report,")
            continue
        added_by.update(dict.fromkeys(own, watcher))
        extras.update(own)
        figures.update(part)
    return with_process_rank(BatchReport(**figures, extras=extras))


def _checked_extras(part: object, watcher: object, added_by: dict[str, object]) -> dict[str, Any]:
    """One watcher's extras, copied; a name another watcher gave, or a value JSON cannot
    hold, is an error naming the watcher (nothing is overwritten or lost on the way to a
    file)."""
    if not isinstance(part, Mapping):
        raise MemscopeError(
            f'the watcher {watcher!r} contributes "extras" {part!r:.80}, not a mapping of names '
            "to values"
        )
    checked: dict[str, Any] = {}
    for name, value in part.items():
        if not isinstance(name, str):
            raise MemscopeError(f"the watcher {watcher!r} names an extra {name!r}, not a str")
        if name in added_by:
            raise MemscopeError(
                f"the watchers {added_by[name]!r} and {watcher!r} both contribute the extra "
                f"{name!r}"
            )
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise MemscopeError(
                f"the watcher {watcher!r} contributes the extra {name!r} = {value!r:.80}, "
                f"which JSON cannot hold: {error}"
            ) from None
        checked[name] = copy.deepcopy(value)  # a watcher's live list must not change the report
    return checked


def tell_failure(ending: BaseException | None, failure: Exception, who: str) -> None:
    """Say, without raising, that ``who`` failed while the batch ended with ``ending``:
    logged, and attached to that exception as a note (nothing to say without one: the
    failure is raised once the batch has ended)."""
    if ending is None:
        return
    logger.warning("%s failed while the batch ended", who, exc_info=failure)
    with contextlib.suppress(Exception):
        add_note(ending, f"memscope: {who} failed while the batch ended: {failure!r}")


def finish_watchers(batch: WatchedBatch, error: BaseException | None) -> None:
    """Let every watcher release what it holds, in reverse order of starting.

    A watcher that fails here never replaces the user's exception: the failure is logged
    and attached to ``error`` as a note. Without a user exception the first failure is
    raised once every watcher has finished.
    """
    first_failure: Exception | None = None
    for watcher in reversed(batch.watchers):
        if "finished" not in defined_hooks(watcher):
            continue
        try:
            watcher.finished(batch, error)
        except Exception as failure:
            first_failure = first_failure or failure
            tell_failure(error, failure, repr(watcher))
    if error is None and first_failure is not None:
        raise first_failure
