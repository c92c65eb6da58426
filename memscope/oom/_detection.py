"""Recognising out-of-memory errors on every backend, and letting go of a failed call's memory.

Two facts drive this module:

* Backends report running out of memory differently. Recent torch raises
  ``torch.OutOfMemoryError`` for its caching allocators, but the driver, cuDNN, cuBLAS, the
  CPU allocator and out-of-tree backends raise plain ``RuntimeError``\\ s whose message is the
  only clue. :func:`is_oom_error` checks the type first and then the messages each backend
  lists in ``DeviceBackend.oom_messages``.
* An exception pins memory. Its traceback references the frame of every call it unwound,
  and those frames keep their local variables, tensors included, alive. While an ``except``
  block runs, the exception is alive, so memory cannot be freed there. Retry logic therefore
  catches the error with :func:`call_catching_oom` (which returns it instead of raising),
  and then, outside any ``except`` block, calls :func:`release_exception_frames` and
  :func:`reclaim_memory` before trying again.
"""

from __future__ import annotations

import builtins
import logging
import re
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch

from memscope._cleanup import reclaim
from memscope.backends import DeviceBackend, registered_backends
from memscope.manager import MemoryManager

__all__ = [
    "CaughtOom",
    "call_catching_oom",
    "call_catching_oom_async",
    "is_oom_error",
    "reclaim_memory",
    "release_exception_frames",
]

logger = logging.getLogger("memscope")

Parameters = ParamSpec("Parameters")
Result = TypeVar("Result")


def _oom_types() -> tuple[type[BaseException], ...]:
    # Looked up once: torch.OutOfMemoryError appeared in torch 2.5, and
    # torch.cuda.OutOfMemoryError is an alias of it in current releases.
    found: list[type[BaseException]] = [MemoryError]
    for owner in (torch, torch.cuda):
        candidate = getattr(owner, "OutOfMemoryError", None)
        if not (isinstance(candidate, type) and issubclass(candidate, BaseException)):
            continue
        if candidate not in found:
            found.append(candidate)
    return tuple(found)


_OOM_TYPES = _oom_types()

# Each backend lists the messages by which its device says "out of memory" when the error
# type does not say so. They are matched case-sensitively against the message of
# RuntimeErrors only (every torch backend raises RuntimeError or a subclass), so that an
# unrelated ValueError that happens to talk about memory never counts. The combined pattern
# is rebuilt when a backend registers.
_compiled_for: tuple[type[DeviceBackend], ...] = ()
_compiled_pattern: re.Pattern[str] | None = None


def _oom_message_pattern() -> re.Pattern[str] | None:
    global _compiled_for, _compiled_pattern
    backends = registered_backends()
    if backends != _compiled_for:
        patterns = [pattern for backend in backends for pattern in backend.oom_messages]
        _compiled_pattern = (
            re.compile("|".join(f"(?:{pattern})" for pattern in patterns)) if patterns else None
        )
        _compiled_for = backends
    return _compiled_pattern


# A chain longer than this is pathological; stop looking rather than walk it all.
_MAX_CHAIN_LENGTH = 64


def _is_oom_itself(error: BaseException) -> bool:
    if isinstance(error, _OOM_TYPES):
        return True
    if not isinstance(error, RuntimeError):
        return False
    try:
        message = str(error)
    except Exception:
        return False
    pattern = _oom_message_pattern()
    return pattern is not None and pattern.search(message) is not None


def is_oom_error(error: BaseException) -> bool:
    """Whether ``error`` means a device or the host ran out of memory.

    True for ``torch.OutOfMemoryError`` (and ``torch.cuda.OutOfMemoryError``), Python's
    ``MemoryError``, and any ``RuntimeError`` whose message is one of the known
    out-of-memory messages: CUDA ("CUDA out of memory", the driver's "CUDA error: out of
    memory"), ROCm ("HIP out of memory"), Intel XPU, Ascend NPU, Apple MPS ("MPS backend out
    of memory"), cuDNN (``CUDNN_STATUS_ALLOC_FAILED``, and ``CUDNN_STATUS_NOT_SUPPORTED``,
    which cuDNN also reports when its workspace cannot be allocated), cuBLAS-family
    ``*_ALLOC_FAILED`` statuses and torch's CPU allocator.

    An error that wraps an out-of-memory error counts too: the ``__cause__`` chain is
    followed, and so is the ``__context__`` chain unless it was suppressed with
    ``raise ... from None``. An ``ExceptionGroup`` (from an asyncio ``TaskGroup``, say) is
    out of memory when every error it groups is: a group that also holds another error is
    that other failure too, and retrying it as an OOM would lose it. Errors that are not
    ``Exception``\\ s, such as ``KeyboardInterrupt``, ``SystemExit`` or
    ``asyncio.CancelledError``, are never out of memory, whatever they were raised from.
    """
    return _is_oom(error, set())


def _is_oom(error: BaseException, seen: set[int]) -> bool:
    if not isinstance(error, Exception):
        return False
    chain: list[BaseException] = [error]
    while chain and len(seen) < _MAX_CHAIN_LENGTH:
        current = chain.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _is_oom_itself(current):
            return True
        members = _grouped(current)
        if members:
            return all(_is_oom(member, seen) for member in members)
        if current.__cause__ is not None:
            chain.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            chain.append(current.__context__)
    return False


def _grouped(error: BaseException) -> tuple[BaseException, ...]:
    """The errors an exception group holds (none for other errors, or before Python 3.11)."""
    group_type = getattr(builtins, "BaseExceptionGroup", None)
    if group_type is not None and isinstance(error, group_type):
        return tuple(error.exceptions)
    return ()


def release_exception_frames(error: BaseException) -> None:
    """Make ``error`` stop holding the memory of the call that raised it.

    Clears the local variables of every finished frame in ``error``'s traceback (with
    ``traceback.clear_frames``), drops the traceback, and detaches ``__cause__`` and
    ``__context__``. The message, type and notes stay. Chained exceptions are detached, not
    modified: one of them may belong to the caller's own ``except`` block.

    Call it outside any ``except`` block that caught ``error``, once the traceback is no
    longer needed (it is gone afterwards), and before collecting garbage and clearing the
    cache: only then can the memory the failed call's tensors held be returned.
    """
    if error.__traceback__ is not None:
        traceback.clear_frames(error.__traceback__)
        error.__traceback__ = None
    # A group's errors hold the frames of the tasks that raised them.
    for member in _grouped(error):
        release_exception_frames(member)
    error.__cause__ = None
    error.__context__ = None


def reclaim_memory(manager: MemoryManager) -> bool:
    """``gc.collect()``, then ``manager.clear_cache()``; returns whether both worked.

    Meant for after an out-of-memory error, once :func:`release_exception_frames` has run.
    Never raises: a failure is logged as a warning, because it must not replace the error
    being handled.
    """
    outcome = reclaim(manager)
    return outcome is not None and not outcome.failed


@dataclass(frozen=True, slots=True)
class CaughtOom:
    """An out-of-memory error that :func:`call_catching_oom` caught instead of raising."""

    error: BaseException


def call_catching_oom(
    function: Callable[Parameters, Result], /, *args: Parameters.args, **kwargs: Parameters.kwargs
) -> Result | CaughtOom:
    """``function(*args, **kwargs)``, with an out-of-memory error returned, not raised.

    Any other exception propagates unchanged. Returning the error lets the caller handle it
    outside an ``except`` block, where the failed call's memory can really be freed::

        outcome = call_catching_oom(step, batch)
        if isinstance(outcome, CaughtOom):
            release_exception_frames(outcome.error)
            reclaim_memory(manager)
            outcome = call_catching_oom(step, smaller_batch)
    """
    try:
        return function(*args, **kwargs)
    except Exception as error:
        if not is_oom_error(error):
            raise
        return CaughtOom(error)


async def call_catching_oom_async(
    function: Callable[Parameters, Awaitable[Result]],
    /,
    *args: Parameters.args,
    **kwargs: Parameters.kwargs,
) -> Result | CaughtOom:
    """:func:`call_catching_oom` for a coroutine function: awaits ``function(...)``."""
    try:
        return await function(*args, **kwargs)
    except Exception as error:
        if not is_oom_error(error):
            raise
        return CaughtOom(error)
