"""Apple silicon GPUs through Metal Performance Shaders (MPS)."""

from __future__ import annotations

import logging
import os

import torch

from memscope.backends.base import DeviceBackend, MemoryReading, register_backend

logger = logging.getLogger("memscope")

FALLBACK_FRACTION_OF_HOST_MEMORY = 0.5
"""Share of the host's RAM assumed usable by Metal when torch cannot say.

Apple GPUs share the host's RAM, and Metal's recommended working set is usually between
two thirds and three quarters of it. Half is deliberately low: an underestimated capacity
makes memscope clean up early rather than too late.
"""


def _host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


@register_backend
class MpsBackend(DeviceBackend):
    """Usage is the Metal driver's allocation against Metal's recommended working set."""

    device_type = "mps"
    detection_priority = 20
    oom_messages = (r"MPS backend out of memory",)

    @classmethod
    def is_available(cls) -> bool:
        return torch.backends.mps.is_available()

    def empty_cache(self) -> None:
        torch.mps.empty_cache()

    def read_memory(self) -> MemoryReading:
        allocated = torch.mps.current_allocated_memory()
        # The driver's figure includes what the MPS allocator caches, like CUDA's reserved.
        driver_allocated = torch.mps.driver_allocated_memory()
        capacity = self._capacity()
        return MemoryReading(
            allocated=allocated,
            reserved=driver_allocated,
            free=None if capacity is None else max(capacity - driver_allocated, 0),
            total=capacity,
            used=driver_allocated,
        )

    @staticmethod
    def _capacity() -> int | None:
        recommended_max_memory = getattr(torch.mps, "recommended_max_memory", None)
        if recommended_max_memory is not None:
            return int(recommended_max_memory())
        host_memory = _host_memory_bytes()
        if host_memory is None:
            return None
        return int(host_memory * FALLBACK_FRACTION_OF_HOST_MEMORY)
