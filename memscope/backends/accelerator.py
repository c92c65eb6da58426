"""Any other accelerator torch knows (Intel XPU, Ascend NPU, ...) through ``torch.accelerator``."""

from __future__ import annotations

import torch

from memscope.backends.base import DeviceBackend, MemoryReading, register_backend


def _current_accelerator_type() -> str | None:
    if not torch.accelerator.is_available():
        return None
    accelerator = torch.accelerator.current_accelerator()
    return None if accelerator is None else accelerator.type


@register_backend
class AcceleratorBackend(DeviceBackend):
    """Serves whichever accelerator torch reports, unless a dedicated backend claims it.

    The device type is only known at run time, so it comes from :meth:`detected_type`.
    """

    device_type = "accelerator"
    detection_priority = 30
    oom_messages = (r"XPU out of memory", r"NPU out of memory")

    # CUDA and MPS have dedicated backends with earlier priority; listing them keeps this
    # backend from claiming them even when it is asked directly.
    dedicated_types = frozenset({"cuda", "mps", "cpu"})

    @classmethod
    def handles(cls, device_type: str) -> bool:
        return device_type not in cls.dedicated_types and device_type == _current_accelerator_type()

    @classmethod
    def is_available(cls) -> bool:
        accelerator_type = _current_accelerator_type()
        return accelerator_type is not None and accelerator_type not in cls.dedicated_types

    @classmethod
    def device_count(cls) -> int:
        return torch.accelerator.device_count() if cls.is_available() else 0

    @classmethod
    def default_index(cls) -> int:
        return torch.accelerator.current_device_index()

    @classmethod
    def detected_type(cls) -> str:
        return _current_accelerator_type() or cls.device_type

    def empty_cache(self) -> None:
        torch.accelerator.empty_cache()

    def read_memory(self) -> MemoryReading:
        free, total = torch.accelerator.get_memory_info(self.index)
        return MemoryReading.from_caching_allocator(
            free=free,
            total=total,
            allocated=torch.accelerator.memory_allocated(self.index),
            reserved=torch.accelerator.memory_reserved(self.index),
            peak_allocated=torch.accelerator.max_memory_allocated(self.index),
            peak_reserved=torch.accelerator.max_memory_reserved(self.index),
        )

    def reset_peak_memory_stats(self) -> None:
        torch.accelerator.reset_peak_memory_stats(self.index)
