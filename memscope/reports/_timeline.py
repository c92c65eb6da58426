"""One point of a managed batch's memory timeline."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TimelineEntry"]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """The device's memory as one item of a managed batch finished, after any cleanup.

    ``allocated`` and ``reserved`` are ``None`` where the device cannot tell (the CPU).
    ``gc_ran`` says whether a garbage collection ran in this batch since the previous item
    finished: in the batch's own cleanup, or in an ``@auto_clear`` function's.
    """

    item: int
    """The item's number in the batch, counting from 1."""
    seconds: float
    """Seconds since the batch started."""
    usage: float
    """The device's memory usage, as :meth:`MemoryManager.check_memory_usage` measures it."""
    allocated: int | None = None
    reserved: int | None = None
    gc_ran: bool = False
