"""memscope: keep GPU memory in check across long PyTorch batch jobs."""

from memscope._version import __version__
from memscope.backends import DeviceBackend, MemoryReading, available_devices, register_backend
from memscope.batch import ManagedBatch, managed_batch
from memscope.cleanup import CleanupOutcome
from memscope.context import current_batch
from memscope.decorator import AutoClearFunction, CleanupStats, auto_clear
from memscope.devices import DeviceLike
from memscope.distributed import (
    CombinedReport,
    RankReport,
    ReportGathering,
    gather_reports,
    gathered_reports,
    process_rank,
    with_process_rank,
)
from memscope.estimation import ImageMemoryModel
from memscope.exceptions import (
    BatchStateError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
    MemscopeError,
    ReportGatherError,
)
from memscope.manager import ManagerStats, MemoryManager
from memscope.report import BatchReport
from memscope.snapshot import MemorySnapshot
from memscope.units import format_bytes

__all__ = [
    "AutoClearFunction",
    "BatchReport",
    "BatchStateError",
    "CleanupOutcome",
    "CleanupStats",
    "CombinedReport",
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
    "RankReport",
    "ReportGatherError",
    "ReportGathering",
    "__version__",
    "auto_clear",
    "available_devices",
    "current_batch",
    "format_bytes",
    "gather_reports",
    "gathered_reports",
    "managed_batch",
    "process_rank",
    "register_backend",
    "with_process_rank",
]
