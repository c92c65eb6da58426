"""Which batch is active in the current context, and the shared default managers."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING

from memscope.devices import DeviceLike, as_torch_device
from memscope.manager import MemoryManager
from memscope.policies import GCBackoff

if TYPE_CHECKING:
    from memscope.batch import ManagedBatch

__all__ = ["current_batch"]

# A ContextVar, not a thread-local: concurrent asyncio tasks each see their own batch. New
# threads start with an empty context, so worker threads join a batch explicitly
# (ManagedBatch.bind, or manager=batch.manager).
active_batch: ContextVar[ManagedBatch | None] = ContextVar("memscope_active_batch", default=None)

_shared_managers: dict[tuple[str, float], MemoryManager] = {}
_shared_managers_lock = threading.Lock()


def current_batch() -> ManagedBatch | None:
    """The innermost ``managed_batch`` active in this context, if any."""
    return active_batch.get()


def shared_manager(device: DeviceLike, memory_threshold: float) -> MemoryManager:
    """The one default manager for this device and threshold, created on first use."""
    key = (str(as_torch_device(device)), memory_threshold)
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
