"""The gloo process groups a gathering talks over, made and released around it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from memscope.distributed._checks import exception_text, how_it_failed, seconds_text
from memscope.exceptions import InvalidArgumentError, ReportGatherError

__all__: list[str] = []

logger = logging.getLogger("memscope")


def _make_gloo_group(timeout: timedelta) -> dist.ProcessGroup:
    if not dist.is_gloo_available():
        raise ReportGatherError(
            "gathering reports needs torch.distributed's gloo backend, which this torch build lacks"
        )
    try:
        group = dist.new_group(backend="gloo", timeout=timeout)
    except RuntimeError as error:
        # Making the group is itself a collective, over torch's store.
        raise _making_failed(error, timeout, "torch.distributed.new_group failed") from error
    if not isinstance(group, dist.ProcessGroup):
        # new_group hands non-members a placeholder; every rank is a member of this group.
        raise ReportGatherError(f"torch.distributed.new_group returned {group!r}")
    return group


def _making_failed(error: RuntimeError, timeout: timedelta, otherwise: str) -> ReportGatherError:
    """The error for groups that could not be made, saying how (a rank late, or gone)."""
    how = how_it_failed(error)
    if how == "late":
        what = (
            "not every rank came to gather_reports or gathered_reports within "
            f"{seconds_text(timeout)}"
        )
    elif how == "left":
        what = "a rank left while it was being made (the connection closed)"
    else:
        what = otherwise
    return ReportGatherError(
        f"could not make the process group that gathers reports: {what} ({exception_text(error)})"
    )


def _release_group(group: dist.ProcessGroup) -> None:
    try:
        dist.destroy_process_group(group)
    except Exception:
        logger.debug("could not destroy the report-gathering process group", exc_info=True)


@dataclass(frozen=True)
class Groups:
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


def make_gloo_groups(timeout: timedelta) -> Groups:
    arrivals = _make_gloo_group(timeout)
    try:
        exchange = _make_gloo_group(timeout)
    except BaseException:
        _release_group(arrivals)
        raise
    groups = Groups(arrivals=arrivals, exchange=exchange)
    try:
        # A rank returns from making a group before every other rank has: one that left at
        # once (a crash in the block) would make them fail to make it, instead of showing up
        # by name at the end. No rank goes on until every rank has both groups.
        dist.barrier(group=arrivals)
    except BaseException as error:
        release_groups(groups)
        if isinstance(error, RuntimeError):
            raise _making_failed(error, timeout, "torch.distributed.barrier failed") from error
        raise
    return groups


def release_groups(groups: Groups) -> None:
    _release_group(groups.arrivals)
    if not groups.shared:
        _release_group(groups.exchange)


def require_gloo(group: dist.ProcessGroup) -> None:
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
