"""The CPU: always available, and the fallback of auto-detection."""

from __future__ import annotations

from memscope.backends.base import DeviceBackend, MemoryReading, register_backend


@register_backend
class CpuBackend(DeviceBackend):
    """Host memory has no torch cache to empty, and no figures to read by default."""

    device_type = "cpu"
    detection_priority = 1000
    oom_messages = (r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)",)
    caches_memory = False
    reports_memory = False

    @classmethod
    def is_available(cls) -> bool:
        return True

    def empty_cache(self) -> None:
        """Nothing to do: torch's CPU allocator hands memory straight back."""

    def read_memory(self) -> MemoryReading:
        return MemoryReading()
