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
    HostMemoryUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
    MemscopeError,
    ReportGatherError,
)
from memscope.host import HostMemoryLimit, HostMemoryMonitor
from memscope.manager import ManagerStats, MemoryManager
from memscope.policies import CachePolicy, ClearAlways, ClearWhenUseful, GCBackoff
from memscope.report import BatchReport
from memscope.snapshot import MemorySnapshot
from memscope.units import format_bytes, parse_bytes

__all__ = [
    "AutoClearFunction",
    "BatchReport",
    "BatchStateError",
    "CachePolicy",
    "CleanupOutcome",
    "CleanupStats",
    "ClearAlways",
    "ClearWhenUseful",
    "CombinedReport",
    "DeviceBackend",
    "DeviceLike",
    "DeviceUnavailableError",
    "GCBackoff",
    "HostMemoryLimit",
    "HostMemoryMonitor",
    "HostMemoryUnavailableError",
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
    "parse_bytes",
    "process_rank",
    "register_backend",
    "with_process_rank",
]
