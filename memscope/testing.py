"""Test memory-managed code without a GPU.

:class:`FakeDevice` stands in for a CUDA, MPS or other accelerator device: while it is
active, memscope's backend of that type is served, through memscope's backend registry, by a
subclass whose torch calls go to recording fakes that answer from figures you set, so a test
can assert both what memscope asked torch and what it made of the answers::

    from memscope import MemoryManager
    from memscope.testing import FakeDevice, GiB

    def test_collects_when_memory_is_tight():
        with FakeDevice("cuda", total=8 * GiB) as fake:
            fake.set_memory(allocated=7 * GiB, reserved=7 * GiB)
            manager = MemoryManager("cuda", memory_threshold=0.8)
            assert manager.trigger_gc_if_needed() is True
            assert fake.count("torch.cuda.empty_cache") == 1

While a fake is active, the faked type is the only accelerator memscope sees: a real CUDA,
MPS or other device of another type looks absent, so a test gives the same answers on a GPU
workstation as on a laptop. :class:`NoAccelerator` hides every real accelerator, for tests of
what happens on a CPU-only machine.

The fakes patch nothing in torch (unless ``FakeDevice(..., patch_torch=True)`` asks for it, to
test memscope's real backends): they apply to the thread or task that entered them and to
threads without a fake of their own. Entering and leaving one also drops the default managers
``@auto_clear`` shares, so none of them outlives the fake device it was made for.

:class:`FakeHost` does the same for the host's memory figures, so that host monitoring and
CPU budgets can be tested without filling the machine's RAM.
"""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import tempfile
import threading
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

import memscope.host
from memscope._context import forget_shared_managers
from memscope.backends import DeviceBackend, registered_in_context
from memscope.backends.accelerator import AcceleratorBackend
from memscope.backends.cuda import CudaBackend
from memscope.backends.mps import MpsBackend
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.typing import DeviceLike
from memscope.units import format_bytes

__all__ = [
    "FakeCall",
    "FakeDevice",
    "FakeHost",
    "FakeMemory",
    "GiB",
    "MiB",
    "NoAccelerator",
    "RecordingManager",
    "oom_error",
]

MiB = 1024**2
GiB = 1024**3

_MISSING = object()

_Patch = tuple[Any, str, object]


def _family_backend(device_type: str) -> type[DeviceBackend]:
    if device_type == "cuda":
        return CudaBackend
    if device_type == "mps":
        return MpsBackend
    return AcceleratorBackend


class _Patches:
    """Module attributes replaced while active and put back, in reverse order, after."""

    def __init__(self) -> None:
        self._saved: list[_Patch] = []

    def apply(self, patches: Iterable[_Patch]) -> None:
        for module, name, replacement in patches:
            self._saved.append((module, name, getattr(module, name, _MISSING)))
            if replacement is _MISSING:
                if hasattr(module, name):
                    delattr(module, name)
            else:
                setattr(module, name, replacement)

    def restore(self) -> None:
        while self._saved:
            module, name, original = self._saved.pop()
            if original is _MISSING:
                if hasattr(module, name):
                    delattr(module, name)
            else:
                setattr(module, name, original)


class NoAccelerator:
    """While active, memscope sees no CUDA, MPS or other accelerator: the machine looks
    CPU-only.

    Tests of what memscope does without a GPU (auto-detection picking the CPU, errors naming
    the devices there are) then pass on a GPU workstation too. A :class:`FakeDevice` entered
    inside it adds its own device. It plugs in through memscope's backend registry
    (:func:`memscope.backends.registered_in_context`), not by patching torch, so it applies
    to the thread or task that entered it (and to threads with no fake of their own), and
    torch itself still reports the real devices.
    """

    def __init__(self) -> None:
        self._registry: AbstractContextManager[None] | None = None

    def __enter__(self) -> NoAccelerator:
        forget_shared_managers()
        self._registry = registered_in_context({}, hide_unreplaced=True)
        self._registry.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        forget_shared_managers()
        if self._registry is not None:
            self._registry.__exit__(None, None, None)
            self._registry = None


def _fresh(failure: BaseException | Callable[[], BaseException]) -> BaseException:
    """A new exception like ``failure`` (or made by it), with no traceback yet."""
    if not isinstance(failure, BaseException):
        return failure()
    try:
        error = copy.copy(failure)
    except Exception:
        return failure
    error.__traceback__ = None
    notes = getattr(failure, "__notes__", None)
    if notes is not None:
        # A shallow copy would share the list, and notes added to one error reach the next.
        setattr(error, "__notes__", list(notes))  # noqa: B010 (no __notes__ in 3.10 typing)
    return error


class FakeCall(NamedTuple):
    """One call of a faked torch function, such as ``("torch.cuda.mem_get_info", (1,))``.

    ``kwargs`` holds keyword arguments as ``(name, value)`` pairs sorted by name; it is empty
    for the calls memscope makes positionally, so ``FakeCall(function, args)`` compares
    equal to them.
    """

    function: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass
class FakeMemory:
    """The memory of one fake device, in bytes.

    ``reserved`` is what torch's caching allocator holds (live tensors plus cache),
    ``other_processes`` what other processes hold; the driver's free memory is what is left.
    A neighbour never holds what this process holds: ``reserved + other_processes`` never
    exceeds ``total``, so ``free`` is what the card has, never below zero.
    """

    total: int
    allocated: int = 0
    reserved: int = 0
    other_processes: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    inactive_split: int = 0
    alloc_retries: int = 0
    allocator_ooms: int = 0
    scripted_usage: deque[float] = field(default_factory=deque)

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.other_processes

    def update_peaks(self) -> None:
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def apply_next_scripted_usage(self) -> None:
        # A scripted usage is realised as live tensors, so every backend's formula gives it.
        if self.scripted_usage:
            usage = self.scripted_usage.popleft()
            self.allocated = self.reserved = round(usage * self.total)
            self.other_processes = 0
            self.update_peaks()

    def nested_stats(self) -> dict[str, Any]:
        """The allocator's statistics as ``torch.cuda.memory_stats_as_nested_dict`` gives
        them (the figures memscope reads; the pools are left out)."""

        def stat(current: int, peak: int) -> dict[str, dict[str, int]]:
            return {"all": {"current": current, "peak": peak, "allocated": peak, "freed": 0}}

        return {
            "allocated_bytes": stat(self.allocated, self.peak_allocated),
            "reserved_bytes": stat(self.reserved, self.peak_reserved),
            "inactive_split_bytes": stat(self.inactive_split, self.inactive_split),
            "num_alloc_retries": self.alloc_retries,
            "num_ooms": self.allocator_ooms,
        }

    def flat_stats(self) -> dict[str, int]:
        """The same figures flattened, as ``torch.cuda.memory_stats`` gives them."""
        flat: dict[str, int] = {}
        for name, value in self.nested_stats().items():
            if isinstance(value, dict):
                for which, figure in value["all"].items():
                    flat[f"{name}.all.{which}"] = figure
            else:
                flat[name] = value
        return dict(sorted(flat.items()))


class FakeDevice:
    """A scripted fake device whose torch functions record every call.

    Args:
        device_type: ``"cuda"``, ``"mps"``, or any other accelerator type (``"xpu"``,
            ``"npu"``, ...), which is faked through ``torch.accelerator``.
        device_count: how many devices of the type exist (MPS always has one).
        total: each device's capacity in bytes; for MPS, Metal's recommended working set.
        current_device: the index torch reports as the current device.
        recommended_max_memory: MPS only; ``False`` fakes a torch without
            ``torch.mps.recommended_max_memory`` to exercise the fallback.
        without: names of torch functions the fake leaves out, as an older torch lacks them
            (``("memory_stats_as_nested_dict",)``), to exercise memscope's fallbacks.
        allocator_backend: what ``torch.cuda.get_allocator_backend()`` answers.
        patch_torch: ``False`` (the default) plugs the fake in through memscope's backend
            registry: memscope's backend of the type is served by a subclass whose torch
            calls go to the recording fakes, and torch itself is untouched. The fake then
            applies to the thread or task that entered it and to threads without a fake of
            their own, and two threads with a fake each see their own. ``True`` instead
            replaces the functions on the ``torch`` modules for the whole process (not safe
            for parallel threads), to test memscope's real backends, or code of your own
            that calls ``torch.cuda`` directly.

    In both modes the calls are recorded under torch's names (``"torch.cuda.empty_cache"``)
    with the arguments memscope's backend passed, because the backend code that makes them
    is the same; only where the call goes differs.

    For CUDA, the recorder of allocation history is faked too:
    ``torch.cuda.memory._record_memory_history`` sets ``memory_history`` (``"all"`` while
    recording, ``None`` once stopped), and ``torch.cuda.memory._dump_snapshot(path)``
    writes a small pickle to ``path`` and appends the path to ``snapshot_files``.
    """

    def __init__(
        self,
        device_type: str = "cuda",
        *,
        device_count: int = 1,
        total: int = 16 * GiB,
        current_device: int = 0,
        recommended_max_memory: bool = True,
        without: Iterable[str] = (),
        allocator_backend: str = "native",
        patch_torch: bool = False,
    ) -> None:
        if device_type == "cpu":
            raise ValueError("device_type 'cpu' needs no fake: the CPU is always there")
        self.device_type = device_type
        self.device_count = 1 if device_type == "mps" else device_count
        self.current_device = current_device
        self.recommended_max_memory = recommended_max_memory
        self.without = frozenset(without)
        if not recommended_max_memory:
            self.without |= {"recommended_max_memory"}
        self.allocator_backend = allocator_backend
        self.patch_torch = patch_torch
        self.memory = [FakeMemory(total=total) for _ in range(self.device_count)]
        self.calls: list[FakeCall] = []
        self.memory_history: str | None = None
        self.snapshot_files: list[str] = []
        self._failures: dict[str, BaseException | Callable[[], BaseException]] = {}
        self._patches = _Patches()
        self._registry: AbstractContextManager[None] | None = None
        # Many threads may use one fake: recording and the figures change under one lock.
        self._lock = threading.RLock()

    # Setting figures -------------------------------------------------------------------

    def set_memory(
        self,
        index: int = 0,
        *,
        allocated: int | None = None,
        reserved: int | None = None,
        other_processes: int | None = None,
        total: int | None = None,
        inactive_split: int | None = None,
        alloc_retries: int | None = None,
        allocator_ooms: int | None = None,
    ) -> None:
        """Set one device's figures; ``reserved`` defaults to at least ``allocated``.

        A neighbour gets what the card has left: ``other_processes`` is cut to ``total -
        reserved``. The process cannot reserve what a neighbour holds: ``reserved`` above
        ``total - other_processes`` is a ``ValueError`` (on a real card that allocation
        raises an out-of-memory error; raise :func:`oom_error` in the simulation instead).
        """
        with self._lock:
            memory = self.memory[index]
            if total is not None:
                memory.total = total
            new_reserved = memory.reserved
            if allocated is not None:
                new_reserved = max(new_reserved, allocated)
            if reserved is not None:
                new_reserved = reserved
            neighbour = memory.other_processes if other_processes is None else other_processes
            if other_processes is None and new_reserved + neighbour > memory.total:
                raise ValueError(
                    f"reserved={new_reserved} with other_processes={neighbour} exceeds "
                    f"total={memory.total}: the process cannot reserve what another process "
                    "holds; raise memscope.testing.oom_error() in the simulation instead"
                )
            if allocated is not None:
                memory.allocated = allocated
            memory.reserved = new_reserved
            memory.other_processes = max(min(neighbour, memory.total - memory.reserved), 0)
            for name, value in (
                ("inactive_split", inactive_split),
                ("alloc_retries", alloc_retries),
                ("allocator_ooms", allocator_ooms),
            ):
                if value is not None:
                    setattr(memory, name, value)
            memory.update_peaks()

    def set_usage(self, usage: float, index: int = 0) -> None:
        """Make the device report ``usage`` (a fraction), held by live tensors."""
        with self._lock:
            memory = self.memory[index]
            memory.other_processes = 0
            self.set_memory(index, allocated=round(usage * memory.total))
            memory.reserved = memory.allocated

    def script_usage(self, usages: Iterable[float], index: int = 0) -> None:
        """Queue usages that successive memory readings report, one per reading.

        A reading is the call of the function that starts a backend's query
        (``mem_get_info`` for CUDA and accelerators, ``driver_allocated_memory`` for MPS).
        When the queue runs out, the last figures stay.
        """
        with self._lock:
            self.memory[index].scripted_usage.extend(usages)

    def fail(self, function: str, error: BaseException | Callable[[], BaseException]) -> None:
        """Make the faked ``function`` (a full name, ``"torch.cuda.mem_get_info"``) raise.

        Each call raises a fresh exception: a copy of ``error`` (same type, arguments and
        notes), or what ``error()`` returns when it is a factory such as
        ``lambda: oom_error("cuda")``. One object raised again and again would grow its
        traceback without bound.
        """
        self._failures[function] = error

    def clear_failures(self) -> None:
        """Make every faked function answer normally again."""
        self._failures.clear()

    # Reading what happened --------------------------------------------------------------

    def count(self, function: str) -> int:
        """How often the faked ``function`` (full name) was called."""
        with self._lock:
            return sum(1 for call in self.calls if call.function == function)

    def calls_to(self, function: str) -> list[FakeCall]:
        """The calls of the faked ``function`` (full name), in order."""
        with self._lock:
            return [call for call in self.calls if call.function == function]

    def function(self, name: str) -> Callable[..., Any]:
        """The recording fake of torch's ``name`` (``"torch.cuda.mem_get_info"``), to call
        directly; a ``KeyError`` for a function this fake does not have."""
        for module_name, namespace in self._namespaces().items():
            prefix = module_name + "."
            short = name[len(prefix) :]
            if name.startswith(prefix) and "." not in short and hasattr(namespace, short):
                return getattr(namespace, short)  # type: ignore[no-any-return]
        raise KeyError(f"{type(self).__name__}({self.device_type!r}) has no fake of {name!r}")

    # Activation -------------------------------------------------------------------------

    def __enter__(self) -> FakeDevice:
        # Shared default managers (those @auto_clear makes) hold backends bound to whatever
        # device was there when they were made: start and end with none.
        forget_shared_managers()
        real = _family_backend(self.device_type)
        if self.patch_torch:
            self._patches.apply(self._torch_patches())
            stand_in: type[DeviceBackend] = real
        else:
            stand_in = self._stand_in(real)
        self._registry = registered_in_context({real: stand_in}, hide_unreplaced=True)
        self._registry.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        forget_shared_managers()
        if self._registry is not None:
            self._registry.__exit__(None, None, None)
            self._registry = None
        self._patches.restore()

    def _stand_in(self, real: type[DeviceBackend]) -> type[DeviceBackend]:
        namespaces = self._namespaces()
        attributes: dict[str, Any]
        if real is CudaBackend:
            attributes = {"cuda": namespaces["torch.cuda"]}
        elif real is MpsBackend:
            attributes = {
                "mps": namespaces["torch.mps"],
                "mps_backend": namespaces["torch.backends.mps"],
            }
        else:
            attributes = {
                "accelerator": namespaces["torch.accelerator"],
                "device_module": classmethod(lambda cls, device_type: None),
            }
        return type(f"Fake{real.__name__}", (real,), attributes)

    def _torch_patches(self) -> Iterator[_Patch]:
        modules: dict[str, Any] = {
            "torch.cuda": torch.cuda,
            "torch.cuda.memory": torch.cuda.memory,
            "torch.mps": getattr(torch, "mps", None),
            "torch.backends.mps": torch.backends.mps,
            "torch.accelerator": getattr(torch, "accelerator", None),
        }
        for module_name, namespace in self._namespaces().items():
            module = modules[module_name]
            if module is None:
                continue
            for name, function in vars(namespace).items():
                if not isinstance(function, types.SimpleNamespace):
                    yield module, name, function
            for name in self.without:
                yield module, name, _MISSING

    # The fakes --------------------------------------------------------------------------

    def _namespaces(self) -> dict[str, types.SimpleNamespace]:
        """The recording fakes by torch module, built once per fake."""
        built: dict[str, types.SimpleNamespace] | None = getattr(self, "_built", None)
        if built is None:
            if self.device_type == "cuda":
                built = self._cuda_fakes()
            elif self.device_type == "mps":
                built = self._mps_fakes()
            else:
                built = self._accelerator_fakes()
            self._built = built
        return built

    def _namespace(
        self, module_name: str, implementations: dict[str, Callable[..., Any]]
    ) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            **{
                name: self._recorded(f"{module_name}.{name}", implementation)
                for name, implementation in implementations.items()
                if name not in self.without
            }
        )

    def _recorded(self, function: str, implementation: Callable[..., Any]) -> Callable[..., Any]:
        def fake(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append(FakeCall(function, args, tuple(sorted(kwargs.items()))))
                failure = self._failures.get(function)
                if failure is not None:
                    raise _fresh(failure)
                return implementation(*args, **kwargs)

        fake.__name__ = function.rsplit(".", 1)[-1]
        return fake

    def _index(self, device: object = None) -> int:
        if device is None:
            return self.current_device
        if isinstance(device, torch.device):
            return self.current_device if device.index is None else device.index
        if isinstance(device, str):
            return self._index(torch.device(device))
        if isinstance(device, int):
            return device
        raise TypeError(f"fake {self.device_type} function got an unexpected device {device!r}")

    def _reading(self, device: object = None) -> FakeMemory:
        memory = self.memory[self._index(device)]
        memory.apply_next_scripted_usage()
        return memory

    def _empty_cache(self) -> None:
        for memory in self.memory:
            memory.reserved = memory.allocated

    def _reset_peak_memory_stats(self, device: object = None) -> None:
        memory = self.memory[self._index(device)]
        memory.peak_allocated = memory.allocated
        memory.peak_reserved = memory.reserved

    def _caching_allocator_fakes(self, mem_get_info_name: str) -> dict[str, Callable[..., Any]]:
        def mem_get_info(device: object = None) -> tuple[int, int]:
            memory = self._reading(device)
            return memory.free, memory.total

        return {
            mem_get_info_name: mem_get_info,
            "memory_stats": lambda device=None: self.memory[self._index(device)].flat_stats(),
            "memory_allocated": lambda device=None: self.memory[self._index(device)].allocated,
            "memory_reserved": lambda device=None: self.memory[self._index(device)].reserved,
            "max_memory_allocated": lambda device=None: (
                self.memory[self._index(device)].peak_allocated
            ),
            "max_memory_reserved": lambda device=None: (
                self.memory[self._index(device)].peak_reserved
            ),
            "reset_peak_memory_stats": self._reset_peak_memory_stats,
            "empty_cache": self._empty_cache,
            "device_count": lambda: self.device_count,
        }

    def _cuda_fakes(self) -> dict[str, types.SimpleNamespace]:
        implementations = self._caching_allocator_fakes("mem_get_info")
        implementations.update(
            {
                "is_available": lambda: True,
                "is_initialized": lambda: True,
                "current_device": lambda: self.current_device,
                "memory_stats_as_nested_dict": lambda device=None: self.memory[
                    self._index(device)
                ].nested_stats(),
                "get_allocator_backend": lambda: self.allocator_backend,
            }
        )
        memory = self._memory_history_namespace()
        cuda = self._namespace("torch.cuda", implementations)
        cuda.memory = memory
        return {"torch.cuda": cuda, "torch.cuda.memory": memory}

    def _memory_history_namespace(self) -> types.SimpleNamespace:
        # The recorder of CUDA allocation history: the fake keeps only whether it is on,
        # and its snapshot files hold an empty history in the shape torch writes.
        def record_memory_history(enabled: str | None = "all", *args: Any, **options: Any) -> None:
            self.memory_history = enabled

        def dump_snapshot(filename: str = "dump_snapshot.pickle", *args: Any) -> None:
            snapshot: dict[str, list[Any]] = {
                "segments": [],
                "device_traces": [[] for _ in range(self.device_count)],
            }
            with open(filename, "wb") as file:
                pickle.dump(snapshot, file)
            self.snapshot_files.append(str(filename))

        return self._namespace(
            "torch.cuda.memory",
            {"_record_memory_history": record_memory_history, "_dump_snapshot": dump_snapshot},
        )

    def _mps_fakes(self) -> dict[str, types.SimpleNamespace]:
        memory = self.memory[0]
        mps = self._namespace(
            "torch.mps",
            {
                "current_allocated_memory": lambda: memory.allocated,
                "driver_allocated_memory": lambda: self._reading().reserved,
                "empty_cache": self._empty_cache,
                "recommended_max_memory": lambda: memory.total,
            },
        )
        backend = self._namespace("torch.backends.mps", {"is_available": lambda: True})
        return {"torch.mps": mps, "torch.backends.mps": backend}

    def _accelerator_fakes(self) -> dict[str, types.SimpleNamespace]:
        implementations = self._caching_allocator_fakes("get_memory_info")
        implementations.update(
            {
                "is_available": lambda: True,
                "current_accelerator": lambda: torch.device(self.device_type),
                "current_device_index": lambda: self.current_device,
            }
        )
        return {"torch.accelerator": self._namespace("torch.accelerator", implementations)}


# What each backend's allocator says when it runs out; the CUDA and MPS texts follow torch's own.
_OOM_MESSAGES = {
    "cuda": (
        "CUDA out of memory. Tried to allocate {size}. GPU {index} has a total capacity of "
        "24.00 GiB of which 1.00 GiB is free. Of the allocated memory 20.00 GiB is allocated "
        "by PyTorch, and 1.00 GiB is reserved by PyTorch but unallocated."
    ),
    "mps": (
        "MPS backend out of memory (MPS allocated: 20.00 GB, other allocations: 1.00 GB, max "
        "allowed: 24.00 GB). Tried to allocate {size} on private pool."
    ),
    "xpu": "XPU out of memory. Tried to allocate {size} (GPU {index}; 24.00 GiB total capacity)",
    "npu": "NPU out of memory. Tried to allocate {size} (NPU {index}; 24.00 GiB total capacity)",
    "cpu": "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate {bytes} bytes.",
}


def oom_error(
    device_type: str = "cuda", *, tried: int = 2 * 1024**3, index: int = 0
) -> BaseException:
    """A fresh out-of-memory error as ``device_type``'s allocator raises it.

    CUDA gives ``torch.OutOfMemoryError``; MPS, XPU, NPU and the CPU give the plain
    ``RuntimeError`` with the message their allocators use, which
    :func:`~memscope.is_oom_error` recognises by its text. ``tried`` is the allocation that
    failed, in bytes. Each call makes a new exception, so raising it again and again never
    grows one traceback.
    """
    template = _OOM_MESSAGES.get(device_type)
    if template is None:
        raise ValueError(
            f"device_type must be one of {', '.join(sorted(_OOM_MESSAGES))}, got {device_type!r}"
        )
    message = template.format(size=format_bytes(tried), bytes=tried, index=index)
    if device_type == "cuda":
        return torch.OutOfMemoryError(message)
    return RuntimeError(message)


class RecordingManager(MemoryManager):
    """A real :class:`~memscope.MemoryManager` that records the cleanup calls made on it.

    ``events`` lists ``"clear_cache"`` and ``"trigger_gc_if_needed"`` in call order; pass
    a shared list to interleave them with your own events. Set ``cleanup_error`` to make
    both methods raise a fresh copy of it (after recording), to test how code copes with
    failing cleanup.
    """

    def __init__(
        self,
        device: DeviceLike = "cpu",
        memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
        *,
        events: list[str] | None = None,
    ) -> None:
        super().__init__(device, memory_threshold)
        self.events: list[str] = [] if events is None else events
        self.cleanup_error: BaseException | None = None

    def clear_cache(self) -> None:
        self.events.append("clear_cache")
        if self.cleanup_error is not None:
            raise _fresh(self.cleanup_error)
        super().clear_cache()

    def trigger_gc_if_needed(self) -> bool:
        self.events.append("trigger_gc_if_needed")
        if self.cleanup_error is not None:
            raise _fresh(self.cleanup_error)
        return super().trigger_gc_if_needed()


class FakeHost:
    """Fake host memory figures for the host monitors made while it is active.

    It writes a small ``/proc`` and cgroup tree into a temporary directory and points
    :class:`memscope.HostMemoryMonitor`'s defaults at it (psutil is bypassed, resource limits
    come from ``rlimit_as`` / ``rlimit_rss``), so the monitor's own parsing and arithmetic
    run on figures you choose::

        from memscope import MemoryManager
        from memscope.testing import FakeHost, GiB

        def test_cpu_job_collects_near_the_container_limit():
            with FakeHost(resident=3 * GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB):
                manager = MemoryManager("cpu", host=True)
                assert manager.check_memory_usage() == 0.75

    Args:
        resident: the process's resident memory in bytes (rounded down to whole pages).
        physical_memory: the machine's RAM in bytes.
        cgroup_limit: the memory limit of the process's cgroup, ``None`` for no limit.
        cgroup_version: ``2`` writes ``memory.max``, ``1`` ``memory.limit_in_bytes``.
        rlimit_as: the soft ``RLIMIT_AS`` in bytes, ``None`` for no limit.
        rlimit_rss: the soft ``RLIMIT_RSS`` in bytes, ``None`` for no limit.

    Monitors read the limit once, when made: a limit changed with :meth:`set_cgroup_limit`
    reaches only managers made afterwards. Like :class:`FakeDevice`, it patches module
    attributes for the whole process.
    """

    group = "/memscope-fake.slice/job"
    """The cgroup the faked process belongs to (its parent has no limit)."""

    def __init__(
        self,
        *,
        resident: int = GiB,
        physical_memory: int = 16 * GiB,
        cgroup_limit: int | None = None,
        cgroup_version: int = 2,
        rlimit_as: int | None = None,
        rlimit_rss: int | None = None,
    ) -> None:
        if cgroup_version not in (1, 2):
            raise ValueError(f"cgroup_version must be 1 or 2, got {cgroup_version!r}")
        self.physical_memory = physical_memory
        self.cgroup_version = cgroup_version
        self.rlimit_as = rlimit_as
        self.rlimit_rss = rlimit_rss
        self.page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.directory = Path(tempfile.mkdtemp(prefix="memscope-fake-host-"))
        self.proc_root = self.directory / "proc"
        self.cgroup_root = self.directory / "cgroup"
        (self.proc_root / "self").mkdir(parents=True)
        self._write_proc_files()
        self.set_resident(resident)
        self.set_cgroup_limit(cgroup_limit)
        self._saved: list[tuple[str, object]] = []

    def set_resident(self, resident: int) -> None:
        """Make the process's resident memory ``resident`` bytes (whole pages)."""
        pages = resident // self.page_size
        (self.proc_root / "self" / "statm").write_text(f"{pages * 3} {pages} 0 0 0 {pages} 0\n")

    def set_cgroup_limit(self, limit: int | None) -> None:
        """Set the cgroup's limit (``None``: no limit) for monitors made from now on."""
        if self.cgroup_version == 2:
            membership = f"0::{self.group}\n"
            base, file_name = self.cgroup_root, "memory.max"
            unlimited = "max"
        else:
            membership = f"5:memory:{self.group}\n0::/\n"
            base, file_name = self.cgroup_root / "memory", "memory.limit_in_bytes"
            unlimited = "9223372036854771712"
        (self.proc_root / "self" / "cgroup").write_text(membership)
        group_directory = base / self.group.strip("/")
        group_directory.mkdir(parents=True, exist_ok=True)
        (group_directory / file_name).write_text(f"{unlimited if limit is None else limit}\n")
        (group_directory.parent / file_name).write_text(f"{unlimited}\n")

    def _write_proc_files(self) -> None:
        (self.proc_root / "meminfo").write_text(
            f"MemTotal:       {self.physical_memory // 1024} kB\nMemFree:        0 kB\n"
        )

    def _getrlimit(self, which: int) -> tuple[int, int]:
        import resource

        limits = {
            getattr(resource, "RLIMIT_AS", None): self.rlimit_as,
            getattr(resource, "RLIMIT_RSS", None): self.rlimit_rss,
        }
        limit = limits.get(which)
        return (resource.RLIM_INFINITY if limit is None else limit, resource.RLIM_INFINITY)

    def __enter__(self) -> FakeHost:
        replacements: dict[str, object] = {
            "PROC_ROOT": self.proc_root,
            "CGROUP_ROOT": self.cgroup_root,
            "_default_getrlimit": self._getrlimit,
            "_import_psutil": lambda: None,
        }
        for name, replacement in replacements.items():
            self._saved.append((name, getattr(memscope.host, name)))
            setattr(memscope.host, name, replacement)
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._saved:
            name, original = self._saved.pop()
            setattr(memscope.host, name, original)
        shutil.rmtree(self.directory, ignore_errors=True)
