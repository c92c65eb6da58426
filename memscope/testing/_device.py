"""FakeDevice and NoAccelerator: fake devices plugged in through the backend registry."""

from __future__ import annotations

import pickle
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from memscope._context import forget_shared_managers
from memscope.backends import DeviceBackend, registered_in_context
from memscope.backends.accelerator import AcceleratorBackend
from memscope.backends.cuda import CudaBackend
from memscope.backends.mps import MpsBackend
from memscope.testing._records import FakeCall, FakeMemory, GiB, _fresh

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


def _left(registry: AbstractContextManager[None] | None) -> None:
    """Leave a stand-in's registry of backends; managers made meanwhile are forgotten."""
    forget_shared_managers()
    if registry is not None:
        registry.__exit__(None, None, None)


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
        _left(self._registry)
        self._registry = None


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
        initialized: what ``torch.cuda.is_initialized()`` answers (``initialized`` can be
            changed later): ``False`` fakes a process that has not started CUDA yet.
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
    writes a small pickle to ``path`` and appends the path to ``snapshot_files``. The
    allocator's runtime settings (``torch._C._accelerator_setAllocatorSettings`` and the
    older ``torch.cuda.memory._set_allocator_settings``) append their text to
    ``allocator_settings``; observers that ``torch._C._cuda_attach_out_of_memory_observer``
    attaches are kept in ``oom_observers`` and called by :meth:`allocator_oom`.
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
        initialized: bool = True,
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
        self.initialized = initialized
        self.allocator_settings: list[str] = []
        self.oom_observers: list[Callable[[int, int, int, int], None]] = []
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

    def allocator_oom(self, requested: int, index: int = 0) -> None:
        """Fake the allocator refusing ``requested`` bytes on device ``index``: its OOM count
        goes up and each attached observer is called, as torch does before it raises (raise
        :func:`oom_error` as well where the simulation's code sees the error)."""
        with self._lock:
            memory = self.memory[index]
            memory.allocator_ooms += 1
            observers = list(self.oom_observers)
        for observer in observers:
            observer(index, requested, memory.total, memory.free)

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
        _left(self._registry)
        self._registry = None
        self._patches.restore()

    def _stand_in(self, real: type[DeviceBackend]) -> type[DeviceBackend]:
        namespaces = self._namespaces()
        attributes: dict[str, Any]
        if real is CudaBackend:
            attributes = {"cuda": namespaces["torch.cuda"], "torch_c": namespaces["torch._C"]}
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
            "torch._C": torch._C,
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
                "is_initialized": lambda: self.initialized,
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
        bindings = self._namespace(
            "torch._C",
            {
                "_accelerator_setAllocatorSettings": self.allocator_settings.append,
                "_cuda_attach_out_of_memory_observer": self.oom_observers.append,
            },
        )
        return {"torch.cuda": cuda, "torch.cuda.memory": memory, "torch._C": bindings}

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
            {
                "_record_memory_history": record_memory_history,
                "_dump_snapshot": dump_snapshot,
                "_set_allocator_settings": self.allocator_settings.append,
            },
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
