"""``@auto_clear``: clean up device memory around a per-item function.

Outside a batch, the decorator counts calls of the decorated function and, after every
``every``-th call (and after any call that raises), runs a cleanup step. Inside a
``managed_batch`` it is a client of the batch: it reports its calls, and the batch's one
cadence does the cleaning. It is built on wrapt, so it works the same on functions, methods,
classmethods, staticmethods, callable objects and ``async def`` functions.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast, overload

from memscope import _context as context, _wrapt as wrapt
from memscope._cleanup import CleanupOutcome, failures, run_cleanup_safely
from memscope._context import ActiveBatch
from memscope._devices import as_torch_device, present_torch_device
from memscope._ledger import CleanupStats, Ledger
from memscope._pickling import PicklableBoundFunctionWrapper, PicklableFunctionWrapper
from memscope._recovery import recover_from_oom
from memscope._validation import check_fraction, check_int
from memscope.exceptions import InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom import add_oom_note, is_oom_error, release_exception_frames
from memscope.policies import DEFAULT_CACHE_POLICY, check_cache_policy
from memscope.typing import CachePolicy, DeviceLike

__all__ = ["AutoClearFunction", "CleanupStats", "auto_clear"]

Parameters = ParamSpec("Parameters")
Result = TypeVar("Result")
BoundParameters = ParamSpec("BoundParameters")
BoundResult = TypeVar("BoundResult")
Instance = TypeVar("Instance")
Enabled = bool | Callable[[], bool]
_active_batch_get = context.active_batch.get
_tracked_item_get = context.tracked_item.get
_tracked_item_set = context.tracked_item.set
_tracked_item_reset = context.tracked_item.reset
logger = logging.getLogger("memscope")


class _CleanupCadence:
    """The per-function state behind one ``@auto_clear``: options, call count, statistics.

    Its ``call``, ``call_async`` and ``call_generator`` methods are the wrapt wrappers of
    plain, coroutine and generator functions; the right one is picked once, when decorating.
    (A bound method is a much cheaper wrapt wrapper than a callable object.)

    Inside a ``managed_batch`` that cleans this function's device, a call only reports to
    the batch, which owns the one cleanup cadence; elsewhere the function keeps its own.
    """

    def __init__(
        self,
        *,
        every: int,
        device: DeviceLike,
        memory_threshold: float,
        manager: MemoryManager | None,
        cache_policy: CachePolicy | None,
        oom_retries: int,
        name: str,
    ) -> None:
        self.every = every
        self.oom_retries = oom_retries
        # Parsed once here (parsing touches no device), compared at each cleanup.
        self.torch_device = None if device is None else as_torch_device(device)
        self.memory_threshold = memory_threshold
        self.manager = manager
        self.cache_policy = cache_policy
        self.name = name
        self.ledger = Ledger()
        self.stats = CleanupStats(self.ledger)
        # The last batch asked about, and whether it owns this function's cleanup.
        self._owner: tuple[weakref.ref[Any], bool] | None = None

    # The drivers: a sync and an async loop that differ only by `await`. What happens after
    # an attempt is decided in one place, _after_failure.

    def call(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        batch = _active_batch_get()
        if batch is not None and not batch.active:
            batch = context.current()  # ended, or left in another context
        # Made outside any item of the batch, this call is the item: calls it makes are
        # part of it (an item is counted by the outermost memscope layer that sees it).
        as_item = batch is not None and _tracked_item_get() is not batch
        retries_left = self.oom_retries
        while True:
            token = _tracked_item_set(batch) if as_item else None
            failure: BaseException | None = None
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as error:
                failure = error
            finally:
                if token is not None:
                    _tracked_item_reset(token)
            if failure is None:
                # The hot path, inlined: one lock, and a cleanup only when one is due.
                ledger = self.ledger
                lock = ledger.lock
                lock.acquire()  # `+=` cannot raise, and this spares the `with` protocol
                ledger.calls += 1
                calls = ledger.calls
                lock.release()
                if batch is None or not batch.active:
                    if calls % self.every == 0:
                        self._clean_up(None)
                    return result
                batch._record_call(failed=False)
                if not self._batch_owns_cleanup(batch) and calls % self.every == 0:
                    self._clean_up(batch)
                return result
            # Outside the except block: nothing but `failure` holds the failed attempt.
            self._after_failure(failure, retries_left, batch)
            del failure
            retries_left -= 1

    async def call_async(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        batch = context.current()
        as_item = batch is not None and _tracked_item_get() is not batch
        retries_left = self.oom_retries
        while True:
            token = _tracked_item_set(batch) if as_item else None
            failure: BaseException | None = None
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as error:
                failure = error
            finally:
                if token is not None:
                    _tracked_item_reset(token)
            if failure is None:
                self.finish_call(batch, failed=False)
                return result
            self._after_failure(failure, retries_left, batch)
            del failure
            retries_left -= 1

    def call_generator(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Generator[Any, Any, Any]:
        # Neither generator runs any body until first advanced, so no cleanup happens
        # before the body runs, and one closed before it started never cleans up.
        return self._drive(wrapped(*args, **kwargs), context.current())

    def _drive(self, generator: Generator[Any, Any, Any], batch: Any) -> Generator[Any, Any, Any]:
        failed = False
        try:
            return (yield from generator)
        except GeneratorExit:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            self.finish_call(batch, failed=failed)

    # The decision step.

    def _after_failure(
        self, failure: BaseException, retries_left: int, batch: ActiveBatch | None
    ) -> None:
        """Raise ``failure``, unless it is an out-of-memory error worth another attempt;
        then free the failed attempt's memory for it.

        Only out-of-memory errors are retried, ``oom_retries`` times. The last one leaves
        with its traceback intact and a note with the device's figures at failure.
        """
        if batch is not None and not batch.active:
            batch = None  # the call outlived its batch: it counts into no batch
        oom = is_oom_error(failure)
        retry = oom and retries_left > 0
        if oom:
            self.ledger.oom(failure, retried=retry)
            if batch is not None:
                batch._record_oom(failure, retried=retry)
        if not retry:
            manager = self._cleanup_manager(batch) if oom else None
            if manager is not None:
                add_oom_note(failure, manager)
            self.finish_call(batch, failed=True)
            try:
                raise failure
            finally:
                # Breaks the cycle frame -> failure -> traceback -> frame.
                del failure
        logger.info(
            "%s ran out of memory; freeing memory and retrying (%d retries left)",
            self.name,
            retries_left - 1,
        )
        manager = self._cleanup_manager(batch)
        if manager is None:
            release_exception_frames(failure)
            self._record(batch, None)
        else:
            self.ledger.cleanup(recover_from_oom(failure, manager, batch))

    # Counting and cleaning.

    def finish_call(self, batch: ActiveBatch | None, *, failed: bool) -> None:
        """Count one finished call; clean up if this function owns the cadence and it is due
        (always after a failure). A call that outlived its batch counts into no batch."""
        if batch is not None and not batch.active:
            batch = None
        ledger = self.ledger
        with ledger.lock:
            ledger.calls += 1
            ledger.failures += int(failed)
            due = failed or ledger.calls % self.every == 0
        if batch is not None:
            batch._record_call(failed=failed)
            if self._batch_owns_cleanup(batch):
                return
        if due:
            self._clean_up(batch)

    def _batch_owns_cleanup(self, batch: ActiveBatch) -> bool:
        """Whether ``batch`` cleans this function's device: the device its manager (given,
        or made for ``device``) resolves to is the batch's, by type and index."""
        if self.manager is None and self.torch_device is None:
            return True
        known = self._owner
        if known is not None and known[0]() is batch:
            return known[1]
        try:
            if self.manager is not None:
                owns = self.manager.resolved_device == batch.manager.resolved_device
            else:
                assert self.torch_device is not None
                owns = context.same_device(self.torch_device, batch.manager)
        except Exception:
            owns = False  # a device that cannot be resolved is not the batch's
        self._owner = (weakref.ref(batch), owns)
        return owns

    def _clean_up(self, batch: ActiveBatch | None) -> None:
        manager = self._cleanup_manager(batch)
        if manager is None:
            self._record(batch, None)
            return
        policy = DEFAULT_CACHE_POLICY if self.cache_policy is None else self.cache_policy
        self._record(batch, run_cleanup_safely(manager, f"a call of {self.name}", policy))

    def _record(self, batch: ActiveBatch | None, outcome: CleanupOutcome | None) -> None:
        if batch is not None:
            batch._record_cleanup(outcome)
        self.ledger.cleanup(outcome)

    def _cleanup_manager(self, batch: ActiveBatch | None) -> MemoryManager | None:
        """The manager to clean up through, or ``None`` (logged) when none can be had.

        A device that cannot be resolved at call time (a launcher's ``LOCAL_RANK`` naming a
        GPU this process cannot see, say) is a failed cleanup: it never replaces the
        function's result or exception.
        """
        try:
            return context.manager_for(
                self.manager, self.torch_device, batch, self.memory_threshold
            )
        except Exception:
            failures.failed(f"finding the memory manager for a call of {self.name}")
            return None


def _cadence_of(wrapper: object) -> _CleanupCadence:
    return cast(_CleanupCadence, cast(Any, wrapper).__self__)


class _BoundAutoClearFunction(
    PicklableBoundFunctionWrapper, wrapt.BoundFunctionWrapper[Parameters, Result]
):
    @property
    def cleanup_stats(self) -> CleanupStats:
        """The decorated function's statistics (for methods, shared by every instance)."""
        return _cadence_of(self._self_wrapper).stats


class AutoClearFunction(PicklableFunctionWrapper, wrapt.FunctionWrapper[Parameters, Result]):
    """A function decorated with ``@auto_clear``; ``cleanup_stats`` holds its statistics.

    Its type keeps the function's parameters and return type, so ``mypy`` checks calls of
    it as of the function itself.
    """

    # wrapt builds the bound wrapper from this class when a method is looked up.
    __bound_function_wrapper__ = cast(Any, _BoundAutoClearFunction)

    @property
    def cleanup_stats(self) -> CleanupStats:
        """The decorated function's statistics, updated in place."""
        return _cadence_of(self._self_wrapper).stats

    if TYPE_CHECKING:
        # What a type checker sees when the function is a method looked up on an instance:
        # the bound method, without ``self``, with its statistics.
        @overload
        def __get__(
            self: AutoClearFunction[Concatenate[Instance, BoundParameters], BoundResult],
            instance: Instance,
            owner: type[Any] | None = None,
            /,
        ) -> _BoundAutoClearFunction[BoundParameters, BoundResult]: ...

        @overload
        def __get__(
            self, instance: None, owner: type[Any] | None = None, /
        ) -> AutoClearFunction[Parameters, Result]: ...

        def __get__(self, instance: Any, owner: type[Any] | None = None, /) -> Any: ...


def _underlying_function(target: Any) -> Any:
    """The function whose kind (plain, coroutine, generator) decides the wrapper's form."""
    if isinstance(target, (classmethod, staticmethod)):
        return target.__func__
    if not inspect.isroutine(target) and callable(target):
        return type(target).__call__
    return target


def _check_enabled(enabled: object) -> Enabled:
    if isinstance(enabled, bool) or callable(enabled):
        return enabled
    raise InvalidArgumentTypeError(
        f"enabled must be a bool or a zero-argument callable, got {enabled!r}"
    )


@overload
def auto_clear(wrapped: Callable[Parameters, Result]) -> AutoClearFunction[Parameters, Result]: ...


@overload
def auto_clear(
    wrapped: None = None,
    *,
    every: int = 5,
    device: DeviceLike = None,
    memory_threshold: float | None = None,
    manager: MemoryManager | None = None,
    enabled: Enabled = True,
    cache_policy: CachePolicy | None = None,
    oom_retries: int = 0,
) -> Callable[[Callable[Parameters, Result]], AutoClearFunction[Parameters, Result]]: ...


def auto_clear(
    wrapped: Callable[Parameters, Result] | None = None,
    *,
    every: int = 5,
    device: DeviceLike = None,
    memory_threshold: float | None = None,
    manager: MemoryManager | None = None,
    enabled: Enabled = True,
    cache_policy: CachePolicy | None = None,
    oom_retries: int = 0,
) -> (
    AutoClearFunction[Parameters, Result]
    | Callable[[Callable[Parameters, Result]], AutoClearFunction[Parameters, Result]]
):
    """Clean up after every ``every``-th call; inside a ``managed_batch``, report to it.

    Use it bare (``@auto_clear``), empty (``@auto_clear()``) or with options; every option
    works in every form.

    Outside a batch, a cleanup step is the cache policy's clear, then the threshold GC.
    Inside a ``managed_batch`` that cleans the same device there is one cadence, the batch's:
    each call made outside a tracked item counts as one item of the batch, a call inside a
    tracked item is part of it, and the function runs no cleanup of its own (so
    ``managed_batch(every=5)`` around ``@auto_clear(every=5)`` cleans every 5 items, not
    twice as often). OOM retries still free memory, and the batch's report counts it.

    Args:
        every: outside a batch, clean up after every this many calls (an int >= 1). A call
            that raises cleans up whatever the count.
        device: the device of the default manager; ``None`` auto-detects.
        memory_threshold: the default manager's GC threshold (0.8 if not given).
        manager: the manager to clean up through; then ``device`` and ``memory_threshold``
            belong to it and cannot be given here. Without one, calls inside a
            ``managed_batch`` use the batch's manager, and other calls share one default
            manager per device and threshold, made at the first cleanup.
        enabled: a bool, or a zero-argument callable asked at every call; while it is
            false, calls pass straight through, uncounted.
        cache_policy: when the function's own cleanup empties the cache; ``None`` uses
            :class:`ClearWhenUseful` (only when the cache holds a share of the device that
            no tensor uses, or usage is at the threshold).
        oom_retries: on an out-of-memory error, free memory and call again, up to this
            many times. Memory is freed outside the ``except`` block, after dropping the
            failed attempt's traceback, so the retry really has the memory back; after the
            last failed retry the last error propagates unchanged but for a note with the
            device's figures. Not for generator functions.

    Calls are counted per decorated function across all threads; for methods the count
    belongs to the function and is shared by all instances. The function's result and
    exception come back unchanged; a failing cleanup is logged and never replaces them.
    Statistics are on the decorated function as ``cleanup_stats``.
    """
    if wrapped is not None and not (
        callable(wrapped) or isinstance(wrapped, (classmethod, staticmethod))
    ):
        raise InvalidArgumentTypeError(
            f"auto_clear decorates a function, got {wrapped!r} of type {type(wrapped).__name__}; "
            "options are keywords: @auto_clear(every=5)"
        )
    every = check_int(every, "every", minimum=1)
    oom_retries = check_int(oom_retries, "oom_retries", minimum=0)
    threshold = (
        DEFAULT_MEMORY_THRESHOLD
        if memory_threshold is None
        else check_fraction(memory_threshold, "memory_threshold")
    )
    enabled = _check_enabled(enabled)
    if cache_policy is not None:
        check_cache_policy(cache_policy)
    context.check_manager(manager, device=device, memory_threshold=memory_threshold)
    if device is not None:
        # An explicit device that is not there is refused now, not after the first call
        # has run (touches no device beyond asking whether it exists).
        present_torch_device(device)
    if wrapped is None:
        decorate = functools.partial(
            auto_clear,
            every=every,
            device=device,
            memory_threshold=memory_threshold,
            manager=manager,
            enabled=enabled,
            cache_policy=cache_policy,
            oom_retries=oom_retries,
        )
        return cast(
            Callable[[Callable[Parameters, Result]], AutoClearFunction[Parameters, Result]],
            decorate,
        )

    function = _underlying_function(wrapped)
    if inspect.isasyncgenfunction(function):
        raise InvalidArgumentTypeError(
            f"auto_clear cannot decorate the async generator function {wrapped!r}: "
            "decorate the function that consumes it, or wrap the loop in managed_batch"
        )
    cadence = _CleanupCadence(
        every=every,
        device=device,
        memory_threshold=threshold,
        manager=manager,
        cache_policy=cache_policy,
        oom_retries=oom_retries,
        name=getattr(function, "__qualname__", repr(wrapped)),
    )
    if inspect.iscoroutinefunction(function):
        wrapper: Callable[..., Any] = cadence.call_async
    elif inspect.isgeneratorfunction(function):
        if oom_retries:
            raise InvalidArgumentTypeError(
                f"oom_retries cannot be used on the generator function {wrapped!r}: a "
                "generator cannot be rerun from the start once it has yielded"
            )
        wrapper = cadence.call_generator
    else:
        wrapper = cadence.call
    # wrapt checks a non-None `enabled` at every call; "always on" is cheaper as None.
    switch = None if enabled is True else enabled
    return AutoClearFunction(wrapped, wrapper, switch)
