"""The exchange of one gathering: every rank's record to rank 0, and rank 0's answer back."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from memscope.distributed._checks import (
    MIN_GATHER_TIMEOUT,
    exception_text,
    how_it_failed,
    seconds_text,
)
from memscope.distributed._groups import Groups
from memscope.exceptions import ReportGatherError
from memscope.reports import CombinedReport, RankReport

__all__: list[str] = []

logger = logging.getLogger("memscope")

_COLLECTOR = 0
"""The rank, in the gathering's group, that collects the reports and answers the others."""

# The tags of the gathering's messages: one per kind, so that gloo never takes one for another,
# and far from the small tags a job may use itself on a group it gives. No message left over
# from a failed gathering can reach a later one: gloo closes the connections a wait failed on.
_ARRIVAL_TAG = 0x6D73_0001
_REPORT_TAG = 0x6D73_0002
_ANSWER_SIZE_TAG = 0x6D73_0003
_ANSWER_TAG = 0x6D73_0004

_ARRIVED_RANK_WAIT = timedelta(seconds=30)
"""How long a message may take between two ranks that are both in the gathering: it only has
to cross the network, so this is far more than it needs, whatever the gathering's timeout."""


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


def _wait(work: dist.Work | None, seconds: float) -> None:
    if work is None:
        raise RuntimeError("torch.distributed gave no work to wait for: rank not in the group")
    # gloo reads a zero timeout as no timeout at all: never hand it less than a millisecond.
    work.wait(timedelta(seconds=max(seconds, MIN_GATHER_TIMEOUT.total_seconds())))


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


def gather_on(groups: Groups, record: RankReport, timeout: timedelta) -> CombinedReport:
    if groups.arrivals.size() == 1:
        return CombinedReport((record,))
    if dist.get_rank(groups.arrivals) == _COLLECTOR:
        return _collect(groups, record, timeout)
    return _contribute(groups, record, timeout)


def _collect(groups: Groups, record: RankReport, timeout: timedelta) -> CombinedReport:
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
    timed_out = any(how_it_failed(error) == "late" for error in unheard.values())
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
            unheard[rank] = RuntimeError(f"its report could not be read: {exception_text(error)}")
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
        kinds[how_it_failed(error)].append(rank)
        global_rank = _global_rank(group, rank)
        logger.debug("rank %d did not take part: %s", global_rank, exception_text(error))
    parts = []
    if kinds["left"]:
        left = [_global_rank(group, rank) for rank in kinds["left"]]
        parts.append(
            f"{_ranks(left)} left without sending a report (the connection closed: the process "
            "ended, or it gave up waiting)"
        )
    if kinds["late"]:
        late = [_global_rank(group, rank) for rank in kinds["late"]]
        parts.append(f"{_ranks(late)} did not arrive within {seconds_text(timeout)}")
    for rank in kinds["broken"]:
        detail = exception_text(unheard[rank])
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


def _contribute(groups: Groups, record: RankReport, timeout: timedelta) -> CombinedReport:
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
            f"reports, could not be read: {exception_text(error)}"
        ) from error
    raise ReportGatherError(error_text, missing_ranks=missing)


def _collector_absent(
    error: BaseException, collector: int, timeout: timedelta
) -> ReportGatherError:
    how = how_it_failed(error)
    prefix = f"gathering reports failed: rank {collector}, which collects the reports,"
    if how == "late":
        return ReportGatherError(
            f"{prefix} did not come within {seconds_text(timeout)}", missing_ranks=(collector,)
        )
    if how == "left":
        return ReportGatherError(
            f"{prefix} had left when this rank came (the connection closed): it gave up waiting "
            "for this rank after its timeout, or its process ended"
        )
    return ReportGatherError(f"{prefix} could not be reached: {exception_text(error)}")


def _collector_lost(
    error: BaseException, collector: int, waited: timedelta, *, shared: bool
) -> ReportGatherError:
    how = how_it_failed(error)
    prefix = f"gathering reports failed: rank {collector}, which collects the reports,"
    if how == "late":
        return ReportGatherError(
            f"{prefix} took this rank's arrival but sent no answer within {seconds_text(waited)}"
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
    return ReportGatherError(f"{prefix} failed during the gathering: {exception_text(error)}")
