"""Out-of-memory errors as allocators raise them, and a manager that records its cleanups."""

from __future__ import annotations

import torch

from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.testing._records import _fresh
from memscope.typing import DeviceLike
from memscope.units import format_bytes

# What each backend's allocator says when it runs out; the CUDA and MPS texts follow torch's own.
_OOM_MESSAGES = {
    "cuda": (
        "CUDA out of memory. Tried to allocate {size}. GPU {index} has a total capacity of "
        "24.00 GiB of which 1.00 GiB is free. Of the allocated memory 20.00 GiB is allocated "
        "by PyTorch, and 1.00 GiB is reserved by PyTorch but unallocated."
    ),
    "mps": (
        "MPS backend out of memory (MPS allocated: 20.00 GB, other allocations: 1.00 GB, max "
        "allowed: 24.00 GB). Tried to allocate {size} on private pool."
    ),
    "xpu": "XPU out of memory. Tried to allocate {size} (GPU {index}; 24.00 GiB total capacity)",
    "npu": "NPU out of memory. Tried to allocate {size} (NPU {index}; 24.00 GiB total capacity)",
    "cpu": "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate {bytes} bytes.",
}


def oom_error(
    device_type: str = "cuda", *, tried: int = 2 * 1024**3, index: int = 0
) -> BaseException:
    """A fresh out-of-memory error as ``device_type``'s allocator raises it.

    CUDA gives ``torch.OutOfMemoryError``; MPS, XPU, NPU and the CPU give the plain
    ``RuntimeError`` with the message their allocators use, which
    :func:`~memscope.is_oom_error` recognises by its text. ``tried`` is the allocation that
    failed, in bytes. Each call makes a new exception, so raising it again and again never
    grows one traceback.
    """
    template = _OOM_MESSAGES.get(device_type)
    if template is None:
        raise ValueError(
            f"device_type must be one of {', '.join(sorted(_OOM_MESSAGES))}, got {device_type!r}"
        )
    message = template.format(size=format_bytes(tried), bytes=tried, index=index)
    if device_type == "cuda":
        return torch.OutOfMemoryError(message)
    return RuntimeError(message)


class RecordingManager(MemoryManager):
    """A real :class:`~memscope.MemoryManager` that records the cleanup calls made on it.

    ``events`` lists ``"clear_cache"`` and ``"trigger_gc_if_needed"`` in call order; pass
    a shared list to interleave them with your own events. Set ``cleanup_error`` to make
    both methods raise a fresh copy of it (after recording), to test how code copes with
    failing cleanup.
    """

    def __init__(
        self,
        device: DeviceLike = "cpu",
        memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
        *,
        events: list[str] | None = None,
    ) -> None:
        super().__init__(device, memory_threshold)
        self.events: list[str] = [] if events is None else events
        self.cleanup_error: BaseException | None = None

    def clear_cache(self) -> None:
        self.events.append("clear_cache")
        if self.cleanup_error is not None:
            raise _fresh(self.cleanup_error)
        super().clear_cache()

    def trigger_gc_if_needed(self) -> bool:
        self.events.append("trigger_gc_if_needed")
        if self.cleanup_error is not None:
            raise _fresh(self.cleanup_error)
        return super().trigger_gc_if_needed()
