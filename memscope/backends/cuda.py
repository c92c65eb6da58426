"""NVIDIA CUDA devices (and AMD ROCm devices, which PyTorch exposes as ``cuda``)."""

from __future__ import annotations

import torch

from memscope.backends.base import DeviceBackend, MemoryReading, register_backend


@register_backend
class CudaBackend(DeviceBackend):
    """Queries go to this backend's own device index, never to "the current device"."""

    device_type = "cuda"
    detection_priority = 10

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
        return MemoryReading.from_caching_allocator(
            free=free,
            total=total,
            allocated=torch.cuda.memory_allocated(self.index),
            reserved=torch.cuda.memory_reserved(self.index),
            peak_allocated=torch.cuda.max_memory_allocated(self.index),
            peak_reserved=torch.cuda.max_memory_reserved(self.index),
        )

    def reset_peak_memory_stats(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.index)
