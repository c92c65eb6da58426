"""Batch reports across the processes of a torch.distributed job, such as one run by torchrun.

Each process (rank) runs its own ``managed_batch`` and gets its own :class:`BatchReport`, which
names the rank. :func:`gathered_reports` and :func:`gather_reports` bring every rank's report
together into one :class:`CombinedReport`: a row per rank and totals for the whole job.

Gathering is a collective call: every rank has to take part, and a rank that never does would
leave the others waiting. Two rules keep that from becoming a hang:

- a rank whose work raised still takes part, with a record of its failure instead of a report
  (:func:`gathered_reports` does this for you, then lets the exception go on);
- every wait is bounded by ``timeout`` (1 ms to 1 day); a rank that does not take part makes
  the others raise :class:`~memscope.ReportGatherError`, which says which ranks left (their
  process ended) and which did not arrive in time, and names them in ``missing_ranks``.

The gathering runs on gloo process groups of its own, so it works the same whatever backend
the job trains with (NCCL included), moves only a few hundred bytes per rank through host
memory, and has its own timeout. Rank 0 collects the reports and answers every rank that came.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch.distributed as dist

from memscope._context_manager import SyncAndAsyncContextManager
from memscope.batch import ManagedBatch
from memscope.distributed._checks import (
    check_group,
    check_timeout,
    describe,
    distributed_ready,
    own_record,
)
from memscope.distributed._exchange import gather_on
from memscope.distributed._groups import (
    Groups,
    make_gloo_groups,
    release_groups,
    require_gloo,
)
from memscope.exceptions import BatchStateError, InvalidArgumentTypeError, ReportGatherError
from memscope.reports import BatchReport, CombinedReport

__all__ = ["DEFAULT_GATHER_TIMEOUT", "ReportGathering", "gather_reports", "gathered_reports"]

logger = logging.getLogger("memscope")

DEFAULT_GATHER_TIMEOUT = timedelta(minutes=30)
"""How long a gathering waits for the other ranks: torch's own default for collectives.

The wait includes the time the fastest rank spends waiting for the slowest to finish its share
of the batch, so it must be longer than the ranks' difference in running time.
"""


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
        group: a process group with the gloo backend to gather on, which this rank is in.
            Without it, two gloo groups of every rank are made for this call (itself a
            collective) and destroyed after it. On a given group a gathering that times out
            tells only rank 0 why, and leaves the group unusable: gloo closes all of a group's
            connections once a wait on it times out.
        timeout: how long to wait for the other ranks, a ``timedelta`` or a real number of
            seconds, from 1 ms to 1 day.

    Raises:
        InvalidArgumentTypeError: ``timeout``, ``group``, ``report`` or ``error`` has the
            wrong type (a ``bool`` or a string is not a timeout).
        InvalidArgumentError: ``timeout`` is outside its range, or not finite; ``group`` is
            not a gloo group, or does not include this rank.
        ReportGatherError: a rank did not take part. On rank 0 (and, without ``group``, on
            every rank that came) the message says which ranks left (their connection closed)
            and which did not arrive within ``timeout``, and which of those that came failed;
            ``missing_ranks`` names the ranks that did not take part. A rank that came after
            rank 0 gave up is told so at once.
    """
    record = own_record(report, error)
    wait = check_timeout(timeout)
    given_group = check_group(group)
    if not distributed_ready():
        return CombinedReport((record,))
    if given_group is not None:
        require_gloo(given_group)
        return gather_on(Groups(given_group, given_group), record, wait)
    own_groups = make_gloo_groups(wait)
    try:
        return gather_on(own_groups, record, wait)
    finally:
        release_groups(own_groups)


class ReportGathering(SyncAndAsyncContextManager):
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
                f"{describe(batch)}"
            )
        self._batch = batch
        self._given_group = check_group(group)
        self._timeout = check_timeout(timeout)
        self._own_groups: Groups | None = None
        self._entered = False
        self.report: BatchReport | None = None
        """This rank's report, for when no batch was given; a given batch's report wins."""
        self.combined: CombinedReport | None = None
        """Every rank's report, once the block has ended."""
        self.gather_error: ReportGatherError | None = None
        """Why the gathering failed, if it did; kept here too when the block's own exception
        is the one that went on."""

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
                require_gloo(self._given_group)
            else:
                # Made while every rank is still on the same line of the program, so that at
                # the end a missing rank shows up by name in the exchange, not as a failure to
                # make the group.
                self._own_groups = make_gloo_groups(self._timeout)
        return self

    def _leave(self, error: BaseException | None) -> None:
        try:
            if error is not None and not isinstance(error, Exception):
                # KeyboardInterrupt or SystemExit: the process is leaving, and holding it for
                # the timeout would only delay that. The others end in ReportGatherError.
                return
            self._gather(error)
        finally:
            if self._own_groups is not None:
                release_groups(self._own_groups)
                self._own_groups = None

    def _gather(self, error: BaseException | None) -> None:
        record = own_record(self._own_report(), error)
        try:
            if not distributed_ready():
                self.combined = CombinedReport((record,))
                return
            if self._given_group is not None:
                groups = Groups(self._given_group, self._given_group)
            elif self._own_groups is not None:
                groups = self._own_groups
            else:
                # torch.distributed was initialised inside the block: make the groups now.
                self._own_groups = groups = make_gloo_groups(self._timeout)
            self.combined = gather_on(groups, record, self._timeout)
        except Exception as gather_error:
            if isinstance(gather_error, ReportGatherError):
                self.gather_error = gather_error
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
