"""memscope: keep GPU memory in check across long PyTorch batch jobs."""

from memscope._version import __version__
from memscope.adaptive import (
    AdaptiveBatchFunction,
    AdaptiveBatchState,
    Combine,
    adaptive_batch,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.backends import DeviceBackend, MemoryReading, available_devices, register_backend
from memscope.batch import ManagedBatch, managed_batch
from memscope.cleanup import CleanupOutcome
from memscope.context import current_batch
from memscope.decorator import AutoClearFunction, CleanupStats, auto_clear
from memscope.devices import DeviceLike
from memscope.diagnosis import add_oom_note
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
    BatchSizeExhaustedError,
    BatchStateError,
    DeviceUnavailableError,
    HostMemoryUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
    MemscopeError,
    ReportGatherError,
)
from memscope.history import MemoryHistoryRecorder
from memscope.host import HostMemoryLimit, HostMemoryMonitor
from memscope.manager import ManagerStats, MemoryManager
from memscope.oom import (
    CaughtOom,
    call_catching_oom,
    call_catching_oom_async,
    is_oom_error,
    reclaim_memory,
    release_exception_frames,
)
from memscope.policies import CachePolicy, ClearAlways, ClearWhenUseful, GCBackoff
from memscope.report import BatchReport
from memscope.snapshot import MemorySnapshot
from memscope.timeline import TimelineEntry
from memscope.units import format_bytes, parse_bytes

__all__ = [
    "AdaptiveBatchFunction",
    "AdaptiveBatchState",
    "AutoClearFunction",
    "BatchReport",
    "BatchSizeExhaustedError",
    "BatchStateError",
    "CachePolicy",
    "CaughtOom",
    "CleanupOutcome",
    "CleanupStats",
    "ClearAlways",
    "ClearWhenUseful",
    "Combine",
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
    "MemoryHistoryRecorder",
    "MemoryManager",
    "MemoryReading",
    "MemorySnapshot",
    "MemscopeError",
    "RankReport",
    "ReportGatherError",
    "ReportGathering",
    "TimelineEntry",
    "__version__",
    "adaptive_batch",
    "add_oom_note",
    "auto_clear",
    "available_devices",
    "call_catching_oom",
    "call_catching_oom_async",
    "current_batch",
    "format_bytes",
    "gather_reports",
    "gathered_reports",
    "is_oom_error",
    "managed_batch",
    "parse_bytes",
    "process_in_chunks",
    "process_in_chunks_async",
    "process_rank",
    "reclaim_memory",
    "register_backend",
    "release_exception_frames",
    "with_process_rank",
]
