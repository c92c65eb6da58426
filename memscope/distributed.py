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

import json
import logging
import math
import numbers
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

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

__all__ = ["DEFAULT_GATHER_TIMEOUT", "ReportGathering", "gather_reports", "gathered_reports"]

logger = logging.getLogger("memscope")

_MIN_GATHER_TIMEOUT = timedelta(milliseconds=1)
"""The shortest timeout a gathering takes: torch counts its timeouts in whole milliseconds, and
rounds a shorter one down to zero, which it reads as *no timeout*."""

_MAX_GATHER_TIMEOUT = timedelta(days=1)
"""The longest timeout a gathering takes: a rank that has not come after a day is hung, and the
others should fail rather than hold the job's machines any longer."""

DEFAULT_GATHER_TIMEOUT = timedelta(minutes=30)
"""How long a gathering waits for the other ranks: torch's own default for collectives.

The wait includes the time the fastest rank spends waiting for the slowest to finish its share
of the batch, so it must be longer than the ranks' difference in running time.
"""

_LONGEST_DESCRIPTION = 100
"""Where an argument's repr is cut in an error message: enough to recognise it."""

_COLLECTOR = 0
"""The rank, in the gathering's group, that collects the reports and answers the others."""

# The tags of the gathering's messages: one per kind, so that gloo never takes one for another,
# and far from the small tags a job may use itself on a group it gives. No message left over
# from a failed gathering can reach a later one: gloo closes the connections a wait failed on.
_ARRIVAL_TAG = 0x6D73_0001
_REPORT_TAG = 0x6D73_0002
_ANSWER_SIZE_TAG = 0x6D73_0003
_ANSWER_TAG = 0x6D73_0004

# How the error messages tell the two apart. A wait that ran out: gloo's "Timed out waiting
# 3000ms for recv operation to complete", torch's store's "wait timeout after 3000ms". A
# connection that went away: its process ended ("Connection reset by peer", "Connection closed
# by peer"), or it gave up waiting itself, which makes gloo close the connection.
# "Application timeout caused pair closure" is what gloo tells every other wait on a group once
# one wait on it timed out: a rank that had not come by then is late too.
_TIMED_OUT_SIGNS = ("Timed out", "timed out", "wait timeout", "Application timeout")
_CONNECTION_LOST_SIGNS = ("closed by peer", "reset by peer", "Broken pipe", "Connection refused")

_ARRIVED_RANK_WAIT = timedelta(seconds=30)
"""How long a message may take between two ranks that are both in the gathering: it only has
to cross the network, so this is far more than it needs, whatever the gathering's timeout."""


# Gathering --------------------------------------------------------------------------------


def _check_timeout(timeout: object) -> timedelta:
    if isinstance(timeout, bool) or not isinstance(timeout, (timedelta, numbers.Real)):
        raise InvalidArgumentTypeError(
            f"timeout must be a datetime.timedelta or a number of seconds, got "
            f"{_describe(timeout)} of type {type(timeout).__name__}"
        )
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    else:
        try:
            seconds = float(timeout)
        except (OverflowError, ValueError) as error:
            # An int too large for a float, or a Real type whose float() refuses the value.
            raise _timeout_out_of_range(timeout, "too large to be a number of seconds") from error
    # Checked as seconds: timedelta(seconds=...) raises OverflowError for huge values, and
    # cannot hold NaN or infinity at all.
    if not math.isfinite(seconds):
        raise _timeout_out_of_range(timeout, "a finite number is needed")
    if seconds < 0:
        raise _timeout_out_of_range(timeout, "a wait cannot be negative")
    if seconds < _MIN_GATHER_TIMEOUT.total_seconds() or (
        isinstance(timeout, timedelta) and timeout < _MIN_GATHER_TIMEOUT
    ):
        raise _timeout_out_of_range(
            timeout, "torch counts whole milliseconds, and reads 0 ms as no timeout at all"
        )
    if seconds > _MAX_GATHER_TIMEOUT.total_seconds() or (
        isinstance(timeout, timedelta) and timeout > _MAX_GATHER_TIMEOUT
    ):
        raise _timeout_out_of_range(timeout, "a wait that long no longer bounds a hang")
    return timeout if isinstance(timeout, timedelta) else timedelta(seconds=seconds)


def _timeout_out_of_range(timeout: object, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"timeout must be from {_seconds(_MIN_GATHER_TIMEOUT)} to {_seconds(_MAX_GATHER_TIMEOUT)} "
        f"(1 ms to 1 day), got {_describe(timeout)}: {why}"
    )


def _describe(value: object) -> str:
    """``repr(value)``, shortened if long, or a stand-in when the object's ``__repr__`` raises."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object with a failing __repr__>"
    if len(text) > _LONGEST_DESCRIPTION:
        return f"{text[: _LONGEST_DESCRIPTION - 20]}... ({len(text)} characters)"
    return text


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
        # Making the group is itself a collective, over torch's store.
        how = _how_it_failed(error)
        if how == "late":
            what = (
                "not every rank came to gather_reports or gathered_reports within "
                f"{_seconds(timeout)}"
            )
        elif how == "left":
            what = "a rank left while it was being made (the connection closed)"
        else:
            what = "torch.distributed.new_group failed"
        raise ReportGatherError(
            f"could not make the process group that gathers reports: {what} "
            f"({_exception_text(error)})"
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


@dataclass(frozen=True)
class _Groups:
    """The gloo groups one gathering talks over.

    gloo closes every connection of a group as soon as one wait on it times out. So the ranks
    announce themselves on ``arrivals``, where the collector's wait for a late rank may time
    out, and send their reports and get the answer on ``exchange``, which stays open for the
    ranks that came. A group the caller gives serves as both; then a timeout leaves the
    collector unable to read the reports of the ranks that came, or to answer them.
    """

    arrivals: dist.ProcessGroup
    exchange: dist.ProcessGroup

    @property
    def shared(self) -> bool:
        return self.arrivals is self.exchange


def _make_gloo_groups(timeout: timedelta) -> _Groups:
    arrivals = _make_gloo_group(timeout)
    try:
        exchange = _make_gloo_group(timeout)
    except BaseException:
        _release_group(arrivals)
        raise
    return _Groups(arrivals=arrivals, exchange=exchange)


def _release_groups(groups: _Groups) -> None:
    _release_group(groups.arrivals)
    if not groups.shared:
        _release_group(groups.exchange)


def _seconds(timeout: timedelta) -> str:
    return f"{timeout.total_seconds():g} s"


# The exchange -----------------------------------------------------------------------------
#
# Every rank announces itself to the collector (rank 0 of the group), which waits for them all
# until one deadline, then reads the reports of the ranks that came and answers each of them:
# with the combined report, or with what went wrong. It is done with point-to-point messages
# rather than monitored_barrier and all_gather, because only the error of each receive tells a
# rank that left (its connection closed) from one that is late (the wait timed out), and only
# an answer from the collector lets every rank that came say which ranks did not.


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _global_rank(group: dist.ProcessGroup, group_rank: int) -> int:
    try:
        return dist.get_global_rank(group, group_rank)
    except (RuntimeError, ValueError):
        return group_rank


def _how_it_failed(error: BaseException) -> str:
    """``"late"`` for a wait that ran out, ``"left"`` for a connection that went away."""
    text = _exception_text(error)
    if any(sign in text for sign in _TIMED_OUT_SIGNS):
        return "late"
    if any(sign in text for sign in _CONNECTION_LOST_SIGNS):
        return "left"
    return "broken"


def _wait(work: dist.Work | None, seconds: float) -> None:
    if work is None:
        raise RuntimeError("torch.distributed gave no work to wait for: rank not in the group")
    # gloo reads a zero timeout as no timeout at all: never hand it less than a millisecond.
    work.wait(timedelta(seconds=max(seconds, _MIN_GATHER_TIMEOUT.total_seconds())))


def _send(tensor: torch.Tensor, group: dist.ProcessGroup, to: int, tag: int) -> dist.Work | None:
    return dist.isend(tensor, group=group, group_dst=to, tag=tag)


def _receive(
    tensor: torch.Tensor, group: dist.ProcessGroup, source: int, tag: int
) -> dist.Work | None:
    return dist.irecv(tensor, group=group, group_src=source, tag=tag)


def _bytes_tensor(payload: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # tolist rather than numpy(): torch does not require numpy.
    return bytes(tensor.tolist())


def _size_tensor(size: int = 0) -> torch.Tensor:
    return torch.tensor([size], dtype=torch.int64)


def _gather_on(groups: _Groups, record: RankReport, timeout: timedelta) -> CombinedReport:
    if groups.arrivals.size() == 1:
        return CombinedReport((record,))
    if dist.get_rank(groups.arrivals) == _COLLECTOR:
        return _collect(groups, record, timeout)
    return _contribute(groups, record, timeout)


def _collect(groups: _Groups, record: RankReport, timeout: timedelta) -> CombinedReport:
    deadline = time.monotonic() + timeout.total_seconds()
    sizes = {rank: _size_tensor() for rank in range(1, groups.arrivals.size())}
    unheard: dict[int, BaseException] = {}
    announced: dict[int, dist.Work | None] = {}
    # Every receive is posted before any is waited on, so that each rank gets in as soon as it
    # comes, whichever rank the collector is waiting on at the time.
    for rank, size in sizes.items():
        try:
            announced[rank] = _receive(size, groups.arrivals, rank, _ARRIVAL_TAG)
        except RuntimeError as error:
            unheard[rank] = error
    came: list[int] = []
    for rank, work in announced.items():
        try:
            # One deadline for all, so that a late rank does not add to the wait for the next.
            _wait(work, deadline - time.monotonic())
        except RuntimeError as error:
            unheard[rank] = error
        else:
            came.append(rank)
    timed_out = any(_how_it_failed(error) == "late" for error in unheard.values())
    reports_lost = groups.shared and timed_out
    records = [record]
    if not reports_lost:
        records += _read_reports(groups.exchange, {rank: sizes[rank] for rank in came}, unheard)
        came = [rank for rank in came if rank not in unheard]
    entries = tuple(sorted(records, key=lambda entry: entry.rank))
    if not unheard:
        _answer(groups.exchange, came, {"error": None, "ranks": [e.to_dict() for e in entries]})
        combined = CombinedReport(entries)
        if combined.failed_ranks:
            failures = [f"rank {entry.rank}: {entry.error}" for entry in entries if entry.failed]
            logger.warning("%d rank(s) failed: %s", len(failures), "; ".join(failures))
        return combined
    missing = sorted(_global_rank(groups.arrivals, rank) for rank in unheard)
    lost = [_global_rank(groups.arrivals, rank) for rank in came] if reports_lost else []
    message = _collector_failure(groups.arrivals, unheard, entries, lost, timeout)
    if not reports_lost:
        _answer(groups.exchange, came, {"error": message, "missing": missing})
    raise ReportGatherError(message, missing_ranks=tuple(missing)) from unheard[min(unheard)]


def _read_reports(
    exchange: dist.ProcessGroup, sizes: dict[int, torch.Tensor], unheard: dict[int, BaseException]
) -> list[RankReport]:
    """The reports of the ranks that came, whose sizes are ``sizes``; adds failures to
    ``unheard``."""
    payloads = {
        rank: torch.empty(int(size.item()), dtype=torch.uint8) for rank, size in sizes.items()
    }
    receipts: dict[int, dist.Work | None] = {}
    for rank, payload in payloads.items():
        try:
            receipts[rank] = _receive(payload, exchange, rank, _REPORT_TAG)
        except RuntimeError as error:
            unheard[rank] = error
    records = []
    for rank, receipt in receipts.items():
        try:
            # The rank came and sent its report on arriving: the wait is only the transfer.
            _wait(receipt, _ARRIVED_RANK_WAIT.total_seconds())
            records.append(RankReport.from_dict(json.loads(_tensor_bytes(payloads[rank]))))
        except RuntimeError as error:
            unheard[rank] = error
        except (ValueError, KeyError, TypeError) as error:
            # Not JSON, or not a record this memscope can read: another version on that rank?
            unheard[rank] = RuntimeError(f"its report could not be read: {_exception_text(error)}")
    return records


def _collector_failure(
    group: dist.ProcessGroup,
    unheard: dict[int, BaseException],
    entries: tuple[RankReport, ...],
    lost: list[int],
    timeout: timedelta,
) -> str:
    kinds: dict[str, list[int]] = {"left": [], "late": [], "broken": []}
    for rank, error in sorted(unheard.items()):
        kinds[_how_it_failed(error)].append(rank)
        global_rank = _global_rank(group, rank)
        logger.debug("rank %d did not take part: %s", global_rank, _exception_text(error))
    parts = []
    if kinds["left"]:
        left = [_global_rank(group, rank) for rank in kinds["left"]]
        parts.append(
            f"{_ranks(left)} left without sending a report (the connection closed: the process "
            "ended, or it gave up waiting)"
        )
    if kinds["late"]:
        late = [_global_rank(group, rank) for rank in kinds["late"]]
        parts.append(f"{_ranks(late)} did not arrive within {_seconds(timeout)}")
    for rank in kinds["broken"]:
        detail = _exception_text(unheard[rank])
        parts.append(f"{_ranks([_global_rank(group, rank)])} could not be heard: {detail}")
    summary = [f"Reports came from {_ranks([entry.rank for entry in entries])}"]
    if lost:
        reports = "its report was" if len(lost) == 1 else "their reports were"
        summary.append(
            f"{_ranks(lost)} came too, but {reports} lost: gloo closes every connection of the "
            "given group once a wait on it times out"
        )
    summary += [f"rank {entry.rank} failed: {entry.error}" for entry in entries if entry.failed]
    return f"gathering reports failed: {'; '.join(parts)}. {'; '.join(summary)}"


def _answer(exchange: dist.ProcessGroup, ranks: list[int], outcome: dict[str, Any]) -> None:
    payload = _bytes_tensor(json.dumps(outcome).encode())
    size = _size_tensor(payload.numel())
    sending: dict[int, list[dist.Work | None]] = {}
    for rank in ranks:
        try:
            sending[rank] = [
                _send(size, exchange, rank, _ANSWER_SIZE_TAG),
                _send(payload, exchange, rank, _ANSWER_TAG),
            ]
        except RuntimeError:
            global_rank = _global_rank(exchange, rank)
            logger.warning("rank %d left before it got its answer", global_rank, exc_info=True)
    for rank, works in sending.items():
        try:
            for work in works:
                # The rank is waiting for this answer already: the wait is only the transfer.
                _wait(work, _ARRIVED_RANK_WAIT.total_seconds())
        except RuntimeError:
            global_rank = _global_rank(exchange, rank)
            logger.warning("rank %d left before it got its answer", global_rank, exc_info=True)


def _contribute(groups: _Groups, record: RankReport, timeout: timedelta) -> CombinedReport:
    collector = _global_rank(groups.arrivals, _COLLECTOR)
    payload = _bytes_tensor(json.dumps(record.to_dict()).encode())
    answer_size = _size_tensor()
    try:
        arrival = _send(_size_tensor(payload.numel()), groups.arrivals, _COLLECTOR, _ARRIVAL_TAG)
        receipts = [
            _send(payload, groups.exchange, _COLLECTOR, _REPORT_TAG),
            _receive(answer_size, groups.exchange, _COLLECTOR, _ANSWER_SIZE_TAG),
        ]
        # gloo completes a send only once the other end has posted its receive, which the
        # collector does as it comes to the gathering.
        _wait(arrival, timeout.total_seconds())
    except RuntimeError as error:
        raise _collector_absent(error, collector, timeout) from error
    # The collector answers within its timeout of coming, which was before this point; the
    # rest is for its reading of the reports.
    answer_wait = timeout + _ARRIVED_RANK_WAIT
    deadline = time.monotonic() + answer_wait.total_seconds()
    try:
        for receipt in receipts:
            _wait(receipt, deadline - time.monotonic())
        answer = torch.empty(int(answer_size.item()), dtype=torch.uint8)
        _wait(
            _receive(answer, groups.exchange, _COLLECTOR, _ANSWER_TAG), deadline - time.monotonic()
        )
    except RuntimeError as error:
        raise _collector_lost(error, collector, answer_wait, shared=groups.shared) from error
    try:
        outcome = json.loads(_tensor_bytes(answer))
        if outcome["error"] is not None:
            error_text, missing = str(outcome["error"]), tuple(outcome["missing"])
        else:
            return CombinedReport(tuple(RankReport.from_dict(entry) for entry in outcome["ranks"]))
    except (ValueError, KeyError, TypeError) as error:
        # Not JSON, or not an answer this memscope can read: another version on rank 0?
        raise ReportGatherError(
            f"gathering reports failed: the answer of rank {collector}, which collects the "
            f"reports, could not be read: {_exception_text(error)}"
        ) from error
    raise ReportGatherError(error_text, missing_ranks=missing)


def _collector_absent(
    error: BaseException, collector: int, timeout: timedelta
) -> ReportGatherError:
    how = _how_it_failed(error)
    prefix = f"gathering reports failed: rank {collector}, which collects the reports,"
    if how == "late":
        return ReportGatherError(
            f"{prefix} did not come within {_seconds(timeout)}", missing_ranks=(collector,)
        )
    if how == "left":
        return ReportGatherError(
            f"{prefix} had left when this rank came (the connection closed): it gave up waiting "
            "for this rank after its timeout, or its process ended"
        )
    return ReportGatherError(f"{prefix} could not be reached: {_exception_text(error)}")


def _collector_lost(
    error: BaseException, collector: int, waited: timedelta, *, shared: bool
) -> ReportGatherError:
    how = _how_it_failed(error)
    prefix = f"gathering reports failed: rank {collector}, which collects the reports,"
    if how == "late":
        return ReportGatherError(
            f"{prefix} took this rank's arrival but sent no answer within {_seconds(waited)}"
        )
    if how == "left" and shared:
        # On a given group, the collector's timeout closed this connection too.
        return ReportGatherError(
            f"{prefix} closed the connection before it answered: it gave up waiting for a rank "
            "that left or came late (its own error names them), or its process ended"
        )
    if how == "left":
        return ReportGatherError(
            f"{prefix} left during the gathering, before it answered (the connection closed: "
            "its process ended)"
        )
    return ReportGatherError(f"{prefix} failed during the gathering: {_exception_text(error)}")


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
    record = _own_record(report, error)
    wait = _check_timeout(timeout)
    given_group = _check_group(group)
    if not distributed_ready():
        return CombinedReport((record,))
    if given_group is not None:
        _require_gloo(given_group)
        return _gather_on(_Groups(given_group, given_group), record, wait)
    own_groups = _make_gloo_groups(wait)
    try:
        return _gather_on(own_groups, record, wait)
    finally:
        _release_groups(own_groups)


def _require_gloo(group: dist.ProcessGroup) -> None:
    backend = dist.get_backend(group)
    if backend != "gloo":
        raise InvalidArgumentError(
            f"group must use the gloo backend (gloo tells a rank that left from a late one), "
            f"got a {backend!r} group; make one with torch.distributed.new_group(backend='gloo')"
        )
    if dist.get_rank(group) < 0:
        raise InvalidArgumentError(
            f"group must include this process (rank {dist.get_rank()}), got a group of "
            f"{group.size()} rank(s) without it"
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
        self._own_groups: _Groups | None = None
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
                _require_gloo(self._given_group)
            else:
                # Made while every rank is still on the same line of the program, so that at
                # the end a missing rank shows up by name in the exchange, not as a failure to
                # make the group.
                self._own_groups = _make_gloo_groups(self._timeout)
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
            if self._own_groups is not None:
                _release_groups(self._own_groups)
                self._own_groups = None

    def _gather(self, error: BaseException | None) -> None:
        record = _own_record(self._own_report(), error)
        try:
            if not distributed_ready():
                self.combined = CombinedReport((record,))
                return
            if self._given_group is not None:
                groups = _Groups(self._given_group, self._given_group)
            elif self._own_groups is not None:
                groups = self._own_groups
            else:
                # torch.distributed was initialised inside the block: make the groups now.
                self._own_groups = groups = _make_gloo_groups(self._timeout)
            self.combined = _gather_on(groups, record, self._timeout)
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
