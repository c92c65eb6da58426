"""NVIDIA CUDA devices (and AMD ROCm devices, which PyTorch exposes as ``cuda``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from memscope.backends.base import DeviceBackend, MemoryReading, OomObserver, register_backend

ASYNC_ALLOCATOR = "cudaMallocAsync"
"""What ``torch.cuda.get_allocator_backend()`` answers under CUDA's own asynchronous
allocator (``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync``)."""

_NOT_ASKED = "not asked"


def _nested_figure(stats: Mapping[str, Any], name: str, which: str) -> int:
    # The allocator's statistics nest as {"allocated_bytes": {"all": {"current": n, ...}}}.
    pool = stats.get(name)
    if pool is None:
        return 0
    return int(pool.get("all", {}).get(which, 0))


def _flat_figure(stats: Mapping[str, Any], name: str, which: str) -> int:
    return int(stats.get(f"{name}.all.{which}", 0))


@register_backend
class CudaBackend(DeviceBackend):
    """Queries go to this backend's own device index, never to "the current device".

    Every torch call goes through the ``cuda`` class attribute (``torch.cuda`` itself), so
    :class:`memscope.testing.FakeDevice` serves a subclass whose ``cuda`` records the calls,
    without patching torch. Calls newer than memscope's floor (torch 2.1) are looked up on
    it and have a fallback.
    """

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

    cuda: ClassVar[Any] = torch.cuda
    """Where this backend's torch calls go: ``torch.cuda``, or a test's stand-in."""

    @classmethod
    def is_available(cls) -> bool:
        return bool(cls.cuda.is_available())

    @classmethod
    def device_count(cls) -> int:
        return int(cls.cuda.device_count())

    @classmethod
    def default_index(cls) -> int:
        return int(cls.cuda.current_device())

    @classmethod
    def indexed(cls) -> bool:
        # Always; asking default_index() would start CUDA (current_device() does), and a
        # manager for "cuda:1" must not start it before configure_allocator had its say.
        return True

    torch_c: ClassVar[Any] = torch._C
    """Where torch's private CUDA bindings are: ``torch._C``, or a test's stand-in."""

    @classmethod
    def initialized(cls) -> bool:
        """Whether this process has initialised CUDA (after that, the allocator's settings
        from the environment are fixed)."""
        return bool(cls.cuda.is_initialized())

    @classmethod
    def set_allocator_settings(cls, settings: str) -> bool:
        """Apply ``PYTORCH_CUDA_ALLOC_CONF``-style ``settings`` to the running allocator;
        ``False`` where the installed torch has no setter for that."""
        # torch 2.9 moved the setter to the accelerator-generic binding and deprecated the
        # old one (it warns), so the new one is tried first.
        setter = getattr(cls.torch_c, "_accelerator_setAllocatorSettings", None)
        if setter is None:
            setter = getattr(cls.cuda.memory, "_set_allocator_settings", None)
        if setter is None:
            return False
        setter(settings)
        return True

    def attach_oom_observer(self, observer: OomObserver) -> bool:
        attach = getattr(self.torch_c, "_cuda_attach_out_of_memory_observer", None)
        if attach is None:
            return False
        attach(observer)
        return True

    def empty_cache(self) -> None:
        # The caching allocator has no per-device form: this releases the cached blocks of
        # every device this process has initialised. torch.cuda.empty_cache() itself does
        # nothing in a process that has not initialised CUDA (it asks is_initialized(), in
        # every torch since memscope's floor), so clearing never creates a context; asking
        # here as well would be a third torch call per step.
        self.cuda.empty_cache()

    def read_memory(self) -> MemoryReading:
        cuda = self.cuda
        index = self.index
        free, total = cuda.mem_get_info(index)
        # One statistics call, without torch.cuda.memory_stats()'s flatten and sort of every
        # figure in Python (most of a cleanup step's cost); memory_stats is the fallback.
        nested = getattr(cuda, "memory_stats_as_nested_dict", None)
        if nested is not None:
            stats, figure = nested(index), _nested_figure
        else:
            stats, figure = cuda.memory_stats(index), _flat_figure
        inactive_split = retries = ooms = None
        # cudaMallocAsync keeps none of these and torch reports zeros: None says "n/a".
        if self.allocator_backend() != ASYNC_ALLOCATOR:
            inactive_split = figure(stats, "inactive_split_bytes", "current")
            retries = stats.get("num_alloc_retries")
            ooms = stats.get("num_ooms")
        return MemoryReading.from_caching_allocator(
            free=free,
            total=total,
            allocated=figure(stats, "allocated_bytes", "current"),
            reserved=figure(stats, "reserved_bytes", "current"),
            peak_allocated=figure(stats, "allocated_bytes", "peak"),
            peak_reserved=figure(stats, "reserved_bytes", "peak"),
            inactive_split=inactive_split,
            alloc_retries=None if retries is None else int(retries),
            allocator_ooms=None if ooms is None else int(ooms),
        )

    _allocator_backend: str | None = _NOT_ASKED

    def allocator_backend(self) -> str | None:
        """``"native"`` or ``"cudaMallocAsync"`` (``PYTORCH_CUDA_ALLOC_CONF=backend:...``);
        ``None`` where torch cannot say (before 2.0).

        Not a torch call per reading: fixed once the allocator starts, so asked once per
        backend, at its first reading. Under ``cudaMallocAsync`` torch reports some
        statistics as zeros and records no allocation history.
        """
        if self._allocator_backend is _NOT_ASKED:
            get_allocator_backend = getattr(self.cuda, "get_allocator_backend", None)
            self._allocator_backend = (
                None if get_allocator_backend is None else str(get_allocator_backend())
            )
        return self._allocator_backend

    def reset_peak_memory_stats(self) -> None:
        self.cuda.reset_peak_memory_stats(self.index)

    # Allocation history is process-wide in torch (every CUDA device at once), and private
    # API: looked up at each use, so a torch without it records nothing instead of failing.
    # Under cudaMallocAsync torch records no history either.

    def why_no_memory_history(self) -> str | None:
        if self.allocator_backend() == ASYNC_ALLOCATOR:
            return (
                f"torch records no allocation history under the {ASYNC_ALLOCATOR} allocator "
                "(PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync)"
            )
        return None

    def start_memory_history(self, max_entries: int) -> bool:
        record = getattr(self.cuda.memory, "_record_memory_history", None)
        if record is None or self.allocator_backend() == ASYNC_ALLOCATOR:
            return False
        record(enabled="all", max_entries=max_entries)
        return True

    def stop_memory_history(self) -> None:
        record = getattr(self.cuda.memory, "_record_memory_history", None)
        if record is not None and self.allocator_backend() != ASYNC_ALLOCATOR:
            record(enabled=None)

    def dump_memory_history(self, path: str) -> bool:
        dump_snapshot = getattr(self.cuda.memory, "_dump_snapshot", None)
        if dump_snapshot is None or self.allocator_backend() == ASYNC_ALLOCATOR:
            return False
        dump_snapshot(path)
        return True
