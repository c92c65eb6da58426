"""NVIDIA CUDA devices (and AMD ROCm devices, which PyTorch exposes as ``cuda``)."""

from __future__ import annotations

import torch

from memscope.backends.base import DeviceBackend, MemoryReading, register_backend


@register_backend
class CudaBackend(DeviceBackend):
    """Queries go to this backend's own device index, never to "the current device"."""

    device_type = "cuda"
    detection_priority = 10
    oom_messages = (
        r"CUDA out of memory",  # the caching allocator
        r"CUDA error: ?out of memory",  # the driver
        r"cudaErrorMemoryAllocation",  # the runtime's status name
        r"HIP out of memory",  # ROCm's caching allocator (ROCm is torch's "cuda" too)
        r"HIP error: ?out of memory|hipErrorOutOfMemory",  # the ROCm driver
        r"CUDNN_STATUS_(?:ALLOC_FAILED|NOT_SUPPORTED)",  # cuDNN's workspace allocations
        r"CU(?:BLAS|SOLVER|SPARSE)_STATUS_ALLOC_FAILED",
        r"CUFFT_ALLOC_FAILED",
    )

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    @classmethod
    def device_count(cls) -> int:
        return torch.cuda.device_count()

    @classmethod
    def default_index(cls) -> int:
        return torch.cuda.current_device()

    def empty_cache(self) -> None:
        # The caching allocator has no per-device form: this releases the cached blocks of
        # every device this process has initialised.
        torch.cuda.empty_cache()

    def read_memory(self) -> MemoryReading:
        free, total = torch.cuda.mem_get_info(self.index)
        # One call for the four allocator figures: torch.cuda.memory_allocated() and its
        # siblings each flatten and sort the allocator's whole statistics in Python.
        stats = torch.cuda.memory_stats(self.index)
        return MemoryReading.from_caching_allocator(
            free=free,
            total=total,
            allocated=stats.get("allocated_bytes.all.current", 0),
            reserved=stats.get("reserved_bytes.all.current", 0),
            peak_allocated=stats.get("allocated_bytes.all.peak", 0),
            peak_reserved=stats.get("reserved_bytes.all.peak", 0),
        )

    def reset_peak_memory_stats(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.index)

    # Allocation history is process-wide in torch (every CUDA device at once), and private
    # API: looked up at each use, so a torch without it records nothing instead of failing.

    def start_memory_history(self, max_entries: int) -> bool:
        record = getattr(torch.cuda.memory, "_record_memory_history", None)
        if record is None:
            return False
        record(enabled="all", max_entries=max_entries)
        return True

    def stop_memory_history(self) -> None:
        record = getattr(torch.cuda.memory, "_record_memory_history", None)
        if record is not None:
            record(enabled=None)

    def dump_memory_history(self, path: str) -> bool:
        dump_snapshot = getattr(torch.cuda.memory, "_dump_snapshot", None)
        if dump_snapshot is None:
            return False
        dump_snapshot(path)
        return True
