"""Batch sizes that adapt to the memory there is: ``@adaptive_batch`` and ``process_in_chunks``.

Both run the user's function at a batch size, and on an out-of-memory error free the failed
call's memory properly (outside the ``except`` block: see :mod:`memscope.oom`), shrink the
size by ``factor`` and try again, down to ``min_size``. The size that worked is kept for the
next call; with ``regrow_after``, it grows back cautiously after a run of successes.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

import torch
import wrapt

from memscope import _context as context
from memscope._devices import as_torch_device
from memscope._validation import check_int
from memscope.exceptions import (
    BatchSizeExhaustedError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope.manager import MemoryManager
from memscope.oom._detection import (
    CaughtOom,
    call_catching_oom,
    call_catching_oom_async,
    reclaim_memory,
    release_exception_frames,
)
from memscope.oom._diagnosis import add_oom_note
from memscope.typing import Combine, DeviceLike

__all__ = [
    "AdaptiveBatchFunction",
    "AdaptiveBatchState",
    "Combine",
    "adaptive_batch",
    "process_in_chunks",
    "process_in_chunks_async",
]

logger = logging.getLogger("memscope")

Function = TypeVar("Function", bound=Callable[..., Any])


# Options -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    start: int
    factor: float
    min_size: int
    regrow_after: int | None
    manager: MemoryManager | None
    device: DeviceLike

    @classmethod
    def checked(
        cls,
        *,
        start: object,
        factor: object,
        min_size: object,
        regrow_after: object,
        manager: object,
        device: DeviceLike,
    ) -> _Options:
        start_size = check_int(start, "start", minimum=1)
        smallest = check_int(min_size, "min_size", minimum=1)
        if smallest > start_size:
            raise InvalidArgumentError(
                f"min_size must be <= start, got min_size={smallest!r} and start={start_size!r}"
            )
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise InvalidArgumentTypeError(
                f"factor must be a real number between 0 and 1, got {factor!r} "
                f"of type {type(factor).__name__}"
            )
        shrink = float(factor)
        if math.isnan(shrink) or not 0.0 < shrink < 1.0:
            raise InvalidArgumentError(
                f"factor must be between 0 and 1, exclusive (0 < factor < 1), got {factor!r}"
            )
        interval = (
            None if regrow_after is None else check_int(regrow_after, "regrow_after", minimum=1)
        )
        if manager is not None and not isinstance(manager, MemoryManager):
            raise InvalidArgumentTypeError(
                f"manager must be a MemoryManager or None, got {manager!r}"
            )
        if manager is not None and device is not None:
            raise InvalidArgumentError(
                "pass manager or device, not both: the manager already has a device "
                f"(got manager={manager!r} and device={device!r})"
            )
        if device is not None:
            # Parses the device without touching it: decorating never initialises CUDA.
            as_torch_device(device)
        return cls(start_size, shrink, smallest, interval, manager, device)

    def manager_for_call(self) -> MemoryManager:
        device = None if self.device is None else as_torch_device(self.device)
        return context.manager_for(self.manager, device, context.active_batch.get())


# The learned batch size ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attempt:
    size: int
    # The size that worked before, when this attempt tries a larger one.
    regrowing_from: int | None = None


class AdaptiveBatchState:
    """What an adaptive function has learned: the batch size to use, and what happened.

    One object per decorated function (for a method, shared by every instance), updated in
    place under a lock, so a reference taken once stays current and concurrent calls share
    what any of them learns.
    """

    def __init__(
        self, *, start: int, factor: float, min_size: int, regrow_after: int | None
    ) -> None:
        self._start = start
        self._factor = factor
        self._min_size = min_size
        self._regrow_after = regrow_after
        self._lock = threading.Lock()
        self._reset_locked()

    def _reset_locked(self) -> None:
        self._current_size = self._start
        self._sizes_tried: list[int] = []
        self._successes = 0
        self._oom_count = 0
        self._reductions = 0
        self._regrowths = 0
        self._failed_regrowths = 0
        self._consecutive_successes = 0
        self._regrowth_failures: dict[int, int] = {}

    def __repr__(self) -> str:
        return (
            f"AdaptiveBatchState(current_size={self._current_size}, start={self._start}, "
            f"min_size={self._min_size}, oom_count={self._oom_count}, "
            f"reductions={self._reductions}, regrowths={self._regrowths})"
        )

    # Settings.

    @property
    def start(self) -> int:
        """The first size tried, and the largest regrowth ever goes to."""
        return self._start

    @property
    def factor(self) -> float:
        """What a size is multiplied by after an out-of-memory error."""
        return self._factor

    @property
    def min_size(self) -> int:
        """The smallest size tried."""
        return self._min_size

    @property
    def regrow_after(self) -> int | None:
        """Successes in a row after which a larger size is tried; ``None``: never."""
        return self._regrow_after

    # What was learned.

    @property
    def current_size(self) -> int:
        """The size the next call starts with (unless it tries to regrow)."""
        return self._current_size

    @property
    def sizes_tried(self) -> tuple[int, ...]:
        """Every size tried so far, each once, in the order first tried."""
        with self._lock:
            return tuple(self._sizes_tried)

    @property
    def successes(self) -> int:
        """Calls (or chunks) that completed."""
        return self._successes

    @property
    def oom_count(self) -> int:
        """Out-of-memory errors caught, regrowth attempts included."""
        return self._oom_count

    @property
    def reductions(self) -> int:
        """How often ``current_size`` went down."""
        return self._reductions

    @property
    def regrowths(self) -> int:
        """How often ``current_size`` went up after a run of successes."""
        return self._regrowths

    @property
    def failed_regrowths(self) -> int:
        """Regrowth attempts that ran out of memory (and went back to the smaller size)."""
        return self._failed_regrowths

    def reset(self) -> None:
        """Forget everything learned: start again at ``start``, counters at zero."""
        with self._lock:
            self._reset_locked()

    # Decisions, used by the runners below.

    def _shrunk(self, size: int) -> int | None:
        if size <= self._min_size:
            return None
        return max(self._min_size, min(int(size * self._factor), size - 1))

    def _grown(self, size: int) -> int:
        return min(self._start, max(size + 1, int(size / self._factor)))

    def _successes_needed_to_grow_to(self, size: int) -> int:
        assert self._regrow_after is not None
        # Each failed attempt to grow to a size doubles the wait before the next one.
        return self._regrow_after << self._regrowth_failures.get(size, 0)

    def _note_tried(self, size: int) -> None:
        if size not in self._sizes_tried:
            self._sizes_tried.append(size)

    def _choose(self, limit: int | None = None) -> _Attempt:
        """The next attempt; ``limit`` caps it (the items left, for chunks)."""
        with self._lock:
            current = self._current_size
            attempt = _Attempt(current)
            if self._regrow_after is not None and current < self._start:
                grown = self._grown(current)
                if self._consecutive_successes >= self._successes_needed_to_grow_to(grown):
                    attempt = _Attempt(grown, regrowing_from=current)
            self._note_tried(attempt.size)
            if limit is not None and attempt.size > limit:
                # A short tail proves nothing about a larger size.
                attempt = _Attempt(min(current, limit))
            return attempt

    def _record_success(self, attempt: _Attempt) -> None:
        with self._lock:
            self._successes += 1
            if attempt.regrowing_from is not None:
                if self._current_size == attempt.regrowing_from:
                    self._current_size = attempt.size
                    self._regrowths += 1
                    self._consecutive_successes = 1
                    logger.info("batch size grew back to %d", attempt.size)
            elif attempt.size == self._current_size:
                self._consecutive_successes += 1

    def _record_oom(self, attempt: _Attempt) -> int | None:
        """The size to retry at after ``attempt`` ran out of memory; ``None``: none left."""
        with self._lock:
            self._oom_count += 1
            self._consecutive_successes = 0
            if attempt.regrowing_from is not None:
                self._failed_regrowths += 1
                self._regrowth_failures[attempt.size] = (
                    self._regrowth_failures.get(attempt.size, 0) + 1
                )
                retry = min(attempt.regrowing_from, self._current_size)
            else:
                shrunk = self._shrunk(attempt.size)
                if shrunk is None:
                    return None
                if shrunk < self._current_size:
                    self._current_size = shrunk
                    self._reductions += 1
                retry = min(shrunk, self._current_size)
            self._note_tried(retry)
            return retry


# Running at a size ---------------------------------------------------------------------


def _exhausted_error(
    name: str, options: _Options, sizes: list[int], where: str = ""
) -> BatchSizeExhaustedError:
    tried = ", ".join(str(size) for size in sizes)
    return BatchSizeExhaustedError(
        f"{name} ran out of memory at every batch size tried{where}, down to "
        f"min_size={options.min_size} (sizes tried: {tried})",
        sizes_tried=tuple(sizes),
    )


def _raise_exhausted(
    error: BatchSizeExhaustedError, caught: CaughtOom, manager: MemoryManager, sizes: list[int]
) -> NoReturn:
    # The last out-of-memory error keeps its traceback: it is the cause the user reads.
    add_oom_note(error, manager, batch_sizes_tried=sizes)
    try:
        raise error from caught.error
    finally:
        # Breaks the cycle frame -> error -> traceback -> frame.
        del error


def _note_size(sizes: list[int], size: int) -> None:
    if not sizes or sizes[-1] != size:
        sizes.append(size)


def _report_to_batch(error: BaseException, size: int, retry: int | None) -> None:
    batch = context.active_batch.get()
    if batch is not None:
        batch._record_oom(
            error, retried=retry is not None, batch_size_reduced=retry is not None and retry < size
        )


def _recover(caught: CaughtOom, manager: MemoryManager) -> None:
    # Runs outside the except block that caught the error, so once the error lets go of
    # the failed call's frames, their tensors are unreachable and can really be freed.
    release_exception_frames(caught.error)
    reclaim_memory(manager)


def _log_retry(name: str, attempt: _Attempt, retry: int) -> None:
    if attempt.regrowing_from is not None:
        logger.info(
            "%s: out of memory trying to grow the batch size to %d; back to %d",
            name,
            attempt.size,
            retry,
        )
    else:
        logger.warning(
            "%s: out of memory at batch size %d; retrying at %d", name, attempt.size, retry
        )


class _AdaptiveRunner:
    """The wrapt wrapper behind one ``@adaptive_batch`` function."""

    def __init__(
        self, options: _Options, signature: _BatchSignature, name: str, is_async: bool
    ) -> None:
        self.options = options
        self.signature = signature
        self.name = name
        self.is_async = is_async
        self.state = AdaptiveBatchState(
            start=options.start,
            factor=options.factor,
            min_size=options.min_size,
            regrow_after=options.regrow_after,
        )

    def __call__(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        self.signature.check_call(self.name, args, kwargs)
        manager = self.options.manager_for_call()
        if self.is_async:
            return self._run_async(wrapped, manager, args, kwargs)
        return self._run(wrapped, manager, args, kwargs)

    def _run(
        self,
        wrapped: Callable[..., Any],
        manager: MemoryManager,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        sizes: list[int] = []
        attempt = self.state._choose()
        while True:
            _note_size(sizes, attempt.size)
            outcome = call_catching_oom(wrapped, attempt.size, *args, **kwargs)
            if not isinstance(outcome, CaughtOom):
                self.state._record_success(attempt)
                return outcome
            retry = self.state._record_oom(attempt)
            _report_to_batch(outcome.error, attempt.size, retry)
            if retry is None:
                self._raise_exhausted(outcome, manager, sizes)
            _log_retry(self.name, attempt, retry)
            _recover(outcome, manager)
            del outcome
            attempt = _Attempt(retry)

    async def _run_async(
        self,
        wrapped: Callable[..., Awaitable[Any]],
        manager: MemoryManager,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        sizes: list[int] = []
        attempt = self.state._choose()
        while True:
            _note_size(sizes, attempt.size)
            outcome = await call_catching_oom_async(wrapped, attempt.size, *args, **kwargs)
            if not isinstance(outcome, CaughtOom):
                self.state._record_success(attempt)
                return outcome
            retry = self.state._record_oom(attempt)
            _report_to_batch(outcome.error, attempt.size, retry)
            if retry is None:
                self._raise_exhausted(outcome, manager, sizes)
            _log_retry(self.name, attempt, retry)
            _recover(outcome, manager)
            del outcome
            attempt = _Attempt(retry)

    def _raise_exhausted(
        self, caught: CaughtOom, manager: MemoryManager, sizes: list[int]
    ) -> NoReturn:
        _raise_exhausted(_exhausted_error(self.name, self.options, sizes), caught, manager, sizes)


# The decorated function and its signature ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _BatchSignature:
    """Where the batch size sits in the decorated function's parameters."""

    name: str
    keyword_allowed: bool
    # Positional arguments a caller may pass after the batch size; None with *args.
    positional_after: int | None

    @classmethod
    def of(cls, target: Any, function: Any) -> tuple[_BatchSignature, inspect.Signature]:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError) as error:
            raise InvalidArgumentTypeError(
                f"adaptive_batch cannot read the parameters of {target!r}: {error}"
            ) from None
        parameters = list(signature.parameters.values())
        index = 1 if _takes_instance(target, function, parameters) else 0
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if len(parameters) <= index or parameters[index].kind not in positional:
            raise InvalidArgumentTypeError(
                f"adaptive_batch needs a function whose first parameter is the batch size, "
                f"which it passes positionally; {target!r} has parameters {signature}"
            )
        batch = parameters[index]
        rest = parameters[index + 1 :]
        if any(parameter.kind is inspect.Parameter.VAR_POSITIONAL for parameter in rest):
            positional_after = None
        else:
            positional_after = sum(1 for parameter in rest if parameter.kind in positional)
        reduced = signature.replace(parameters=parameters[:index] + rest)
        return (
            cls(
                name=batch.name,
                keyword_allowed=batch.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD,
                positional_after=positional_after,
            ),
            reduced,
        )

    def check_call(self, function_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.keyword_allowed and self.name in kwargs:
            raise InvalidArgumentTypeError(
                f"{function_name}() got the batch size argument {self.name!r}, but "
                "adaptive_batch supplies the batch size itself: call it without "
                f"{self.name}=..."
            )
        if self.positional_after is not None and len(args) > self.positional_after:
            raise InvalidArgumentTypeError(
                f"{function_name}() takes {self.positional_after} positional argument(s) "
                f"besides the batch size {self.name!r}, which adaptive_batch supplies, but "
                f"{len(args)} were given; call it without the batch size"
            )


def _takes_instance(target: Any, function: Any, parameters: list[inspect.Parameter]) -> bool:
    """Whether the first parameter is ``self``/``cls`` rather than the batch size."""
    if isinstance(target, classmethod):
        return True
    if isinstance(target, staticmethod) or not inspect.isfunction(function):
        return False
    # A function defined in a class body has a qualified name like "Colorizer.run";
    # one defined in a function has "outer.<locals>.run".
    qualified = function.__qualname__.split(".")
    in_class_body = len(qualified) >= 2 and qualified[-2] != "<locals>"
    return in_class_body and bool(parameters) and parameters[0].name in ("self", "cls")


def _remove_parameter(signature: inspect.Signature, name: str) -> inspect.Signature:
    return signature.replace(
        parameters=[
            parameter for parameter in signature.parameters.values() if parameter.name != name
        ]
    )


class _BoundAdaptiveBatchFunction(wrapt.BoundFunctionWrapper[..., Any]):
    @property
    def adaptive_state(self) -> AdaptiveBatchState:
        """The decorated function's learned size and counters (shared by every instance)."""
        return cast(_AdaptiveRunner, self._self_wrapper).state

    @property
    def __signature__(self) -> inspect.Signature:
        runner = cast(_AdaptiveRunner, self._self_wrapper)
        return _remove_parameter(inspect.signature(self.__wrapped__), runner.signature.name)

    @property
    def __func__(self) -> Any:
        # inspect.signature() of a bound method reads the signature of __func__ and drops
        # its first parameter; the unbound wrapper presents the signature without the batch
        # size, so the bound one comes out right.
        return self._self_parent


class AdaptiveBatchFunction(wrapt.FunctionWrapper[..., Any]):
    """A function decorated with ``@adaptive_batch``; ``adaptive_state`` holds what it learned.

    Its signature (``inspect.signature``) is the function's without the batch size.
    """

    __bound_function_wrapper__ = _BoundAdaptiveBatchFunction

    def __init__(self, wrapped: Any, runner: _AdaptiveRunner, signature: inspect.Signature) -> None:
        super().__init__(wrapped, runner)
        self._self_signature = signature

    @property
    def adaptive_state(self) -> AdaptiveBatchState:
        """The decorated function's learned size and counters, updated in place."""
        return cast(_AdaptiveRunner, self._self_wrapper).state

    @property
    def __signature__(self) -> inspect.Signature:
        return self._self_signature


def _underlying_function(target: Any) -> Any:
    if isinstance(target, (classmethod, staticmethod)):
        return target.__func__
    return target


def adaptive_batch(
    function: None = None,
    /,
    *,
    start: int | None = None,
    factor: float = 0.5,
    min_size: int = 1,
    regrow_after: int | None = None,
    manager: MemoryManager | None = None,
    device: DeviceLike = None,
) -> Callable[[Function], Function]:
    """Supply the batch size to a function, and shrink it when memory runs out.

    The decorated function's first parameter (after ``self``/``cls`` for methods) is the
    batch size; memscope passes it, so callers leave it out::

        @adaptive_batch(start=32)
        def colorize(batch_size, images):
            ...

        colorize(images)            # runs colorize(32, images), or less if memory runs out

    On an out-of-memory error (see :func:`~memscope.is_oom_error`) the failed call's memory
    is freed (its frames released, ``gc.collect()``, the manager's ``clear_cache()``) and
    the call is retried at ``int(size * factor)`` (always smaller, never below
    ``min_size``). The size that worked is kept for later calls. When ``min_size`` fails
    too, :class:`~memscope.BatchSizeExhaustedError` naming the sizes tried is raised from
    the last out-of-memory error, with a note of the device's memory figures. Other
    exceptions pass through unchanged.

    Args:
        start: the first batch size, and the largest ever used (an int >= 1); required.
        factor: what a size is multiplied by after an out-of-memory error (0 < factor < 1).
        min_size: the smallest batch size tried (1 <= min_size <= start).
        regrow_after: after this many successes in a row at a reduced size, try a larger
            one (``size / factor``, at most ``start``). If that runs out of memory, the
            smaller size is used again and the next attempt at the larger one waits twice
            as long. ``None`` (the default) never grows.
        manager: the MemoryManager whose cache is cleared. Without one, calls inside a
            ``managed_batch`` use the batch's manager, and others share one default
            manager per ``device``, made at the first call.
        device: the device of the default manager; ``None`` auto-detects.

    Works on functions, methods, classmethods, staticmethods and ``async def`` functions
    (chosen when decorating). The learned size and counters are in the decorated function's
    ``adaptive_state``; for methods they belong to the function, shared by all instances.
    Passing the batch size yourself (by its name, or as one positional argument too many)
    raises :class:`~memscope.InvalidArgumentTypeError`, a ``TypeError``.
    """
    if function is not None or start is None:
        raise InvalidArgumentTypeError(
            "adaptive_batch needs the first batch size to try: use @adaptive_batch(start=...)"
        )
    options = _Options.checked(
        start=start,
        factor=factor,
        min_size=min_size,
        regrow_after=regrow_after,
        manager=manager,
        device=device,
    )

    def decorate(target: Function) -> Function:
        return _decorate(target, options)

    return decorate


def _decorate(target: Function, options: _Options) -> Function:
    function = _underlying_function(target)
    if not callable(function):
        raise InvalidArgumentTypeError(
            f"adaptive_batch can only decorate a callable, got {target!r}"
        )
    if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
        raise InvalidArgumentTypeError(
            f"adaptive_batch cannot decorate the generator function {target!r}: an "
            "out-of-memory error half-way through a generator cannot be retried"
        )
    batch_signature, reduced = _BatchSignature.of(target, function)
    name = getattr(function, "__qualname__", repr(target))
    runner = _AdaptiveRunner(options, batch_signature, name, inspect.iscoroutinefunction(function))
    return cast(Function, AdaptiveBatchFunction(target, runner, reduced))


# Chunks ----------------------------------------------------------------------------------


def _check_items(items: object) -> int:
    if isinstance(items, torch.Tensor):
        if items.dim() == 0:
            raise InvalidArgumentTypeError(
                "items must have at least one dimension to be split into chunks, "
                f"got a 0-dimensional tensor {items!r}"
            )
        return int(items.shape[0])
    if isinstance(items, Sequence):
        return len(items)
    raise InvalidArgumentTypeError(
        "items must be a sequence (a list, a tuple) or a tensor, so that it can be sliced "
        f"into chunks; got {type(items).__name__}"
    )


def _check_combine(combine: object) -> Combine:
    if combine in ("concat", "chunks") or callable(combine):
        return cast(Combine, combine)
    if isinstance(combine, str):
        raise InvalidArgumentError(
            f"combine must be 'concat', 'chunks' or a function, got {combine!r}"
        )
    raise InvalidArgumentTypeError(
        f"combine must be 'concat', 'chunks' or a function, got {combine!r} "
        f"of type {type(combine).__name__}"
    )


def _check_concatenable(result: object, first: object) -> None:
    """Whether ``result`` joins the results so far; ``first`` is the first of them.

    Checked as each result arrives, so a mismatch fails at the first chunk, not the last.
    """
    if isinstance(result, torch.Tensor) and result.dim() == 0:
        raise InvalidArgumentTypeError(
            "combine='concat' cannot concatenate 0-dimensional tensors; a chunk returned "
            f"{result!r}. Pass combine='chunks' or a function"
        )
    if isinstance(first, torch.Tensor) and isinstance(result, torch.Tensor):
        return
    if isinstance(first, (list, tuple)) and isinstance(result, (list, tuple)):
        return
    raise InvalidArgumentTypeError(
        "combine='concat' needs every chunk's result to be a tensor, or every one to be a "
        f"list or tuple; got {type(first).__name__} then {type(result).__name__}. "
        "Pass combine='chunks' to get the per-chunk results, or a function to combine them"
    )


def _combined(results: list[Any], combine: Combine) -> Any:
    if callable(combine):
        return combine(results)
    if combine == "chunks" or not results:
        return results
    if results and isinstance(results[0], torch.Tensor):
        return torch.cat(results)
    return [item for result in results for item in result]


class _ChunkRun:
    """The bookkeeping of one process_in_chunks call."""

    def __init__(self, function: Callable[..., Any], items: Any, options: _Options) -> None:
        self.function = function
        self.items = items
        self.total = _check_items(items)
        self.options = options
        self.name = getattr(function, "__qualname__", repr(function))
        self.state = AdaptiveBatchState(
            start=options.start,
            factor=options.factor,
            min_size=options.min_size,
            regrow_after=options.regrow_after,
        )
        self.manager = options.manager_for_call()
        self.position = 0
        self.results: list[Any] = []
        self.sizes: list[int] = []

    def next_attempt(self) -> tuple[_Attempt, Any]:
        attempt = self.state._choose(limit=self.total - self.position)
        _note_size(self.sizes, attempt.size)
        return attempt, self.items[self.position : self.position + attempt.size]

    def succeeded(self, attempt: _Attempt, result: Any, combine: Combine) -> None:
        if combine == "concat":
            _check_concatenable(result, self.results[0] if self.results else result)
        self.results.append(result)
        self.position += attempt.size
        self.state._record_success(attempt)

    def failed(self, attempt: _Attempt, caught: CaughtOom) -> None:
        retry = self.state._record_oom(attempt)
        _report_to_batch(caught.error, attempt.size, retry)
        if retry is None:
            self._raise_exhausted(caught)
        _log_retry(self.name, attempt, retry)
        _recover(caught, self.manager)

    def _raise_exhausted(self, caught: CaughtOom) -> NoReturn:
        where = f" for the chunk at item {self.position} (of {self.total})"
        error = _exhausted_error(self.name, self.options, self.sizes, where)
        _raise_exhausted(error, caught, self.manager, self.sizes)


def _checked_chunk_options(
    start: object,
    factor: object,
    min_size: object,
    regrow_after: object,
    manager: object,
    device: DeviceLike,
) -> _Options:
    return _Options.checked(
        start=start,
        factor=factor,
        min_size=min_size,
        regrow_after=regrow_after,
        manager=manager,
        device=device,
    )


def process_in_chunks(
    function: Callable[[Any], Any],
    items: Any,
    *,
    start: int,
    factor: float = 0.5,
    min_size: int = 1,
    regrow_after: int | None = None,
    combine: Combine = "concat",
    manager: MemoryManager | None = None,
    device: DeviceLike = None,
) -> Any:
    """Call ``function(chunk)`` on consecutive slices of ``items``; shrink them on OOM.

    ``items`` is a sequence (list, tuple) or a tensor (sliced along its first dimension).
    Chunks start ``start`` items long. When a chunk runs out of memory, its memory is freed
    and the same chunk is retried shorter (``int(size * factor)``, never below
    ``min_size``), and the rest continue at that size: no item is skipped, and every item is
    in exactly one chunk that succeeded. (A call that failed may have done part of its work
    before running out of memory; its result is dropped.) ``regrow_after``, ``manager`` and
    ``device`` work as for :func:`adaptive_batch`; what is learned lasts for this call.

    How the results of the chunks come back, by ``combine``:

    * ``"concat"`` (the default): one result whatever the chunk sizes were. Tensors are
      joined with ``torch.cat`` along the first dimension; lists and tuples are joined
      into one flat list. Any other result type raises
      :class:`~memscope.InvalidArgumentTypeError` as soon as the first chunk returns it.
    * ``"chunks"``: the list of per-chunk results, in order (its length depends on the
      chunk sizes, and so on memory).
    * a function: called with that list; its return value is returned.

    Empty ``items`` call nothing and give ``[]`` (whatever ``combine`` is, but a function,
    which gets ``[]``). When ``min_size`` runs out of memory too,
    :class:`~memscope.BatchSizeExhaustedError` is raised from the last out-of-memory error.
    """
    options = _checked_chunk_options(start, factor, min_size, regrow_after, manager, device)
    combine = _check_combine(combine)
    if inspect.iscoroutinefunction(function):
        raise InvalidArgumentTypeError(
            f"{function!r} is a coroutine function: use process_in_chunks_async for it"
        )
    if not callable(function):
        raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
    run = _ChunkRun(function, items, options)
    while run.position < run.total:
        attempt, chunk = run.next_attempt()
        outcome = call_catching_oom(function, chunk)
        del chunk
        if isinstance(outcome, CaughtOom):
            run.failed(attempt, outcome)
            del outcome
        else:
            run.succeeded(attempt, outcome, combine)
    return _combined(run.results, combine)


async def process_in_chunks_async(
    function: Callable[[Any], Awaitable[Any]],
    items: Any,
    *,
    start: int,
    factor: float = 0.5,
    min_size: int = 1,
    regrow_after: int | None = None,
    combine: Combine = "concat",
    manager: MemoryManager | None = None,
    device: DeviceLike = None,
) -> Any:
    """:func:`process_in_chunks` for a function that returns an awaitable; awaits each chunk."""
    options = _checked_chunk_options(start, factor, min_size, regrow_after, manager, device)
    combine = _check_combine(combine)
    if not callable(function):
        raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
    run = _ChunkRun(function, items, options)

    async def call(chunk: Any) -> Any:
        returned = function(chunk)
        if not inspect.isawaitable(returned):
            raise InvalidArgumentTypeError(
                f"process_in_chunks_async needs a function that returns an awaitable; "
                f"{function!r} returned {type(returned).__name__}: use process_in_chunks"
            )
        return await returned

    while run.position < run.total:
        attempt, chunk = run.next_attempt()
        outcome = await call_catching_oom_async(call, chunk)
        del chunk
        if isinstance(outcome, CaughtOom):
            run.failed(attempt, outcome)
            del outcome
        else:
            run.succeeded(attempt, outcome, combine)
    return _combined(run.results, combine)
