"""torch.distributed gathering: checking its arguments, and reading what went wrong.

Everything here runs without a process group: the timeout and group checks, the record this
rank sends, and how a gloo error message tells a rank that left from one that was late.
"""

from __future__ import annotations

import logging
import math
import numbers
import socket
from datetime import timedelta

import torch.distributed as dist

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports import BatchReport, RankReport, process_rank

__all__: list[str] = []

logger = logging.getLogger("memscope")

MIN_GATHER_TIMEOUT = timedelta(milliseconds=1)
"""The shortest timeout a gathering takes: torch counts its timeouts in whole milliseconds, and
rounds a shorter one down to zero, which it reads as *no timeout*."""

MAX_GATHER_TIMEOUT = timedelta(days=1)
"""The longest timeout a gathering takes: a rank that has not come after a day is hung, and the
others should fail rather than hold the job's machines any longer."""

_LONGEST_DESCRIPTION = 100
"""Where an argument's repr is cut in an error message: enough to recognise it."""

# How the error messages tell the two apart. A wait that ran out: gloo's "Timed out waiting
# 3000ms for recv operation to complete", torch's store's "wait timeout after 3000ms". A
# connection that went away: its process ended ("Connection reset by peer", "Connection closed
# by peer"), or it gave up waiting itself, which makes gloo close the connection.
# "Application timeout caused pair closure" is what gloo tells every other wait on a group once
# one wait on it timed out: a rank that had not come by then is late too.
_TIMED_OUT_SIGNS = ("Timed out", "timed out", "wait timeout", "Application timeout")
_CONNECTION_LOST_SIGNS = ("closed by peer", "reset by peer", "Broken pipe", "Connection refused")


def distributed_ready() -> bool:
    """Whether torch.distributed's default process group is up."""
    return dist.is_available() and dist.is_initialized()


def check_timeout(timeout: object) -> timedelta:
    if isinstance(timeout, bool) or not isinstance(timeout, (timedelta, numbers.Real)):
        raise InvalidArgumentTypeError(
            f"timeout must be a datetime.timedelta or a number of seconds, got "
            f"{describe(timeout)} of type {type(timeout).__name__}"
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
    if seconds < MIN_GATHER_TIMEOUT.total_seconds() or (
        isinstance(timeout, timedelta) and timeout < MIN_GATHER_TIMEOUT
    ):
        raise _timeout_out_of_range(
            timeout, "torch counts whole milliseconds, and reads 0 ms as no timeout at all"
        )
    if seconds > MAX_GATHER_TIMEOUT.total_seconds() or (
        isinstance(timeout, timedelta) and timeout > MAX_GATHER_TIMEOUT
    ):
        raise _timeout_out_of_range(timeout, "a wait that long no longer bounds a hang")
    return timeout if isinstance(timeout, timedelta) else timedelta(seconds=seconds)


def _timeout_out_of_range(timeout: object, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"timeout must be from {seconds_text(MIN_GATHER_TIMEOUT)} to "
        f"{seconds_text(MAX_GATHER_TIMEOUT)} (1 ms to 1 day), got {describe(timeout)}: {why}"
    )


def describe(value: object) -> str:
    """``repr(value)``, shortened if long, or a stand-in when the object's ``__repr__`` raises."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object with a failing __repr__>"
    if len(text) > _LONGEST_DESCRIPTION:
        return f"{text[: _LONGEST_DESCRIPTION - 20]}... ({len(text)} characters)"
    return text


def exception_text(error: BaseException) -> str:
    """``"Type: message"`` for a rank's record, whatever the exception's ``__str__`` does."""
    name = type(error).__name__
    try:
        message = str(error)
    except Exception:
        # The rank's failure must still be recorded; its message is lost, not the gathering.
        return f"{name}: <unprintable {name}>"
    return f"{name}: {message}" if message else name


def check_group(group: object) -> dist.ProcessGroup | None:
    if group is None:
        return None
    if not isinstance(group, dist.ProcessGroup):
        raise InvalidArgumentTypeError(
            f"group must be a torch.distributed ProcessGroup or None, got {describe(group)}"
        )
    return group


def own_record(report: BatchReport | None, error: BaseException | str | None) -> RankReport:
    if report is not None and not isinstance(report, BatchReport):
        raise InvalidArgumentTypeError(
            f"report must be a BatchReport or None, got {describe(report)}"
        )
    if isinstance(error, BaseException):
        error = exception_text(error)
    elif error is not None and not isinstance(error, str):
        raise InvalidArgumentTypeError(
            f"error must be an exception, a str or None, got {describe(error)} of type "
            f"{type(error).__name__}"
        )
    rank, _ = process_rank()
    return RankReport(
        rank=0 if rank is None else rank, host=socket.gethostname(), report=report, error=error
    )


def seconds_text(timeout: timedelta) -> str:
    return f"{timeout.total_seconds():g} s"


def how_it_failed(error: BaseException) -> str:
    """``"late"`` for a wait that ran out, ``"left"`` for a connection that went away."""
    text = exception_text(error)
    if any(sign in text for sign in _TIMED_OUT_SIGNS):
        return "late"
    if any(sign in text for sign in _CONNECTION_LOST_SIGNS):
        return "left"
    return "broken"
