"""The backend interface and the registry of backends.

Everything device-specific in memscope sits behind :class:`DeviceBackend`. A backend is one
module in this package that defines a subclass and decorates it with :func:`register_backend`;
the package imports every such module, so adding a backend touches one file.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar, NamedTuple, TypeVar

import torch

from memscope.exceptions import DeviceUnavailableError, InvalidArgumentTypeError

# The public names are memscope.backends's, which lists them.

OomObserver = Callable[[int, int, int, int], None]
"""What torch calls when its allocator runs out of memory: ``(device index, bytes
requested, device total, device free)``, before it raises (and whether or not the error is
caught and retried later, by torch, cuDNN or memscope)."""

LOCAL_RANK_VARIABLE = "LOCAL_RANK"
"""The environment variable in which torchrun (and other launchers) tell each process the
index of the device it owns on its machine."""


class MemoryReading(NamedTuple):
    """Raw memory figures of one device, in bytes; ``None`` where the device cannot tell.

    ``used`` is what the device cannot give this process's next allocation, and ``total`` is
    the capacity that usage is measured against. The other figures are for reports.

    The last four come from the caching allocator's statistics where it keeps them (CUDA):
    ``inactive_split`` is memory in blocks the allocator split and cannot hand out whole
    (fragmentation), ``alloc_retries`` how often an allocation failed and succeeded after
    the allocator freed its cache, and ``allocator_ooms`` how many allocations it refused.
    Under the ``cudaMallocAsync`` allocator torch reports the last three as zeros, which
    the CUDA backend gives as ``None``: not reported.

    A reading is taken on every cleanup step, so it is a tuple: cheap to build.
    """

    allocated: int | None = None
    reserved: int | None = None
    free: int | None = None
    total: int | None = None
    used: int | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    inactive_split: int | None = None
    alloc_retries: int | None = None
    allocator_ooms: int | None = None

    @property
    def cached_but_free(self) -> int | None:
        """What the allocator reserves but no tensor uses: the cache ``empty_cache`` frees."""
        if self.reserved is None or self.allocated is None:
            return None
        return max(self.reserved - self.allocated, 0)

    @classmethod
    def from_caching_allocator(
        cls,
        *,
        free: int,
        total: int,
        allocated: int,
        reserved: int,
        peak_allocated: int | None = None,
        peak_reserved: int | None = None,
        inactive_split: int | None = None,
        alloc_retries: int | None = None,
        allocator_ooms: int | None = None,
    ) -> MemoryReading:
        """Build a reading for a device whose memory torch manages with a caching allocator.

        The driver's ``free`` does not count blocks that torch has cached but no tensor uses,
        yet the next allocation will reuse them, so they count as available. Memory held by
        other processes counts as used, because this process cannot have it.
        """
        cached_but_free = reserved - allocated if reserved > allocated else 0
        return cls(
            allocated,
            reserved,
            free,
            total,
            total - free - cached_but_free,
            peak_allocated,
            peak_reserved,
            inactive_split,
            alloc_retries,
            allocator_ooms,
        )


class DeviceBackend(abc.ABC):
    """How memscope talks to one kind of device.

    A backend instance is bound to one concrete device (``index`` is ``None`` for devices
    that have no index, such as the CPU). Class-level methods answer questions about the
    device type as a whole; they must not allocate memory on the device.
    """

    device_type: ClassVar[str]
    """The ``torch.device`` type this backend serves, such as ``"cuda"``."""

    detection_priority: ClassVar[int]
    """Auto-detection tries backends in ascending order of this number."""

    oom_messages: ClassVar[tuple[str, ...]] = ()
    """Regular expressions for the messages of plain ``RuntimeError``\\ s by which this
    device (its driver and libraries included) says it ran out of memory.
    :func:`memscope.is_oom_error` matches them against errors whose type does not say so."""

    caches_memory: ClassVar[bool] = True
    """Whether torch keeps a cache of freed memory on this device for ``empty_cache`` to
    return (the CPU's allocator keeps none, so a clear there is nothing and counts as none)."""

    reports_memory: ClassVar[bool] = True
    """Whether :meth:`read_memory` can report any figure (the CPU's reports none, so a
    manager watching neither the host nor a budget has nothing to read there)."""

    def __init__(self, index: int | None) -> None:
        self.index = index
        self._device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """The concrete device this backend queries."""
        # Made once: building a torch.device (and its str) on every reading is measurable.
        if self._device is None:
            if self.index is None:
                self._device = torch.device(self.detected_type())
            else:
                self._device = torch.device(self.detected_type(), self.index)
        return self._device

    @classmethod
    def detected_type(cls) -> str:
        """The device type as torch names it; fixed for most backends."""
        return cls.device_type

    @classmethod
    def handles(cls, device_type: str) -> bool:
        """Whether this backend serves devices of ``device_type``."""
        return device_type == cls.device_type

    @classmethod
    @abc.abstractmethod
    def is_available(cls) -> bool:
        """Whether at least one device of this type is usable in this process."""

    @classmethod
    def device_count(cls) -> int:
        """How many devices of this type this process can use."""
        return 1 if cls.is_available() else 0

    @classmethod
    def default_index(cls) -> int | None:
        """The index to use when the caller names the type without an index."""
        return None

    @classmethod
    def detected_index(cls) -> int | None:
        """The index auto-detection picks; ``None`` leaves it to :meth:`default_index`.

        Under torchrun each process owns the device whose index is in ``LOCAL_RANK``, so an
        indexed backend picks that one. Backends without indexes (MPS, the CPU) ignore it:
        every process on the machine shares their one device.
        """
        local_rank = os.environ.get(LOCAL_RANK_VARIABLE)
        # Without LOCAL_RANK nothing is asked of the device, not even whether it is indexed.
        if local_rank is None or not cls.indexed():
            return None
        return _local_rank_index(cls, local_rank)

    @classmethod
    def indexed(cls) -> bool:
        """Whether devices of this type are addressed by an index (``cuda:1``)."""
        return cls.default_index() is not None

    @abc.abstractmethod
    def empty_cache(self) -> None:
        """Return memory that torch caches but no tensor uses to the device."""

    @abc.abstractmethod
    def read_memory(self) -> MemoryReading:
        """Read the device's memory figures now."""

    def reset_peak_memory_stats(self) -> None:
        """Start peak figures afresh; a no-op where the device keeps none."""
        return None

    def attach_oom_observer(self, observer: OomObserver) -> bool:
        """Have torch call ``observer`` at each allocator out-of-memory error, for the rest
        of the process (torch cannot detach one); ``False`` where torch offers none."""
        return False

    def why_no_memory_history(self) -> str | None:
        """Why this device records no allocation history although devices of its type can
        (a setting of the process); ``None`` otherwise."""
        return None

    def start_memory_history(self, max_entries: int) -> bool:
        """Start recording allocation history; ``False`` where the device records none."""
        return False

    def stop_memory_history(self) -> None:
        """Stop recording allocation history; a no-op where the device records none."""
        return None

    def dump_memory_history(self, path: str) -> bool:
        """Write the recorded history to ``path``; ``False`` where the device records none."""
        return False


BackendClass = TypeVar("BackendClass", bound=type[DeviceBackend])

_BACKENDS: list[type[DeviceBackend]] = []

_Replacements = dict[type[DeviceBackend], type[DeviceBackend]]

# Stand-ins for registered backends in one context (memscope.testing's fakes): what the
# context that entered them, and tasks copied from it, see.
_context_replacements: ContextVar[_Replacements | None] = ContextVar(
    "memscope_backend_replacements", default=None
)
# The same, most recent last, for threads that have no stand-ins of their own: a plain
# threading.Thread starts with an empty context, yet a test's worker threads should see the
# test's fake device.
_shared_replacements: list[_Replacements] = []


def register_backend(backend: BackendClass) -> BackendClass:
    """Class decorator that makes a backend known to memscope, in every context."""
    _BACKENDS.append(backend)
    _BACKENDS.sort(key=lambda registered: registered.detection_priority)
    return backend


@contextmanager
def registered_in_context(
    replacements: Mapping[type[DeviceBackend], type[DeviceBackend]],
    *,
    hide_unreplaced: bool = False,
) -> Iterator[None]:
    """Serve each registered backend in ``replacements`` by its stand-in while the block runs.

    The hook :mod:`memscope.testing`'s fakes plug in through (a stand-in is usually a
    subclass). Detection, the list of available devices and new backends see the stand-ins
    in the calling thread or task, in tasks copied from it, and in threads that have no
    stand-ins of their own; another thread that entered its own sees its own. Blocks nest
    (an inner block's stand-ins add to those the same context entered), and the registry
    is as it was when the block ends. Backends already made keep talking to what they were
    made for.

    With ``hide_unreplaced``, every other registered backend except the CPU's (that neither
    this block nor an outer one replaces) reports no device, as on a machine without it.
    """
    for original, stand_in in replacements.items():
        if not (isinstance(stand_in, type) and issubclass(stand_in, DeviceBackend)):
            raise InvalidArgumentTypeError(
                f"replacements must map backend classes to backend classes, got "
                f"{original!r}: {stand_in!r}"
            )
    # Only this context's own stand-ins nest: a thread that merely sees another thread's
    # (having none of its own) starts afresh, so two threads' fakes never mix.
    outer = _context_replacements.get() or {}
    entry: _Replacements = {}
    if hide_unreplaced:
        entry.update(
            (backend, _hidden(backend))
            for backend in _BACKENDS
            if backend.device_type != "cpu" and backend not in outer
        )
    entry.update(outer)
    entry.update(replacements)
    token = _context_replacements.set(entry)
    _shared_replacements.append(entry)
    try:
        yield
    finally:
        _context_replacements.reset(token)
        # Remove this entry, not the last: threads may leave their blocks in any order.
        for position in range(len(_shared_replacements) - 1, -1, -1):
            if _shared_replacements[position] is entry:
                del _shared_replacements[position]
                break


_HIDDEN: dict[type[DeviceBackend], type[DeviceBackend]] = {}


def _hidden(backend: type[DeviceBackend]) -> type[DeviceBackend]:
    """A stand-in for ``backend`` that reports no device (made once per backend)."""
    hidden = _HIDDEN.get(backend)
    if hidden is None:

        def is_available(cls: type[DeviceBackend]) -> bool:
            return False

        def device_count(cls: type[DeviceBackend]) -> int:
            return 0

        def handles(cls: type[DeviceBackend], device_type: str) -> bool:
            # Asking a hidden backend what it handles must not ask the real device.
            return device_type == backend.device_type

        hidden = type(
            f"Hidden{backend.__name__}",
            (backend,),
            {
                "is_available": classmethod(is_available),
                "device_count": classmethod(device_count),
                "handles": classmethod(handles),
            },
        )
        _HIDDEN[backend] = hidden
    return hidden


def _current_replacements() -> _Replacements | None:
    in_context = _context_replacements.get()
    if in_context is not None:
        return in_context
    try:
        return _shared_replacements[-1] if _shared_replacements else None
    except IndexError:  # emptied by another thread since the check
        return None


def registered_backends() -> tuple[type[DeviceBackend], ...]:
    """The registered backends in auto-detection order, stand-ins in place (see
    :func:`registered_in_context`)."""
    replacements = _current_replacements()
    if not replacements:
        return tuple(_BACKENDS)
    return tuple(replacements.get(backend, backend) for backend in _BACKENDS)


def _backend_class_for(device_type: str) -> type[DeviceBackend] | None:
    for backend in registered_backends():
        if backend.handles(device_type):
            return backend
    return None


def available_devices() -> list[str]:
    """Every device this process can use, as strings such as ``"cuda:0"`` or ``"cpu"``."""
    names: list[str] = []
    for backend in registered_backends():
        if not backend.is_available():
            continue
        if backend.indexed():
            device_type = backend.detected_type()
            names.extend(f"{device_type}:{index}" for index in range(backend.device_count()))
        else:
            names.append(backend.detected_type())
    return names


def _local_rank_index(backend: type[DeviceBackend], value: str) -> int:
    device_type = backend.detected_type()
    try:
        index = int(value)
    except ValueError:
        index = -1
    if index < 0:
        raise DeviceUnavailableError(
            f"{LOCAL_RANK_VARIABLE}={value!r} in the environment is not a device index (an int "
            f">= 0), so memscope cannot pick this process's {device_type} device; fix the "
            "launcher's environment or pass device= explicitly"
        )
    count = backend.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"{LOCAL_RANK_VARIABLE}={value!r} in the environment names {device_type}:{index}, "
            f"but this process sees {count} {device_type} device(s); "
            f"available devices: {', '.join(available_devices())}. If the launcher gives each "
            f"process only its own device, pass device={device_type!r} explicitly"
        )
    return index


def detect_device() -> torch.device:
    """The device auto-detection picks: the first available backend in priority order.

    On an indexed device type under torchrun, the device is the one ``LOCAL_RANK`` names
    (``cuda:3`` for ``LOCAL_RANK=3``); otherwise it is index-free, and the backend's default
    index (for CUDA the current device) applies.
    """
    for backend in registered_backends():
        if backend.is_available():
            index = backend.detected_index()
            if index is None:
                return torch.device(backend.detected_type())
            return torch.device(backend.detected_type(), index)
    # The CPU backend is always available, so this only happens with a broken registry.
    raise DeviceUnavailableError("no memscope backend reports an available device")


def _unavailable(device: object, reason: str) -> DeviceUnavailableError:
    available = ", ".join(available_devices()) or "none"
    return DeviceUnavailableError(f"device {device!r} {reason}; available devices: {available}")


def present_backend_class(device: torch.device) -> type[DeviceBackend]:
    """The backend class for ``device``, after checking that the device is really there.

    Asks only whether the device type is available and how many devices it has, which
    initialises no device: decorators check their ``device=`` with it when decorating.
    """
    backend_class = _backend_class_for(device.type)
    if backend_class is None or not backend_class.is_available():
        raise _unavailable(str(device), "is not available on this machine")
    index = device.index
    if index is not None and (
        index != 0 if not backend_class.indexed() else index >= backend_class.device_count()
    ):
        raise _unavailable(str(device), "has no device with that index")
    return backend_class


def create_backend(device: torch.device) -> DeviceBackend:
    """The backend bound to ``device``, after checking that the device is really there."""
    backend_class = present_backend_class(device)
    if device.index is None:
        return backend_class(backend_class.default_index())
    return backend_class(device.index if backend_class.indexed() else None)
