"""The active batch, as the toolkit sees it, and the one way a cleanup finds its manager.

Inside a ``managed_batch`` there is one owner of cleanup and one record of what happened:
the batch. ``@auto_clear``, ``@adaptive_batch``, ``process_in_chunks`` and OOM recovery are
its clients. They reach it through :data:`active_batch` and talk to it only through the small
:class:`ActiveBatch` protocol below, so the layers under ``memscope.batch`` never import it.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from memscope._devices import resolve_device
from memscope._validation import reject_both
from memscope.exceptions import InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.policies import GCBackoff

if TYPE_CHECKING:
    from memscope._cleanup import CleanupOutcome
    from memscope.typing import CachePolicy

__all__: list[str] = []

Result = TypeVar("Result")


class ActiveBatch(Protocol):
    """What the toolkit sees of the ``managed_batch`` active in its context."""

    @property
    def manager(self) -> MemoryManager:
        """The batch's manager: the toolkit cleans up through it unless told otherwise."""
        ...

    @property
    def active(self) -> bool:
        """Whether the batch has been entered and not yet left."""
        ...

    @property
    def parent(self) -> ActiveBatch | None:
        """The batch that was running where this one started, if any."""
        ...

    @property
    def cache_policy(self) -> CachePolicy:
        """The batch's cache policy, for cleanups made on its behalf."""
        ...

    def _record_call(self, *, failed: bool) -> None:
        """A decorated call finished; outside a tracked item it is one item of the batch."""
        ...

    def _record_items(self, count: int) -> None:
        """Chunked work finished ``count`` items; outside a tracked item they are the batch's."""
        ...

    def _record_oom(
        self, error: BaseException, *, retried: bool, batch_size_reduced: bool = False
    ) -> None:
        """An out-of-memory error met inside the batch (counted once however many layers see
        it), and what was done about it."""
        ...

    def _record_cleanup(self, outcome: CleanupOutcome | None) -> None:
        """A cleanup memscope made during the batch; ``None`` means it failed."""
        ...

    def _observe_peak(self, allocated: int | None, reserved: int | None) -> None:
        """Peak figures seen before something resets the device's peak statistics."""
        ...


# A ContextVar, not a thread-local: concurrent asyncio tasks each see their own batch. New
# threads start with an empty context, so worker threads join a batch explicitly
# (ManagedBatch.bind, or manager=batch.manager).
active_batch: ContextVar[ActiveBatch | None] = ContextVar("memscope_active_batch", default=None)

# The batch whose tracked item (a track() or map() loop body) is running in this context:
# decorated calls and chunks inside it are part of that item, not items of their own.
tracked_item: ContextVar[ActiveBatch | None] = ContextVar("memscope_tracked_item", default=None)


# The batches a `with` entered in this context, each with the batch that was current here
# before: leaving one restores that, so a batch entered twice here stays active until its
# outer `with` ends. Changed only on entering and leaving, never on the hot path.
_entered: ContextVar[tuple[tuple[ActiveBatch, ActiveBatch | None], ...]] = ContextVar(
    "memscope_entered", default=()
)


def enter(batch: ActiveBatch) -> None:
    """Make ``batch`` the active batch of this context, until :func:`leave`."""
    # A batch that has ended was left from another context; this one drops its entries here.
    still_entered = tuple(entry for entry in _entered.get() if entry[0].active)
    _entered.set((*still_entered, (batch, current())))
    active_batch.set(batch)


def leave(batch: ActiveBatch) -> None:
    """End the latest :func:`enter` of ``batch`` in this context.

    Left in order, the batch active before it is active again (or, if that one has ended,
    the nearest of its parents still running). Left out of order, with another batch
    entered on top and still running, that batch stays active here and falls back past this
    one when it leaves. Left from another context (an ExitStack closed in another thread),
    this context has nothing to restore.
    """
    stack = _entered.get()
    for position in range(len(stack) - 1, -1, -1):
        entered, before = stack[position]
        if entered is batch:
            _entered.set(stack[:position] + stack[position + 1 :])
            if active_batch.get() is batch:
                active_batch.set(nearest_running(before))
            return


def nearest_running(batch: ActiveBatch | None) -> ActiveBatch | None:
    """``batch`` if it is still running, else the nearest of its parents that is."""
    while batch is not None and not batch.active:
        batch = batch.parent
    return batch


def current() -> ActiveBatch | None:
    """The batch running in this context, if any.

    The variable can name a batch that has ended: one left from another context (an
    ExitStack closed in another thread) cannot reset this context's variable, and an outer
    batch left before the batch nested in it leaves the inner one in place. Then the nearest
    batch that is still running, following the batches each started in, is the current one.
    """
    return nearest_running(active_batch.get())


_shared_managers: dict[tuple[torch.device | None, float], MemoryManager] = {}
_shared_managers_lock = threading.Lock()


def shared_manager(device: torch.device | None, memory_threshold: float) -> MemoryManager:
    """The one default manager for this device and threshold, created on first use."""
    key = (device, memory_threshold)
    manager = _shared_managers.get(key)  # a dict read needs no lock: the cleanup's fast path
    if manager is not None:
        return manager
    with _shared_managers_lock:
        manager = _shared_managers.get(key)
        if manager is None:
            manager = MemoryManager(device, memory_threshold, gc_backoff=GCBackoff())
            _shared_managers[key] = manager
        return manager


def forget_shared_managers() -> None:
    """Drop the shared default managers; the next cleanup makes fresh ones.

    :class:`memscope.testing.FakeDevice` calls this on entry and exit, so managers made for
    a fake device never outlive it.
    """
    with _shared_managers_lock:
        _shared_managers.clear()


def as_item(batch: ActiveBatch, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, run as part of an item of ``batch``: memscope layers it calls (decorated
    functions) count no items of their own. An awaitable it returns is awaited under the
    same mark, since a coroutine's body runs only when awaited."""

    def in_item(*args: Any, **kwargs: Any) -> Any:
        token = tracked_item.set(batch)
        try:
            result = function(*args, **kwargs)
        finally:
            tracked_item.reset(token)
        if inspect.isawaitable(result):
            return _awaited_in_item(batch, result)
        return result

    return in_item


async def _awaited_in_item(batch: ActiveBatch, awaitable: Awaitable[Any]) -> Any:
    token = tracked_item.set(batch)
    try:
        return await awaitable
    finally:
        tracked_item.reset(token)


def same_device(device: torch.device, manager: MemoryManager) -> bool:
    """Whether ``device`` is the device ``manager`` works on, by type and index; an index-free
    device is the current one of its type (what ``manager`` resolved, when it did)."""
    resolved = manager.resolved_device
    if device.type != resolved.type:
        return False
    if device.index is None:
        return resolve_device(device)[1].device == resolved
    return device == resolved


def manager_for(
    manager: MemoryManager | None,
    device: torch.device | None,
    batch: ActiveBatch | None,
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
) -> MemoryManager:
    """The manager a toolkit call cleans up through.

    An explicit ``manager`` wins; then the active batch's, when the call names no device or
    the batch's; then the shared default manager for ``device`` (``None``: auto-detected).
    """
    if manager is not None:
        return manager
    if batch is not None and (device is None or same_device(device, batch.manager)):
        return batch.manager
    return shared_manager(device, memory_threshold)


def check_manager(manager: object, **owned: object) -> MemoryManager | None:
    """``manager``, refused if it is no MemoryManager, or given beside the options
    (``owned``, by name) of the manager the tool would otherwise make: they would be ignored."""
    if manager is None:
        return None
    if not isinstance(manager, MemoryManager):
        raise InvalidArgumentTypeError(f"manager must be a MemoryManager or None, got {manager!r}")
    for name, value in owned.items():
        if value is not None:
            why = f"{name} belongs to the manager; give it to your MemoryManager"
            reject_both("manager", manager, name, value, why)
    return manager


def run_in(batch: ActiveBatch, function: Callable[..., Result]) -> Callable[..., Result]:
    """``function``, made to run with ``batch`` active in whatever thread calls it."""
    if not callable(function):
        raise InvalidArgumentTypeError(f"bind takes a function, got {function!r}")

    @functools.wraps(function)
    def run_in_batch(*args: Any, **kwargs: Any) -> Result:
        token = active_batch.set(batch)
        try:
            return function(*args, **kwargs)
        finally:
            active_batch.reset(token)

    return run_in_batch
