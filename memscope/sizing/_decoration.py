"""``@adaptive_batch``: the decorator, the decorated function, and where its batch size goes.

The size search is :mod:`memscope.sizing._search`'s; this module says what an attempt is (the
user's function, called with a size and the caller's arguments) and when the work is done
(after the first success). It also gives the decorated function the types and the signature
that callers see: the function's, without the batch size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

from memscope import _context as context, _wrapt as wrapt
from memscope._pickling import PicklableBoundFunctionWrapper, PicklableFunctionWrapper
from memscope.exceptions import InvalidArgumentTypeError
from memscope.manager import MemoryManager
from memscope.sizing._options import Sizing, SizingKeywords, SizingOptions, resolve_sizing
from memscope.sizing._search import Call, SizeSearch, run_search, run_search_async
from memscope.sizing._snapshot import Attempt
from memscope.sizing._state import AdaptiveBatchState
from memscope.typing import DeviceLike

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AdaptiveBatchClassMethod",
    "AdaptiveBatchDecorator",
    "AdaptiveBatchFunction",
    "AdaptiveBatchMethod",
    "adaptive_batch",
]

Parameters = ParamSpec("Parameters")
Result = TypeVar("Result")
Result_co = TypeVar("Result_co", covariant=True)
Owner = TypeVar("Owner")
# In the protocols, the owner is only ever passed in.
Owner_contra = TypeVar("Owner_contra", contravariant=True)


# One call, as a size search ---------------------------------------------------------------


class _AdaptiveCall(SizeSearch[Any]):
    """The search for one call of an ``@adaptive_batch`` function: done at the first success."""

    def __init__(
        self,
        function: Callable[..., Any],
        arguments: tuple[Any, ...],
        keywords: Mapping[str, Any],
        *,
        name: str,
        state: AdaptiveBatchState,
        manager: MemoryManager,
        batch: context.ActiveBatch | None,
    ) -> None:
        super().__init__(name=name, state=state, manager=manager, batch=batch)
        self.function = function
        self.arguments = arguments
        self.keywords = keywords
        self._done = False
        self._value: Any = None

    def _call(self, size: int) -> Call:
        return Call(self.function, (size, *self.arguments), self.keywords)

    def _accept(self, attempt: Attempt, result: Any) -> None:
        self._value = result
        self._done = True

    def _finished(self) -> bool:
        return self._done

    def _result(self) -> Any:
        return self._value

    def _items_left(self) -> None:
        return None

    def _where(self) -> str:
        return ""


class _AdaptiveRunner:
    """The wrapt wrapper behind one ``@adaptive_batch`` function: checks, then searches."""

    def __init__(
        self, options: SizingOptions, signature: _BatchSignature, name: str, is_async: bool
    ) -> None:
        self.options = options
        self.signature = signature
        self.name = name
        self.is_async = is_async
        self.state = AdaptiveBatchState(options.sizing)

    def __call__(self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        # Checked at the call, so an async function's misuse fails before any coroutine exists.
        self.signature.check_call(self.name, args, kwargs)
        batch = context.current()
        search = _AdaptiveCall(
            wrapped,
            args,
            kwargs,
            name=self.name,
            state=self.state,
            manager=self.options.manager_for(batch),
            batch=batch,
        )
        if self.is_async:
            return run_search_async(search)
        return run_search(search)


# Where the batch size sits --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BatchSignature:
    """Where the batch size sits in the decorated function's parameters."""

    name: str
    keyword_allowed: bool
    # Positional arguments a caller may pass after the batch size; None with *args.
    positional_after: int | None

    @classmethod
    def of(cls, target: Any, function: Any) -> tuple[_BatchSignature, inspect.Signature]:
        """Where the batch size is, and the signature callers see (without it)."""
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
        """Refuse a call that passes the batch size, which adaptive_batch supplies."""
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


# The decorated function: what runs ------------------------------------------------------


class _BoundAdaptiveWrapper(PicklableBoundFunctionWrapper, wrapt.BoundFunctionWrapper[..., Any]):
    """An ``@adaptive_batch`` method, bound to its instance (or class)."""

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


class _AdaptiveWrapper(PicklableFunctionWrapper, wrapt.FunctionWrapper[..., Any]):
    """What ``@adaptive_batch`` returns at run time, whatever it decorated."""

    __bound_function_wrapper__ = _BoundAdaptiveWrapper

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


# The decorated function: what type checkers see -----------------------------------------
#
# One run-time class serves functions, methods and classmethods (wrapt binds each the right
# way), but a type checker must be told what binding does to each: these protocols say it.


@runtime_checkable
class AdaptiveBatchFunction(Protocol[Parameters, Result_co]):
    """A function decorated with ``@adaptive_batch``, as its callers see it.

    ``AdaptiveBatchFunction[P, R]`` is called with ``P``, the function's parameters without
    the batch size, and returns ``R``. Its ``inspect.signature`` is the function's without
    the batch size too. A bound ``@adaptive_batch`` method is one as well.
    """

    @property
    def adaptive_state(self) -> AdaptiveBatchState:
        """What the function has learned: the size to use, and what happened."""
        ...

    def __call__(self, *args: Parameters.args, **kwargs: Parameters.kwargs) -> Result_co:
        """Run the function at the learned batch size, smaller if memory runs out."""
        ...


class AdaptiveBatchMethod(Protocol[Owner_contra, Parameters, Result_co]):
    """A method decorated with ``@adaptive_batch`` (``self`` first, then the batch size).

    Read from an instance it is an :class:`AdaptiveBatchFunction` without ``self``; read
    from the class it is called with the instance first.
    """

    @property
    def adaptive_state(self) -> AdaptiveBatchState:
        """What the method has learned (shared by every instance)."""
        ...

    def __call__(
        self, instance: Owner_contra, /, *args: Parameters.args, **kwargs: Parameters.kwargs
    ) -> Result_co:
        """Run the method for ``instance``."""
        ...

    @overload
    def __get__(
        self, instance: None, owner: type[Any] | None = None, /
    ) -> AdaptiveBatchMethod[Owner_contra, Parameters, Result_co]: ...

    @overload
    def __get__(
        self, instance: Owner_contra, owner: type[Any] | None = None, /
    ) -> AdaptiveBatchFunction[Parameters, Result_co]: ...


class AdaptiveBatchClassMethod(Protocol[Owner_contra, Parameters, Result_co]):
    """A classmethod decorated with ``@adaptive_batch`` (``cls`` first, then the batch size).

    Read from the class or from an instance, it is an :class:`AdaptiveBatchFunction`
    without ``cls``.
    """

    @property
    def adaptive_state(self) -> AdaptiveBatchState:
        """What the classmethod has learned."""
        ...

    def __get__(
        self, instance: Owner_contra | None, owner: type[Any] | None = None, /
    ) -> AdaptiveBatchFunction[Parameters, Result_co]: ...


# The decorator --------------------------------------------------------------------------


class AdaptiveBatchDecorator:
    """What ``adaptive_batch(start=...)`` returns: apply it to the function to decorate.

    To a type checker, decorating ``def f(batch_size: int, *args: P.args, **kwargs:
    P.kwargs) -> R`` gives an :class:`AdaptiveBatchFunction` ``[P, R]``: called without
    the batch size. A method (``self`` first, then the batch size) gives an
    :class:`AdaptiveBatchMethod`, and a classmethod (``cls: type[...]`` first) an
    :class:`AdaptiveBatchClassMethod`; both lose their first parameter when bound.

    What a type checker cannot tell: a staticmethod under ``@adaptive_batch`` looks like a
    function, which is right; a function whose first parameter is not an ``int`` looks like
    a method, so a checker accepts a call that passes one argument too few.
    """

    __slots__ = ("_options",)

    def __init__(self, options: SizingOptions) -> None:
        self._options = options

    # The overlap with the method overload is the point: a first parameter that is an int
    # is the batch size, and the first overload that matches wins.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, target: Callable[Concatenate[int, Parameters], Result]
    ) -> AdaptiveBatchFunction[Parameters, Result]: ...

    @overload
    def __call__(
        self, target: Callable[Concatenate[type[Owner], int, Parameters], Result]
    ) -> AdaptiveBatchClassMethod[Owner, Parameters, Result]: ...

    @overload
    def __call__(
        self, target: Callable[Concatenate[Owner, int, Parameters], Result]
    ) -> AdaptiveBatchMethod[Owner, Parameters, Result]: ...

    @overload
    def __call__(
        self, target: classmethod[Owner, Concatenate[int, Parameters], Result]
    ) -> AdaptiveBatchClassMethod[Owner, Parameters, Result]: ...

    def __call__(self, target: Any) -> Any:
        return _decorate(target, self._options)


def adaptive_batch(
    function: None = None,
    /,
    *,
    sizing: Sizing | None = None,
    manager: MemoryManager | None = None,
    device: DeviceLike = None,
    **options: Unpack[SizingKeywords],
) -> AdaptiveBatchDecorator:
    """Supply the batch size to a function, and shrink it when memory runs out.

    The decorated function's first parameter (after ``self``/``cls`` for methods) is the
    batch size; memscope passes it, so callers leave it out::

        @adaptive_batch(start=32)
        def colorize(batch_size: int, images: list[str]) -> list[Image]:
            ...

        colorize(images)            # runs colorize(32, images), or less if memory runs out

    **Sizing from measurement.** Around each successful call memscope resets the device's
    peak memory statistics and reads the peak after: its rise over the memory in use before,
    divided by the batch size, is the memory per item. From it and the memory the device has
    available, the next call runs at the largest size predicted to fit with ``headroom`` of
    the available memory left unused: never above ``start``, never at or above a size that
    ran out of memory. The first call runs at ``start``; if that runs out of memory before
    anything was measured, a small size is tried next (halfway between ``min_size`` and the
    failed size on a log scale) to measure, instead of halving step by step. A predicted
    size that runs out of memory anyway is a wrong prediction: the prediction shrinks (the
    more the more often it happens in a row) and is retried. What was learned is in
    ``adaptive_state`` (``memory_per_item``, ``predicted_size``, ``wrong_predictions``).
    Measuring needs peak statistics: CUDA and other accelerators have them; on the CPU, a
    manager that watches the host (``host=True`` or a budget) measures the process's peak
    resident memory on Linux. Elsewhere (MPS, the CPU without host monitoring), or with
    ``measure=False``, sizes are searched by ``factor`` instead.

    **By factor.** On an out-of-memory error (see :func:`~memscope.is_oom_error`) the failed
    call's memory is freed (its frames released, ``gc.collect()``, the manager's
    ``clear_cache()``) and the call is retried at ``int(size * factor)`` (always smaller,
    never below ``min_size``). The size that worked is kept for later calls.

    Either way, when ``min_size`` fails too, :class:`~memscope.BatchSizeExhaustedError`
    naming the sizes tried is raised from the last out-of-memory error, with a note of the
    device's memory figures. Other exceptions pass through unchanged.

    Args:
        sizing: a :class:`~memscope.sizing.Sizing`, the sizing options checked once:
            ``start`` (the first batch size, and the largest ever used; required),
            ``factor``, ``min_size``, ``regrow_after``, ``headroom`` and ``measure``.
        **options: the same fields as keywords, a shortcut: ``@adaptive_batch(start=32)`` is
            ``@adaptive_batch(sizing=Sizing(start=32))``. Passing both is an
            :class:`~memscope.InvalidArgumentError`. ``regrow_after``: after this many
            successes in a row at a reduced size, try a larger one (if that runs out of
            memory, the smaller size is used again and the next attempt waits twice as long).
        manager: the MemoryManager whose cache is cleared. Without one, calls inside a
            ``managed_batch`` use the batch's manager, and others share one default
            manager per ``device``, made at the first call.
        device: the device of the default manager; ``None`` auto-detects.

    Works on functions, methods, classmethods, staticmethods and ``async def`` functions
    (chosen when decorating). The learned size and counters are in the decorated function's
    ``adaptive_state``; for methods they belong to the function, shared by all instances.
    Passing the batch size yourself (by its name, or as one positional argument too many)
    raises :class:`~memscope.InvalidArgumentTypeError`, a ``TypeError``; a type checker
    reports it before that (see :class:`AdaptiveBatchDecorator`).

    Inside a ``managed_batch``, a call that succeeds at size ``n`` counts ``n`` items into
    the batch (none inside a ``track()`` loop body, whose item is the unit), and every
    out-of-memory error and the cleanup after it count into its report.
    """
    checked = resolve_sizing("adaptive_batch", sizing, options)
    if function is not None or checked.start is None:
        raise InvalidArgumentTypeError(
            "adaptive_batch needs the first batch size to try: use @adaptive_batch(start=...) "
            "or @adaptive_batch(sizing=Sizing(start=...))"
        )
    return AdaptiveBatchDecorator(SizingOptions(checked, manager, device))


def _underlying_function(target: Any) -> Any:
    if isinstance(target, (classmethod, staticmethod)):
        return target.__func__
    return target


def _decorate(target: Any, options: SizingOptions) -> _AdaptiveWrapper:
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
    return _AdaptiveWrapper(target, runner, reduced)
