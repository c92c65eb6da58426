"""``@auto_clear``: clean up device memory around a per-item function.

The decorator counts calls of the decorated function and, after every ``every``-th call
(and after any call that raises), clears the cache and runs the threshold GC. It is built on
wrapt, so it works the same on functions, methods, classmethods, staticmethods, callable
objects and ``async def`` functions.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any, TypeVar, cast, overload

import wrapt

from memscope import _context as context
from memscope._cleanup import run_cleanup_safely
from memscope._counter import AtomicCounter
from memscope._devices import as_torch_device
from memscope._validation import check_fraction, check_int
from memscope.exceptions import InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom._detection import is_oom_error, reclaim_memory, release_exception_frames
from memscope.oom._diagnosis import add_oom_note
from memscope.policies import ClearAlways, check_cache_policy
from memscope.typing import CachePolicy, DeviceLike

__all__ = ["AutoClearFunction", "CleanupStats", "auto_clear"]

Function = TypeVar("Function", bound=Callable[..., Any])
Enabled = bool | Callable[[], bool]
_CLEAR_ALWAYS = ClearAlways()
_active_batch = context.active_batch.get
logger = logging.getLogger("memscope")


class CleanupStats:
    """What ``@auto_clear`` has done for one decorated function.

    The object is created once per decorated function and updated in place, so a reference
    taken once (by an outer decorator, say) stays current.
    """

    __slots__ = (
        "_calls",
        "cleanup_failures",
        "cleanups",
        "errors",
        "gc_runs",
        "oom_retries",
        "ooms",
    )

    def __init__(self) -> None:
        self._calls = AtomicCounter()
        self.errors = 0
        self.cleanups = 0
        self.gc_runs = 0
        self.cleanup_failures = 0
        self.ooms = 0
        self.oom_retries = 0

    @property
    def calls(self) -> int:
        """Calls made while enabled, failing ones included."""
        return self._calls.value

    def as_dict(self) -> dict[str, int]:
        """The counts as a dict."""
        return {
            "calls": self.calls,
            "errors": self.errors,
            "cleanups": self.cleanups,
            "gc_runs": self.gc_runs,
            "cleanup_failures": self.cleanup_failures,
            "ooms": self.ooms,
            "oom_retries": self.oom_retries,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value}" for name, value in self.as_dict().items())
        return f"CleanupStats({fields})"


class _CleanupCadence:
    """The per-function state behind one ``@auto_clear``: options, call count, statistics.

    Its ``call``, ``call_async`` and ``call_generator`` methods are the wrapt wrappers of
    plain, coroutine and generator functions; the right one is picked once, when decorating.
    (A bound method is a much cheaper wrapt wrapper than a callable object.)
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
        self.device = device
        # Parsed once here (parsing touches no device), compared at each cleanup.
        self.torch_device = None if device is None else as_torch_device(device)
        self.memory_threshold = memory_threshold
        self.manager = manager
        self.cache_policy = cache_policy
        self.name = name
        self.stats = CleanupStats()
        self._lock = threading.Lock()

    def call(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        batch = _active_batch()
        if self.oom_retries:
            return self._call_retrying(wrapped, args, kwargs, batch)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as error:
            failure = error
        else:
            # The hot path: no lock, one atomic increment, cleanup only when due.
            if batch is not None:
                batch._record_call(failed=False)
            if self.stats._calls.increment() % self.every == 0:
                self._clean_up(batch)
            return result
        # Cleanup runs here, after the except block has been left.
        self._finish_failed_call(batch)
        try:
            raise failure
        finally:
            # Breaks the cycle frame -> failure -> traceback -> frame.
            del failure

    def _call_retrying(
        self, wrapped: Callable[..., Any], args: Any, kwargs: Any, batch: Any
    ) -> Any:
        retries_left = self.oom_retries
        while True:
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as error:
                failure = error
            else:
                self.finish_call(batch, failed=False)
                return result
            # Outside the except block: nothing but `failure` holds the failed attempt.
            self._raise_or_prepare_retry(failure, retries_left, batch)
            del failure
            retries_left -= 1

    async def call_async(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        batch = _active_batch()
        retries_left = self.oom_retries
        while True:
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as error:
                failure = error
            else:
                self.finish_call(batch, failed=False)
                return result
            self._raise_or_prepare_retry(failure, retries_left, batch)
            del failure
            retries_left -= 1

    def _raise_or_prepare_retry(
        self, failure: BaseException, retries_left: int, batch: Any
    ) -> None:
        """Raise ``failure``, unless it is an out-of-memory error worth another attempt;
        then free the failed attempt's memory for it."""
        if not self._retryable(failure, retries_left, batch):
            self._finish_failed_call(batch)
            try:
                raise failure
            finally:
                del failure
        reclaim_memory(self._manager_for(batch))

    def _retryable(self, failure: BaseException, retries_left: int, batch: Any) -> bool:
        """Whether to call again after ``failure``; if so, let go of the failed attempt.

        Only out-of-memory errors are retried, ``oom_retries`` times. The last one leaves
        with its traceback intact and a note with the device's figures at failure.
        """
        if not is_oom_error(failure):
            return False
        retry = retries_left > 0
        with self._lock:
            self.stats.ooms += 1
            self.stats.oom_retries += int(retry)
        if batch is not None:
            batch._record_oom(failure, retried=retry)
        if not retry:
            add_oom_note(failure, self._manager_for(batch))
            return False
        logger.info(
            "%s ran out of memory; freeing memory and retrying (%d retries left)",
            self.name,
            retries_left - 1,
        )
        release_exception_frames(failure)
        return True

    def call_generator(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Generator[Any, Any, Any]:
        # Neither generator runs any body until first advanced, so no cleanup happens
        # before the body runs, and one closed before it started never cleans up.
        return self._drive(wrapped(*args, **kwargs), _active_batch())

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

    def finish_call(self, batch: Any, *, failed: bool) -> None:
        """Count one finished call and clean up if it is due (always after a failure)."""
        if failed:
            self._finish_failed_call(batch)
            return
        if batch is not None:
            batch._record_call(failed=False)
        if self.stats._calls.increment() % self.every == 0:
            self._clean_up(batch)

    def _finish_failed_call(self, batch: Any) -> None:
        self.stats._calls.increment()
        with self._lock:
            self.stats.errors += 1
        if batch is not None:
            batch._record_call(failed=True)
        self._clean_up(batch)

    def _clean_up(self, batch: Any) -> None:
        manager = self._manager_for(batch)
        policy = self.cache_policy
        if policy is None:
            policy = _CLEAR_ALWAYS if batch is None else batch.cache_policy
        outcome = run_cleanup_safely(manager, f"a call of {self.name}", policy)
        with self._lock:
            if outcome is None:
                self.stats.cleanup_failures += 1
            else:
                self.stats.cleanups += 1
                self.stats.gc_runs += outcome.gc_runs
        if batch is not None and manager is batch.manager:
            batch._record_cleanup(outcome)

    def _manager_for(self, batch: Any) -> MemoryManager:
        return context.manager_for(self.manager, self.torch_device, batch, self.memory_threshold)


def _cadence_of(wrapper: object) -> _CleanupCadence:
    return cast(_CleanupCadence, cast(Any, wrapper).__self__)


class _BoundAutoClearFunction(wrapt.BoundFunctionWrapper[..., Any]):
    @property
    def cleanup_stats(self) -> CleanupStats:
        """The decorated function's statistics (for methods, shared by every instance)."""
        return _cadence_of(self._self_wrapper).stats


class AutoClearFunction(wrapt.FunctionWrapper[..., Any]):
    """A function decorated with ``@auto_clear``; ``cleanup_stats`` holds its statistics."""

    __bound_function_wrapper__ = _BoundAutoClearFunction

    @property
    def cleanup_stats(self) -> CleanupStats:
        """The decorated function's statistics, updated in place."""
        return _cadence_of(self._self_wrapper).stats


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
def auto_clear(wrapped: Function) -> Function: ...


@overload
def auto_clear(
    wrapped: None = None,
    *,
    every: int = 5,
    device: DeviceLike = None,
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
    manager: MemoryManager | None = None,
    enabled: Enabled = True,
    cache_policy: CachePolicy | None = None,
    oom_retries: int = 0,
) -> Callable[[Function], Function]: ...


def auto_clear(
    wrapped: Function | None = None,
    *,
    every: int = 5,
    device: DeviceLike = None,
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
    manager: MemoryManager | None = None,
    enabled: Enabled = True,
    cache_policy: CachePolicy | None = None,
    oom_retries: int = 0,
) -> Function | Callable[[Function], Function]:
    """Clear the cache and run the threshold GC after every ``every``-th call.

    Use it bare (``@auto_clear``), empty (``@auto_clear()``) or with options; every option
    works in every form.

    Args:
        every: clean up after every this many calls (an int >= 1). A call that raises
            cleans up whatever the count.
        device: the device of the default manager; ``None`` auto-detects.
        memory_threshold: the default manager's GC threshold.
        manager: the manager to clean up through. Without one, calls inside a
            ``managed_batch`` use the batch's manager, and other calls share one default
            manager per device and threshold, made at the first cleanup.
        enabled: a bool, or a zero-argument callable asked at every call; while it is
            false, calls pass straight through, uncounted.
        cache_policy: when a cleanup empties the cache; ``None`` uses the active batch's
            policy, or :class:`ClearAlways` outside a batch.
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
    every = check_int(every, "every", minimum=1)
    oom_retries = check_int(oom_retries, "oom_retries", minimum=0)
    memory_threshold = check_fraction(memory_threshold, "memory_threshold")
    enabled = _check_enabled(enabled)
    if cache_policy is not None:
        check_cache_policy(cache_policy)
    if manager is not None and not isinstance(manager, MemoryManager):
        raise InvalidArgumentTypeError(f"manager must be a MemoryManager or None, got {manager!r}")
    if device is not None:
        as_torch_device(device)
    if wrapped is None:
        return functools.partial(
            auto_clear,
            every=every,
            device=device,
            memory_threshold=memory_threshold,
            manager=manager,
            enabled=enabled,
            cache_policy=cache_policy,
            oom_retries=oom_retries,
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
        memory_threshold=memory_threshold,
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
    return cast(Function, AutoClearFunction(wrapped, wrapper, switch))
