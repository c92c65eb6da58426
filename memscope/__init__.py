"""memscope: keep GPU memory in check across long PyTorch batch jobs."""

from memscope._version import __version__
from memscope.backends import DeviceBackend, MemoryReading, available_devices, register_backend
from memscope.devices import DeviceLike
from memscope.estimation import ImageMemoryModel
from memscope.exceptions import (
    DeviceUnavailableError,
    HostMemoryUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
    MemscopeError,
)
from memscope.host import HostMemoryLimit, HostMemoryMonitor
from memscope.manager import ManagerStats, MemoryManager
from memscope.snapshot import MemorySnapshot
from memscope.units import format_bytes, parse_bytes

__all__ = [
    "DeviceBackend",
    "DeviceLike",
    "DeviceUnavailableError",
    "HostMemoryLimit",
    "HostMemoryMonitor",
    "HostMemoryUnavailableError",
    "ImageMemoryModel",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ManagerStats",
    "MemoryFiguresUnavailableError",
    "MemoryManager",
    "MemoryReading",
    "MemorySnapshot",
    "MemscopeError",
    "__version__",
    "available_devices",
    "format_bytes",
    "parse_bytes",
    "register_backend",
]
