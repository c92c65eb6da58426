"""Batch reports across the processes of a torch.distributed job, such as one run by torchrun.

Each process (rank) runs its own ``managed_batch`` and gets its own :class:`BatchReport`, which
names the rank. :func:`gathered_reports` and :func:`gather_reports` bring every rank's report
together into one :class:`CombinedReport`: a row per rank and totals for the whole job.

Gathering is a collective call: every rank has to take part, and a rank that never does would
leave the others waiting. Two rules keep that from becoming a hang:

- a rank whose work raised still takes part, with a record of its failure instead of a report
  (:func:`gathered_reports` does this for you, then lets the exception go on);
- every wait is bounded by ``timeout``; a rank that does not arrive in time makes the others
  raise :class:`~memscope.ReportGatherError`, which names the missing ranks where torch can tell.

The gathering runs on a process group of its own, made with the gloo backend, so it works the
same whatever backend the job trains with (NCCL included), moves only a few hundred bytes per
rank through host memory, and has its own timeout.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import socket
from datetime import timedelta
from types import TracebackType

import torch
import torch.distributed as dist

from memscope.batch import ManagedBatch
from memscope.exceptions import (
    BatchStateError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ReportGatherError,
)
from memscope.reports import BatchReport, CombinedReport, RankReport
from memscope.reports._combined import distributed_ready, process_rank

__all__ = [
    "DEFAULT_GATHER_TIMEOUT",
    "MAX_GATHER_TIMEOUT",
    "MIN_GATHER_TIMEOUT",
    "ReportGathering",
    "gather_reports",
    "gathered_reports",
]

logger = logging.getLogger("memscope")

MIN_GATHER_TIMEOUT = timedelta(milliseconds=1)
"""The shortest timeout a gathering takes: torch counts its timeouts in whole milliseconds, and
rounds a shorter one down to zero, which it reads as *no timeout*."""

MAX_GATHER_TIMEOUT = timedelta(days=1)
"""The longest timeout a gathering takes: a rank that has not come after a day is hung, and the
others should fail rather than hold the job's machines any longer."""

DEFAULT_GATHER_TIMEOUT = timedelta(minutes=30)
"""How long a gathering waits for the other ranks: torch's own default for collectives.

The wait includes the time the fastest rank spends waiting for the slowest to finish its share
of the batch, so it must be longer than the ranks' difference in running time.
"""

# Rank 0's monitored_barrier error lists the ranks that did not arrive ("Ranks 1, 3 failed to
# pass monitoredBarrier"); other ranks only learn that rank 0 did not answer.
_MISSING_RANKS_PATTERN = re.compile(r"Ranks? ([\d,\s]+?) failed to pass monitoredBarrier")


# Gathering --------------------------------------------------------------------------------


def _check_timeout(timeout: object) -> timedelta:
    if isinstance(timeout, bool) or not isinstance(timeout, (timedelta, numbers.Real)):
        raise InvalidArgumentTypeError(
            f"timeout must be a datetime.timedelta or a number of seconds, got "
            f"{_describe(timeout)} of type {type(timeout).__name__}"
        )
    if isinstance(timeout, timedelta):
        if MIN_GATHER_TIMEOUT <= timeout <= MAX_GATHER_TIMEOUT:
            return timeout
        raise _timeout_out_of_range(timeout)
    try:
        seconds = float(timeout)
    except (OverflowError, ValueError) as error:
        # An int too large for a float, or a Real type whose float() refuses the value.
        raise _timeout_out_of_range(timeout) from error
    # Compared as seconds first: timedelta(seconds=...) raises OverflowError for huge values
    # and cannot hold NaN or infinity at all.
    if not (
        math.isfinite(seconds)
        and MIN_GATHER_TIMEOUT.total_seconds() <= seconds <= MAX_GATHER_TIMEOUT.total_seconds()
    ):
        raise _timeout_out_of_range(timeout)
    return timedelta(seconds=seconds)


def _timeout_out_of_range(timeout: object) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"timeout must be from {_seconds(MIN_GATHER_TIMEOUT)} to {_seconds(MAX_GATHER_TIMEOUT)} "
        f"(1 ms to 1 day), got {_describe(timeout)}: below 1 ms torch would round it to no "
        "timeout at all, and a longer wait is no longer a bound on a hang"
    )


def _describe(value: object) -> str:
    """``repr(value)``, or a stand-in when the object's own ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object with a failing __repr__>"


def _exception_text(error: BaseException) -> str:
    """``"Type: message"`` for a rank's record, whatever the exception's ``__str__`` does."""
    name = type(error).__name__
    try:
        message = str(error)
    except Exception:
        # The rank's failure must still be recorded; its message is lost, not the gathering.
        return f"{name}: <unprintable {name}>"
    return f"{name}: {message}" if message else name


def _check_group(group: object) -> dist.ProcessGroup | None:
    if group is None:
        return None
    if not isinstance(group, dist.ProcessGroup):
        raise InvalidArgumentTypeError(
            f"group must be a torch.distributed ProcessGroup or None, got {_describe(group)}"
        )
    return group


def _own_record(report: BatchReport | None, error: BaseException | str | None) -> RankReport:
    if report is not None and not isinstance(report, BatchReport):
        raise InvalidArgumentTypeError(
            f"report must be a BatchReport or None, got {_describe(report)}"
        )
    if isinstance(error, BaseException):
        error = _exception_text(error)
    elif error is not None and not isinstance(error, str):
        raise InvalidArgumentTypeError(
            f"error must be an exception, a str or None, got {_describe(error)} of type "
            f"{type(error).__name__}"
        )
    rank, _ = process_rank()
    return RankReport(
        rank=0 if rank is None else rank, host=socket.gethostname(), report=report, error=error
    )


def _make_gloo_group(timeout: timedelta) -> dist.ProcessGroup:
    if not dist.is_gloo_available():
        raise ReportGatherError(
            "gathering reports needs torch.distributed's gloo backend, which this torch build lacks"
        )
    try:
        group = dist.new_group(backend="gloo", timeout=timeout)
    except RuntimeError as error:
        raise ReportGatherError(
            "could not make the process group that gathers reports (did every rank get to "
            f"gather_reports or gathered_reports within {_seconds(timeout)}?): {error}"
        ) from error
    if not isinstance(group, dist.ProcessGroup):
        # new_group hands non-members a placeholder; every rank is a member of this group.
        raise ReportGatherError(f"torch.distributed.new_group returned {group!r}")
    return group


def _release_group(group: dist.ProcessGroup) -> None:
    try:
        dist.destroy_process_group(group)
    except Exception:
        logger.debug("could not destroy the report-gathering process group", exc_info=True)


def _seconds(timeout: timedelta) -> str:
    return f"{timeout.total_seconds():g} s"


def _missing_ranks(error: BaseException, group: dist.ProcessGroup) -> tuple[int, ...] | None:
    match = _MISSING_RANKS_PATTERN.search(str(error))
    if match is None:
        return None
    group_ranks = [int(rank) for rank in re.findall(r"\d+", match.group(1))]
    try:
        return tuple(dist.get_global_rank(group, rank) for rank in group_ranks)
    except (RuntimeError, ValueError):
        return tuple(group_ranks)


def _wait_for_every_rank(group: dist.ProcessGroup, timeout: timedelta) -> None:
    try:
        dist.monitored_barrier(group, timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:
        missing = _missing_ranks(error, group)
        if missing is None:
            what = "rank 0 did not confirm that every rank arrived"
        else:
            what = f"rank(s) {', '.join(map(str, missing))} did not arrive"
        raise ReportGatherError(
            f"gathering reports failed: {what} within {_seconds(timeout)} ({error})",
            missing_ranks=missing,
        ) from error


def _all_gather_bytes(payload: bytes, group: dist.ProcessGroup) -> list[bytes]:
    # all_gather_object would do, but it needs numpy to decode and, on NCCL, the right current
    # device; plain uint8 tensors on the CPU need neither.
    world_size = dist.get_world_size(group)
    size = torch.tensor([len(payload)], dtype=torch.int64)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(rank_size.item()) for rank_size in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[: len(payload)] = torch.tensor(list(payload), dtype=torch.uint8)
    buffers = [torch.empty(max(lengths), dtype=torch.uint8) for _ in range(world_size)]
    dist.all_gather(buffers, padded, group=group)
    return [
        bytes(buffer[:length].tolist()) for buffer, length in zip(buffers, lengths, strict=True)
    ]


def _gather_on(group: dist.ProcessGroup, record: RankReport, timeout: timedelta) -> CombinedReport:
    _wait_for_every_rank(group, timeout)
    try:
        payloads = _all_gather_bytes(json.dumps(record.to_dict()).encode(), group)
    except RuntimeError as error:
        raise ReportGatherError(
            f"gathering reports failed after every rank arrived: {error}"
        ) from error
    entries = [RankReport.from_dict(json.loads(payload)) for payload in payloads]
    combined = CombinedReport(tuple(sorted(entries, key=lambda entry: entry.rank)))
    if combined.failed_ranks and record.rank == 0:
        failures = [f"rank {entry.rank}: {entry.error}" for entry in combined.ranks if entry.failed]
        logger.warning("%d rank(s) failed: %s", len(failures), "; ".join(failures))
    return combined


def gather_reports(
    report: BatchReport | None,
    *,
    error: BaseException | str | None = None,
    group: dist.ProcessGroup | None = None,
    timeout: timedelta | float = DEFAULT_GATHER_TIMEOUT,
) -> CombinedReport:
    """Every rank's report, combined; a collective call that every rank must make.

    Every rank gets the same :class:`CombinedReport` back. Outside a distributed job it
    holds this process's report alone, so one script serves both cases.

    A rank whose work failed should still call it, with ``error`` set (and its report, or
    ``None``); :func:`gathered_reports` does that for you.

    Args:
        report: this rank's batch report, or ``None`` if it has none.
        error: what this rank's work raised, or ``None``.
        group: a process group with the gloo backend to gather on. Without it, a gloo group of
            every rank is made for this call (itself a collective) and destroyed after it.
        timeout: how long to wait for the other ranks, a ``timedelta`` or a real number of
            seconds, from :data:`MIN_GATHER_TIMEOUT` (1 ms) to :data:`MAX_GATHER_TIMEOUT`
            (1 day).

    Raises:
        InvalidArgumentTypeError: ``timeout``, ``group``, ``report`` or ``error`` has the
            wrong type (a ``bool`` or a string is not a timeout).
        InvalidArgumentError: ``timeout`` is outside its range, or not finite.
        ReportGatherError: a rank did not arrive within ``timeout`` or the gathering failed;
            ``missing_ranks`` names the absent ranks where torch tells which.
    """
    record = _own_record(report, error)
    wait = _check_timeout(timeout)
    given_group = _check_group(group)
    if not distributed_ready():
        return CombinedReport((record,))
    if given_group is not None:
        _require_gloo(given_group)
        return _gather_on(given_group, record, wait)
    own_group = _make_gloo_group(wait)
    try:
        return _gather_on(own_group, record, wait)
    finally:
        _release_group(own_group)


def _require_gloo(group: dist.ProcessGroup) -> None:
    backend = dist.get_backend(group)
    if backend != "gloo":
        raise InvalidArgumentError(
            f"group must use the gloo backend (it waits with monitored_barrier), got a "
            f"{backend!r} group; make one with torch.distributed.new_group(backend='gloo')"
        )


class ReportGathering:
    """Gathers the ranks' reports when its ``with`` block ends; made by :func:`gathered_reports`.

    After the block, ``combined`` holds the :class:`CombinedReport` on every rank (``None``
    only where the gathering itself failed while the block's own exception went on).
    """

    def __init__(
        self,
        batch: ManagedBatch | None,
        *,
        group: dist.ProcessGroup | None,
        timeout: timedelta | float,
    ) -> None:
        if batch is not None and not isinstance(batch, ManagedBatch):
            raise InvalidArgumentTypeError(
                "batch must be a ManagedBatch (from managed_batch()) or None, got "
                f"{_describe(batch)}"
            )
        self._batch = batch
        self._given_group = _check_group(group)
        self._timeout = _check_timeout(timeout)
        self._own_group: dist.ProcessGroup | None = None
        self._entered = False
        self.report: BatchReport | None = None
        """This rank's report, for when no batch was given; a given batch's report wins."""
        self.combined: CombinedReport | None = None
        """Every rank's report, once the block has ended."""

    def __enter__(self) -> ReportGathering:
        if self._entered:
            raise BatchStateError("a ReportGathering can be entered once")
        if self._batch is not None and self._batch.active:
            raise BatchStateError(
                "enter gathered_reports(batch) before the batch, so that the batch has ended "
                "and has its report when the gathering starts: "
                "`with gathered_reports(batch) as gathering, batch:`"
            )
        self._entered = True
        if distributed_ready():
            if self._given_group is not None:
                _require_gloo(self._given_group)
            else:
                # Made while every rank is still on the same line of the program, so that at
                # the end a missing rank shows up by name in the barrier, not as a failure to
                # make the group.
                self._own_group = _make_gloo_group(self._timeout)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and not isinstance(exc, Exception):
                # KeyboardInterrupt or SystemExit: the process is leaving, and holding it for
                # the timeout would only delay that. The others end in ReportGatherError.
                return
            self._gather(exc)
        finally:
            if self._own_group is not None:
                _release_group(self._own_group)
                self._own_group = None

    def _gather(self, error: BaseException | None) -> None:
        record = _own_record(self._own_report(), error)
        try:
            if not distributed_ready():
                self.combined = CombinedReport((record,))
                return
            group = self._given_group if self._given_group is not None else self._own_group
            if group is None:
                # torch.distributed was initialised inside the block: make the group now.
                self._own_group = group = _make_gloo_group(self._timeout)
            self.combined = _gather_on(group, record, self._timeout)
        except Exception:
            if error is None:
                raise
            # The rank's own exception is what its caller needs to see.
            logger.warning("could not gather the ranks' reports", exc_info=True)

    def _own_report(self) -> BatchReport | None:
        if self._batch is None:
            return self.report
        try:
            return self._batch.report
        except BatchStateError:
            # The work failed before the batch ended (or began): the rank has no report.
            return None


def gathered_reports(
    batch: ManagedBatch | None = None,
    *,
    group: dist.ProcessGroup | None = None,
    timeout: timedelta | float = DEFAULT_GATHER_TIMEOUT,
) -> ReportGathering:
    """Gather every rank's batch report when the ``with`` block ends, even if it raised.

    ::

        batch = managed_batch(every=5)
        with gathered_reports(batch) as gathering, batch:
            for image in batch.track(my_share_of_images):
                colorize(image)
        if dist.get_rank() == 0:
            print(gathering.combined)

    Entering makes the process group the gathering uses (a collective: every rank enters).
    Leaving gathers on every rank. If the block raised, the rank takes part with a record of
    its exception (and its batch's report, if the batch ended), then the exception goes on,
    so the other ranks get a report that names the failure instead of waiting for a rank
    that will never come. A failure of the gathering itself does not replace that exception:
    it is logged. ``KeyboardInterrupt`` and ``SystemExit`` skip the gathering.

    Args:
        batch: the rank's batch, entered inside the gathering; without one, set
            ``gathering.report`` inside the block.
        group: as for :func:`gather_reports`.
        timeout: as for :func:`gather_reports`.
    """
    return ReportGathering(batch, group=group, timeout=timeout)
