"""One point of a managed batch's memory timeline."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TimelineEntry"]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """The memory as one item of a managed batch finished, after any cleanup.

    ``allocated`` and ``reserved`` are ``None`` where the device cannot tell (the CPU);
    ``host_resident`` is ``None`` where the batch does not watch the host.
    ``gc_ran`` says whether memscope collected garbage in this batch since the previous item
    finished.
    """

    item: int
    """The item's number in the batch, counting from 1."""
    seconds: float
    """Seconds since the batch started."""
    usage: float
    """The device's memory usage, as :meth:`MemoryManager.check_memory_usage` measures it."""
    allocated: int | None = None
    """Bytes the device's tensors occupy, or ``None`` where the device cannot tell."""
    reserved: int | None = None
    """Bytes the device's allocator holds, or ``None`` where the device cannot tell."""
    gc_ran: bool = False
    """Whether memscope collected garbage in this batch since the previous item finished."""
    host_resident: int | None = None
    """The process's resident memory in bytes after the item, or ``None`` when unknown."""
