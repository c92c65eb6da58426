"""memscope: keep GPU memory in check across long PyTorch batch jobs."""

from memscope._version import __version__
from memscope.backends import DeviceBackend, MemoryReading, available_devices, register_backend
from memscope.batch import ManagedBatch, managed_batch
from memscope.cleanup import CleanupOutcome
from memscope.context import current_batch
from memscope.decorator import AutoClearFunction, CleanupStats, auto_clear
from memscope.devices import DeviceLike
from memscope.estimation import ImageMemoryModel
from memscope.exceptions import (
    BatchStateError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
    MemscopeError,
)
from memscope.manager import ManagerStats, MemoryManager
from memscope.report import BatchReport
from memscope.snapshot import MemorySnapshot
from memscope.timeline import TimelineEntry
from memscope.units import format_bytes

__all__ = [
    "AutoClearFunction",
    "BatchReport",
    "BatchStateError",
    "CleanupOutcome",
    "CleanupStats",
    "DeviceBackend",
    "DeviceLike",
    "DeviceUnavailableError",
    "ImageMemoryModel",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ManagedBatch",
    "ManagerStats",
    "MemoryFiguresUnavailableError",
    "MemoryManager",
    "MemoryReading",
    "MemorySnapshot",
    "MemscopeError",
    "TimelineEntry",
    "__version__",
    "auto_clear",
    "available_devices",
    "current_batch",
    "format_bytes",
    "managed_batch",
    "register_backend",
]
