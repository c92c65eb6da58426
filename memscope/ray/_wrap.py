"""``managed()``: a ``map_batches`` function or callable class, run under memscope in each worker.

A callable class becomes a subclass of itself: the same name, constructor and methods, and
Ray Data's options (``fn_constructor_args``, ``num_gpus``, ``max_restarts``, ``compute``...)
are given to ``map_batches`` exactly as before. Its constructor first sets up memscope for
the actor (the device, the manager, the link to the collector) and then runs yours; its
``__call__`` runs yours on each batch through :class:`~memscope.ray._actor.ActorMemory`.
A function becomes a function with the same signature that does the same, with one
:class:`ActorMemory` per worker process (Ray reuses task workers, so what it learns lasts).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

from memscope._validation import reject_both
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD
from memscope.ray._actor import (
    ActorMemory,
    ActorSettings,
    assigned_device,
    chunk_sizing,
    describe_failure,
)
from memscope.ray._collector import (
    CONSTRUCTION_FAILED,
    READY,
    REGISTER,
    CollectorAddress,
    RayReporter,
    ReportCollector,
    worker_identity,
)
from memscope.ray._import import require_ray
from memscope.sizing import Sizing
from memscope.typing import CachePolicy, DeviceLike

__all__ = ["actor_device", "managed"]

Function = TypeVar("Function", bound=Callable[..., Any])

# The attribute a managed instance keeps its worker session in.
_SESSION = "_memscope_worker"
# The mark of a class or function managed() made, so that it is not wrapped twice.
_MANAGED = "__memscope_managed__"


def actor_device() -> torch.device:
    """The device memscope manages in this Ray worker: the first GPU Ray assigned, else the CPU.

    Call it in your class's constructor (or function) to put the model where memscope
    watches: ``cuda:0`` for a worker given one GPU (Ray makes it the only one visible), the
    CPU for a worker given none, even on a machine with GPUs. Outside a Ray worker, the CPU.
    """
    ray = require_ray()
    gpu_ids = [str(gpu) for gpu in ray.get_gpu_ids()] if ray.is_initialized() else []
    return assigned_device(gpu_ids)


class _WorkerSession:
    """One worker's memscope: its :class:`ActorMemory` and its link to the collector."""

    def __init__(
        self,
        settings: ActorSettings,
        address: CollectorAddress,
        function: str,
        *,
        constructing: bool,
    ) -> None:
        ray = require_ray()
        self.reporter = RayReporter(address, ray.get_runtime_context().get_worker_id())
        gpu_ids = [str(gpu) for gpu in ray.get_gpu_ids()]
        device: DeviceLike = (
            settings.device if settings.device is not None else assigned_device(gpu_ids)
        )
        try:
            self.memory = ActorMemory(settings, device, self.reporter)
        except BaseException as error:
            self.reporter.send(REGISTER, worker_identity(function, str(device), constructing=True))
            self.reporter.send(CONSTRUCTION_FAILED, describe_failure(error))
            raise
        self.reporter.send(
            REGISTER,
            worker_identity(function, str(self.memory.device), constructing=constructing),
        )


def _check_function(call: Callable[..., Any], name: str) -> None:
    """Refuse what cannot be split into chunks: a coroutine or generator function."""
    unwrapped = inspect.unwrap(call)
    if inspect.iscoroutinefunction(unwrapped) or inspect.isasyncgenfunction(unwrapped):
        raise InvalidArgumentTypeError(
            f"{name} is async; memscope.ray.managed needs a function that returns the batch"
        )
    if inspect.isgeneratorfunction(unwrapped):
        raise InvalidArgumentTypeError(
            f"{name} is a generator function; memscope.ray.managed needs a function that "
            "returns the batch, so that a split batch's results can be joined"
        )


def _defines_call(cls: type) -> bool:
    return any("__call__" in vars(klass) for klass in cls.__mro__ if klass is not object)


def managed(
    udf: Function,
    *,
    collector: ReportCollector,
    device: DeviceLike = None,
    every: int | None = 1,
    cache_policy: CachePolicy | None = None,
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
    freeze_heap: bool = True,
    chunk_size: int | None = None,
    factor: float = 0.5,
    min_size: int = 1,
    regrow_after: int | None = None,
    sizing: Sizing | None = None,
) -> Function:
    """``udf``, a ``map_batches`` callable class or function, run under memscope in each worker.

    Pass what it returns to ``Dataset.map_batches`` in place of ``udf``, with the same
    arguments. In each actor (for a function, each worker process):

    * every batch runs inside one ``managed_batch`` that lasts as long as the actor, on the
      actor's own device (the GPU Ray assigned it, else the CPU; see :func:`actor_device`),
      cleaning up every ``every`` rows (as each chunk finishes, across batches) by
      ``cache_policy``, after a batch that raised, and when Ray Data shuts the actor down;
    * the batch runs through :func:`~memscope.process_in_chunks`: when memory runs out, the
      same rows are retried in smaller chunks and the results joined, so the batch still
      completes with every row exactly once, in order. The actor keeps one
      :class:`~memscope.sizing.AdaptiveBatchState` for all its batches, so the size that
      worked (and, where the device can be measured, the memory per row) is where its next
      batches start;
    * after each batch the actor's figures so far (rows, OOMs, split batches, peak memory,
      cleanups, GC time, failures) go to ``collector`` without waiting for it, and the
      final ones when the actor is shut down gracefully.

    Args:
        udf: a class whose instances are called with a batch (Ray Data makes one per
            actor), or a function of a batch. Batches are dicts of NumPy columns (the
            default ``batch_format``), pandas DataFrames or pyarrow Tables; what the
            function returns for chunks of one batch is joined in the same way. It must
            return its batch: async and generator functions are refused.
        collector: the job's :class:`ReportCollector`, made on the driver.
        device: the device to manage instead of the one Ray assigned.
        every: clean up after every this many rows, as for ``managed_batch``; ``None``:
            only count, never clean up (OOM recovery still runs).
        cache_policy: when a cleanup empties the cache, as for ``managed_batch``.
        memory_threshold: the usage at or above which a cleanup collects garbage.
        freeze_heap: freeze the objects that exist when the actor's first batch starts (its
            model among them) until the actor is shut down, as for ``managed_batch``.
        chunk_size: the largest chunk to try; ``None``: the whole batch, until memory runs
            out.
        factor: what a chunk size is multiplied by after running out of memory, where
            memory cannot be measured (as for ``process_in_chunks``).
        min_size: the smallest chunk; running out of memory at it fails the batch with
            :class:`~memscope.BatchSizeExhaustedError` (Ray Data may retry it).
        regrow_after: try a larger chunk after this many chunks in a row succeed, as for
            ``process_in_chunks``; ``None``: only predictions from measured memory grow it.
        sizing: the chunks' :class:`~memscope.sizing.Sizing` in one value (``start`` is the
            largest chunk; ``None``: the whole batch), instead of ``chunk_size``,
            ``factor``, ``min_size`` and ``regrow_after``; its ``headroom`` and ``measure``
            apply as for ``process_in_chunks``.

    Returns:
        What to pass to ``map_batches`` in place of ``udf``: a subclass of the class (same
        name, constructor and attributes), or a function with the function's signature.

    Raises:
        InvalidArgumentTypeError, InvalidArgumentError: at once, for a bad argument (or a
            ``udf`` that ``managed()`` already made).
        ImportError: when Ray is not installed (``pip install 'memscope[ray]'``).
    """
    # The function first: whether it can be managed at all does not depend on the rest.
    if getattr(udf, _MANAGED, False):
        raise InvalidArgumentError(
            f"{getattr(udf, '__qualname__', udf)!r} is already managed by memscope.ray: "
            "wrap the original once"
        )
    if isinstance(udf, type):
        _check_class(udf)
    elif callable(udf):
        _check_function(udf, getattr(udf, "__qualname__", repr(udf)))
    else:
        raise InvalidArgumentTypeError(
            f"udf must be a callable class or a function of a batch, got {udf!r}"
        )
    if not isinstance(collector, ReportCollector):
        raise InvalidArgumentTypeError(
            f"collector must be a memscope.ray.ReportCollector, got {collector!r}"
        )
    if sizing is None:
        sizing = chunk_sizing(chunk_size, factor, min_size, regrow_after)
    else:
        # The separate options' defaults are those of a Sizing's fields (chunk_size: start).
        defaults = Sizing()
        separate = zip(_CHUNK_OPTIONS, (chunk_size, factor, min_size, regrow_after), strict=True)
        for (name, field), value in separate:
            if value != getattr(defaults, field):
                reject_both("sizing", sizing, name, value, "sizing= holds every chunk option")
    settings = ActorSettings.checked(
        device=device,
        every=every,
        cache_policy=cache_policy,
        memory_threshold=memory_threshold,
        freeze_heap=freeze_heap,
        sizing=sizing,
    )
    if isinstance(udf, type):
        return cast(Function, _managed_class(udf, settings, collector.address))
    return cast(Function, _managed_function(udf, settings, collector.address))


# The separate chunk options, each with the field of Sizing it stands for.
_CHUNK_OPTIONS = (
    ("chunk_size", "start"),
    ("factor", "factor"),
    ("min_size", "min_size"),
    ("regrow_after", "regrow_after"),
)


def _check_class(cls: type) -> None:
    if not _defines_call(cls):
        raise InvalidArgumentTypeError(
            f"{cls.__qualname__} has no __call__: map_batches calls an instance with each batch"
        )
    _check_function(cls.__call__, f"{cls.__qualname__}.__call__")


def _managed_class(cls: type, settings: ActorSettings, address: CollectorAddress) -> type:
    _check_class(cls)
    user_call = cls.__call__
    name = cls.__qualname__
    # The class's own constructor, whatever type checkers think of reading it from a class.
    user_init: Callable[..., None] = cls.__init__  # type: ignore[misc]
    user_delete = getattr(cls, "__del__", None)

    def construct(self: Any, *args: Any, **kwargs: Any) -> None:
        session = _WorkerSession(settings, address, name, constructing=True)
        object.__setattr__(self, _SESSION, session)
        try:
            user_init(self, *args, **kwargs)
        except BaseException as error:
            session.reporter.send(CONSTRUCTION_FAILED, describe_failure(error))
            raise
        session.reporter.send(READY)

    def call(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        session: _WorkerSession = getattr(self, _SESSION)
        return session.memory.process(lambda chunk: user_call(self, chunk, *args, **kwargs), batch)

    def delete(self: Any) -> None:
        # Ray Data drops the instance when it shuts an actor down gracefully (not when the
        # actor is killed or crashes): the actor's last word.
        session = vars(self).get(_SESSION) if hasattr(self, "__dict__") else None
        if isinstance(session, _WorkerSession):
            session.memory.close()
        if user_delete is not None:
            user_delete(self)

    if user_init is not object.__init__:
        functools.update_wrapper(construct, user_init)
    functools.update_wrapper(call, user_call)
    namespace: dict[str, Any] = {
        "__init__": construct,
        "__call__": call,
        "__del__": delete,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__wrapped__": cls,
        _MANAGED: True,
    }
    # A signature inspect cannot read stays unread.
    with contextlib.suppress(TypeError, ValueError):
        namespace["__signature__"] = inspect.signature(cls)
    return type(cls)(cls.__name__, (cls,), namespace)


# Task workers: one session per process and managed function, made at its first batch.
_sessions: dict[str, _WorkerSession] = {}
_sessions_lock = threading.Lock()


def _task_session(
    token: str, settings: ActorSettings, address: CollectorAddress, name: str
) -> _WorkerSession:
    """This process's session for the managed function ``token``, made on first use.

    A module-level function, so that the wrapper shipped to workers refers to it (and to the
    registry) by name instead of carrying copies of them.
    """
    with _sessions_lock:
        session = _sessions.get(token)
        if session is None:
            session = _sessions[token] = _WorkerSession(settings, address, name, constructing=False)
        return session


def _managed_function(
    function: Callable[..., Any], settings: ActorSettings, address: CollectorAddress
) -> Callable[..., Any]:
    name = getattr(function, "__qualname__", repr(function))
    _check_function(function, name)
    # Identifies this managed function in every worker it is shipped to.
    token = uuid.uuid4().hex

    @functools.wraps(function)
    def run_managed(batch: Any, *args: Any, **kwargs: Any) -> Any:
        session = _task_session(token, settings, address, name)
        return session.memory.process(lambda chunk: function(chunk, *args, **kwargs), batch)

    setattr(run_managed, _MANAGED, True)
    return run_managed
