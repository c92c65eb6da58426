"""The exceptions memscope raises.

Every error memscope raises on its own account derives from :class:`MemscopeError`, so one
``except MemscopeError`` catches them all. Errors about bad arguments also derive from the
built-in class a caller would expect (``ValueError`` or ``TypeError``), so code written against
the Cobra ``MemoryManager`` API keeps catching what it caught before.
"""

from __future__ import annotations

__all__ = [
    "AllocatorSettingsError",
    "BatchSizeExhaustedError",
    "BatchStateError",
    "DeviceUnavailableError",
    "HostMemoryUnavailableError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "JournalError",
    "MemoryFiguresUnavailableError",
    "MemscopeError",
    "ReportGatherError",
]


class MemscopeError(Exception):
    """Base class of every error memscope raises on its own account."""


class InvalidArgumentError(MemscopeError, ValueError):
    """An argument has the right type but a value memscope cannot use."""


class InvalidArgumentTypeError(MemscopeError, TypeError):
    """An argument has a type memscope cannot use."""


class DeviceUnavailableError(MemscopeError, ValueError):
    """The requested device is not a device, or is not present on this machine."""


class MemoryFiguresUnavailableError(MemscopeError):
    """The device does not report the memory figures an operation needs."""


class BatchStateError(MemscopeError, RuntimeError):
    """A managed batch was used in a state that does not allow it (before it started, say)."""


class HostMemoryUnavailableError(MemoryFiguresUnavailableError):
    """Host memory monitoring was asked for, but this platform cannot tell the figures.

    Raised when a manager is made, so a job fails before its first batch, not in the middle.
    """


class AllocatorSettingsError(MemscopeError, RuntimeError):
    """An allocator setting cannot be applied now: CUDA has started, and the setting is
    fixed by then, or torch refused it (see :func:`memscope.configure_allocator`)."""


class ReportGatherError(MemscopeError, RuntimeError):
    """Gathering the ranks' reports failed: a rank did not arrive in time, or left."""

    def __init__(self, message: str, *, missing_ranks: tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.missing_ranks = missing_ranks
        """The ranks that did not arrive, where torch could tell; else ``None``."""


class BatchSizeExhaustedError(MemscopeError, RuntimeError):
    """Memory ran out at every batch size tried, down to the smallest one allowed.

    Raised ``from`` the last out-of-memory error; ``sizes_tried`` lists the sizes in the
    order they were tried.
    """

    def __init__(self, message: str, *, sizes_tried: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.sizes_tried = sizes_tried


class JournalError(MemscopeError, RuntimeError):
    """A batch journal cannot be used: another job's, locked by another run, or damaged."""
