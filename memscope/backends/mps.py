"""Apple silicon GPUs through Metal Performance Shaders (MPS)."""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

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
    """Usage is the Metal driver's allocation against Metal's recommended working set.

    torch calls go through the ``mps`` and ``mps_backend`` class attributes (``torch.mps``
    and ``torch.backends.mps``), so :class:`memscope.testing.FakeDevice` serves a subclass
    that records them without patching torch. Each memory call is newer than some torch
    release memscope supports and is looked up at use: ``recommended_max_memory`` (2.5)
    falls back to a share of the host's RAM, a missing ``driver_allocated_memory`` or
    ``current_allocated_memory`` leaves its figure unknown, and a missing ``empty_cache``
    clears nothing.
    """

    device_type = "mps"
    detection_priority = 20
    oom_messages = (r"MPS backend out of memory",)

    mps: ClassVar[Any] = getattr(torch, "mps", None)
    """Where this backend's memory calls go: ``torch.mps``, or a test's stand-in."""

    mps_backend: ClassVar[Any] = torch.backends.mps
    """Where this backend asks whether MPS is there: ``torch.backends.mps``."""

    @classmethod
    def is_available(cls) -> bool:
        return cls.mps is not None and bool(cls.mps_backend.is_available())

    def empty_cache(self) -> None:
        empty_cache = getattr(self.mps, "empty_cache", None)
        if empty_cache is not None:
            empty_cache()

    def read_memory(self) -> MemoryReading:
        mps = self.mps
        current_allocated_memory = getattr(mps, "current_allocated_memory", None)
        driver_allocated_memory = getattr(mps, "driver_allocated_memory", None)
        allocated = None if current_allocated_memory is None else int(current_allocated_memory())
        # The driver's figure includes what the MPS allocator caches, like CUDA's reserved.
        driver_allocated = (
            None if driver_allocated_memory is None else int(driver_allocated_memory())
        )
        if driver_allocated is None:
            # Without the driver's figure there is no usage to measure against the capacity.
            return MemoryReading(allocated=allocated)
        capacity = self._capacity()
        return MemoryReading(
            allocated=allocated,
            reserved=driver_allocated,
            free=None if capacity is None else max(capacity - driver_allocated, 0),
            total=capacity,
            used=driver_allocated,
        )

    _capacity_bytes: int | None = None

    def _capacity(self) -> int | None:
        # Metal's recommended working set is fixed for the process: asked once.
        if self._capacity_bytes is None:
            recommended_max_memory = getattr(self.mps, "recommended_max_memory", None)
            if recommended_max_memory is not None:
                self._capacity_bytes = int(recommended_max_memory())
            else:
                host_memory = _host_memory_bytes()
                if host_memory is None:
                    return None
                self._capacity_bytes = int(host_memory * FALLBACK_FRACTION_OF_HOST_MEMORY)
        return self._capacity_bytes
