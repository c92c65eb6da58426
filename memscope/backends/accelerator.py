"""Any other accelerator torch knows (Intel XPU, Ascend NPU, ...) through ``torch.accelerator``.

``torch.accelerator`` is new in torch 2.6 and its memory calls in 2.8; memscope supports torch
2.1, so each call is looked up at use. Without ``torch.accelerator`` an Intel XPU is still
found through ``torch.xpu``, and a missing memory call falls back to the device module's
(``torch.xpu.mem_get_info``, ``torch.xpu.memory_stats``) or leaves its figures unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from memscope.backends.base import DeviceBackend, MemoryReading, register_backend


def _flat_figure(stats: Mapping[str, Any], name: str) -> int:
    return int(stats.get(name, 0))


@register_backend
class AcceleratorBackend(DeviceBackend):
    """Serves whichever accelerator torch reports, unless a dedicated backend claims it.

    The device type is only known at run time, so it comes from :meth:`detected_type`.
    torch calls go through the ``accelerator`` class attribute (``torch.accelerator``, or
    ``None`` before torch 2.6) and :meth:`device_module`, so
    :class:`memscope.testing.FakeDevice` serves a subclass that records them.
    """

    device_type = "accelerator"
    detection_priority = 30
    oom_messages = (r"XPU out of memory", r"NPU out of memory")

    # CUDA and MPS have dedicated backends with earlier priority; listing them keeps this
    # backend from claiming them even when it is asked directly.
    dedicated_types = frozenset({"cuda", "mps", "cpu"})

    accelerator: ClassVar[Any] = getattr(torch, "accelerator", None)
    """Where this backend's torch calls go: ``torch.accelerator``, or a test's stand-in."""

    def __init__(self, index: int | None) -> None:
        super().__init__(index)
        # Which accelerator this is, asked now, when the backend is made (detection asked the
        # same a moment ago), so that readings ask torch nothing about it.
        device_type = self.detected_type()
        self._device = (
            torch.device(device_type) if index is None else torch.device(device_type, index)
        )

    @classmethod
    def device_module(cls, device_type: str) -> Any:
        """The torch module of ``device_type`` (``torch.xpu``), ``None`` where there is none."""
        return getattr(torch, device_type, None)

    @classmethod
    def _current_type(cls) -> str | None:
        accelerator = cls.accelerator
        if accelerator is not None and hasattr(accelerator, "current_accelerator"):
            if not accelerator.is_available():
                return None
            current = accelerator.current_accelerator()
            return None if current is None else str(current.type)
        # Before torch 2.6: the one accelerator torch 2.1-2.5 has a module for besides CUDA.
        xpu = cls.device_module("xpu")
        if xpu is not None and xpu.is_available():
            return "xpu"
        return None

    @classmethod
    def handles(cls, device_type: str) -> bool:
        return device_type not in cls.dedicated_types and device_type == cls._current_type()

    @classmethod
    def is_available(cls) -> bool:
        accelerator_type = cls._current_type()
        return accelerator_type is not None and accelerator_type not in cls.dedicated_types

    @classmethod
    def _call(
        cls, name: str, module_name: str | None = None, device_type: str | None = None
    ) -> Callable[..., Any] | None:
        # torch.accelerator's call, else the device module's (module_name, default name).
        found = getattr(cls.accelerator, name, None)
        if found is not None:
            return found  # type: ignore[no-any-return]
        module = cls.device_module(device_type or cls.detected_type())
        return getattr(module, module_name or name, None)

    def _device_call(self, name: str, module_name: str | None = None) -> Callable[..., Any] | None:
        # The device's type is fixed once the backend is made (self.device is cached), so a
        # reading asks torch nothing about which accelerator this is.
        return self._call(name, module_name, self.device.type)

    @classmethod
    def device_count(cls) -> int:
        if not cls.is_available():
            return 0
        count = cls._call("device_count")
        return 1 if count is None else int(count())

    @classmethod
    def default_index(cls) -> int:
        current = cls._call("current_device_index", "current_device")
        return 0 if current is None else int(current())

    @classmethod
    def detected_type(cls) -> str:
        return cls._current_type() or cls.device_type

    def empty_cache(self) -> None:
        empty_cache = self._device_call("empty_cache")
        if empty_cache is not None:
            empty_cache()

    def read_memory(self) -> MemoryReading:
        index = self.index
        mem_get_info = self._device_call("get_memory_info", "mem_get_info")
        memory_stats = self._device_call("memory_stats")
        if mem_get_info is None or memory_stats is None:
            # A torch too old for this device's memory figures: usage stays unknown.
            return MemoryReading()
        free, total = mem_get_info(index)
        # One statistics call for the four figures: memory_allocated() and its siblings each
        # build the same statistics again.
        stats = memory_stats(index)
        return MemoryReading.from_caching_allocator(
            free=free,
            total=total,
            allocated=_flat_figure(stats, "allocated_bytes.all.current"),
            reserved=_flat_figure(stats, "reserved_bytes.all.current"),
            peak_allocated=_flat_figure(stats, "allocated_bytes.all.peak"),
            peak_reserved=_flat_figure(stats, "reserved_bytes.all.peak"),
        )

    def reset_peak_memory_stats(self) -> None:
        reset = self._device_call("reset_peak_memory_stats")
        if reset is not None:
            reset(self.index)
