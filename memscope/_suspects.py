"""The search for what holds a leak: the tensors made after a moment that stay alive, named.

:class:`SuspectSearch` is documented and exported by :mod:`memscope.leaks`, which starts one
when a leak is named; it lives here to keep that module about the rule.
"""

from __future__ import annotations

import gc
import inspect
import sys
import time
import types
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import torch

from memscope._validation import check_int
from memscope.exceptions import InvalidArgumentError
from memscope.reports import LeakSuspect

__all__ = ["SuspectSearch"]

SUSPECT_LIMIT: Final = 10
"""Suspect groups a finding lists at most."""


class SuspectSearch:
    """Find the tensors made after a moment that stay alive, and what holds them.

    Three steps, each a call: making the search notes every tensor alive now (weakly);
    :meth:`take_candidates`, a few items later, notes the tensors made since; and
    :meth:`suspects`, a few items after that, groups the candidates still alive by holder,
    device, shape and dtype. A tensor made in the last item and still held by a loop variable
    is dead by the third step; one appended to a list each item is not.

    Holders are found two ways: from the modules' globals forwards (a list or an object's
    attribute held by a module global, found even when ``gc.freeze()`` hid it from the
    collector), and backwards with ``gc.get_referrers``. Each step walks the collector's
    objects once; :attr:`seconds` adds up what the steps cost.
    """

    def __init__(self) -> None:
        started = time.perf_counter()
        self._before: dict[int, weakref.ReferenceType[torch.Tensor]] = {
            id(tensor): weakref.ref(tensor) for tensor in _live_tensors()
        }
        self._candidates: list[weakref.ReferenceType[torch.Tensor]] | None = None
        self.seconds = time.perf_counter() - started
        """Seconds the steps so far took."""

    @property
    def candidates_taken(self) -> bool:
        """Whether :meth:`take_candidates` ran."""
        return self._candidates is not None

    def take_candidates(self) -> int:
        """Note the tensors made since the search started; returns how many are alive."""
        started = time.perf_counter()
        before = self._before
        candidates = []
        for tensor in _live_tensors():
            known = before.get(id(tensor))
            if known is None or known() is not tensor:
                candidates.append(weakref.ref(tensor))
        self._candidates = candidates
        self._before = {}
        self.seconds += time.perf_counter() - started
        return len(candidates)

    def suspects(self, limit: int = SUSPECT_LIMIT) -> tuple[LeakSuspect, ...]:
        """The candidates still alive, grouped, largest first (at most ``limit`` groups)."""
        if self._candidates is None:
            raise InvalidArgumentError("suspects() needs take_candidates() to have run first")
        limit = check_int(limit, "limit", minimum=1)
        started = time.perf_counter()
        # A plain loop: a walrus in a comprehension would keep the last tensor in a cell.
        alive = []
        tensor = None
        for ref in self._candidates:
            tensor = ref()
            if tensor is not None:
                alive.append(tensor)
        del tensor
        try:
            holders = _name_holders(alive)
            groups = _group(alive, holders)
        finally:
            del alive
        self.seconds += time.perf_counter() - started
        return tuple(groups[:limit])


def _live_tensors() -> list[torch.Tensor]:
    """Every tensor the collector tracks (frozen objects excepted: they predate the batch)."""
    # isinstance against torch.Tensor goes through its metaclass; one issubclass per type
    # keeps a walk over a million objects at a few tens of milliseconds.
    is_tensor_type: dict[type, bool] = {}
    tensors: list[torch.Tensor] = []
    for obj in gc.get_objects():
        kind = type(obj)
        known = is_tensor_type.get(kind)
        if known is None:
            known = is_tensor_type[kind] = issubclass(kind, torch.Tensor)
        if known:
            tensors.append(obj)
    return tensors


_Key = tuple[str, tuple[int, ...], str]
"""What makes tensors alike in a suspect group: device, shape, dtype."""


def _key(tensor: torch.Tensor) -> _Key:
    return str(tensor.device), tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")


def _group(tensors: Sequence[torch.Tensor], holders: dict[int, _Holder]) -> list[LeakSuspect]:
    """Suspects: the tensors by holder and key; a container's count is all it holds alike.

    The search sees the tensors of a few items; the list they were appended to holds those
    of every item since the leak began, and that is the figure worth reading.
    """
    survivors: dict[tuple[str | None, _Key], list[torch.Tensor]] = {}
    containers: dict[str, object] = {}
    for tensor in tensors:
        holder = holders.get(id(tensor))
        label = None if holder is None else holder.label
        if holder is not None and holder.container is not None:
            containers.setdefault(holder.label, holder.container)
        survivors.setdefault((label, _key(tensor)), []).append(tensor)
    counted_storages: set[tuple[str, int]] = set()
    suspects = []
    # Named holders count a shared storage first: a view's base, alive through the view but
    # held by no name, must not take the bytes from the list the views are in.
    for (label, key), alike in sorted(survivors.items(), key=lambda group: group[0][0] is None):
        container = None if label is None else containers.get(label)
        if container is not None:
            held = [
                item
                for item in _items(container)
                if isinstance(item, torch.Tensor) and _key(item) == key
            ]
            alike = held or alike
        device, shape, dtype = key
        suspects.append(
            LeakSuspect(
                holder=label,
                device=device,
                shape=shape,
                dtype=dtype,
                count=len(alike),
                nbytes=sum(_new_storage_bytes(tensor, counted_storages) for tensor in alike),
            )
        )
    suspects.sort(key=lambda suspect: (-suspect.nbytes, -suspect.count))
    return suspects


def _new_storage_bytes(tensor: torch.Tensor, counted: set[tuple[str, int]]) -> int:
    """The bytes of ``tensor``'s storage, or 0 if another tensor's count had them already."""
    try:
        storage = tensor.untyped_storage()
        pointer, nbytes = storage.data_ptr(), storage.nbytes()
    except Exception:  # sparse and other storage-less layouts
        return tensor.nelement() * tensor.element_size()
    if pointer == 0:
        return nbytes
    key = (str(tensor.device), pointer)
    if key in counted:
        return 0
    counted.add(key)
    return nbytes


# Naming holders ---------------------------------------------------------------------------
#
# Forwards first: from the modules' globals and from the locals of the running frames, two
# steps deep (a global or local, its items or attributes, their items). That finds what
# gc.freeze() hides from gc.get_referrers and the locals of running functions, which it
# never sees, and gives the names people wrote. What is left is named backwards, with
# gc.get_referrers.

_CONTAINERS: Final = (list, tuple, set, frozenset, deque, dict)
_SKIPPED: Final = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


@dataclass(frozen=True, slots=True)
class _Holder:
    """What holds a tensor: a label for people, and the container when it is one."""

    label: str
    container: object = None


class _Place(NamedTuple):
    """Where a value sits: ``name`` in a scope (``in module colorize``, ``in run() (...)``)."""

    scope: str
    name: object
    local: bool = False

    def holder(self, value: object, owner: object = None, attribute: object = None) -> _Holder:
        """``list `outputs` in module colorize``, ``local variable `out` in run() ...``, or
        with an ``owner`` at the place, ``list `history` of Colorizer `colorizer` ...``."""
        if isinstance(value, _CONTAINERS):
            kind = type(value).__name__
        elif attribute is not None:
            kind = "attribute"
        else:
            kind = "local variable" if self.local else "global"
        where = f"`{self.name}` {self.scope}"
        if attribute is not None:
            where = f"`{attribute}` of {_owner_label(owner)} {where}"
        return _Holder(f"{kind} {where}", value if isinstance(value, _CONTAINERS) else None)


def _name_holders(tensors: Sequence[torch.Tensor]) -> dict[int, _Holder]:
    """What holds each tensor, by ``id``: named forwards first, then backwards."""
    wanted = {id(tensor) for tensor in tensors}
    names: dict[int, _Holder] = {}
    # Deprecated module attributes warn when touched; the search must not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for place, value in _scopes():
            _note(names, wanted, value, place)
            if isinstance(value, dict):
                # A dict of lists (results by name, say): one step further, by key.
                for key, inner in _entries(value):
                    if isinstance(inner, _CONTAINERS):
                        _note(names, wanted, inner, place, value, key)
            if isinstance(value, _CONTAINERS):
                continue
            for attribute, inner in _attributes(value):
                if not isinstance(inner, _SKIPPED):
                    _note(names, wanted, inner, place, value, attribute)
        unnamed = [tensor for tensor in tensors if id(tensor) not in names]
        if unnamed:
            for tensor_id, holder in _names_from_referrers(unnamed, own=(tensors,)).items():
                names.setdefault(tensor_id, holder)
    return names


def _scopes() -> Iterator[tuple[_Place, object]]:
    """Every module global and every local of this thread's frames, with its place."""
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or _is_memscope(module_name):
            continue
        scope = f"in module {module_name}"
        for name, value in list(namespace.items()):
            if isinstance(value, _SKIPPED):
                continue
            if isinstance(value, type) and getattr(value, "__module__", None) != module_name:
                continue  # a class imported from elsewhere is scanned where it is defined
            yield _Place(scope, name), value
    for frame in _running_frames():
        code = frame.f_code
        scope = (
            f"in {getattr(code, 'co_qualname', code.co_name)}() "
            f"({code.co_filename}:{frame.f_lineno})"
        )
        for name, value in list(frame.f_locals.items()):
            if not isinstance(value, _SKIPPED):
                yield _Place(scope, name, local=True), value


def _running_frames() -> Iterator[types.FrameType]:
    """The frames of this thread's stack, but memscope's own and module bodies.

    Only this thread's: reading the locals of a frame that another thread is running is not
    safe on every Python version. The cleanup that feeds the watch runs in the loop's thread.
    """
    frame = inspect.currentframe()
    while frame is not None:
        if not _is_memscope(frame.f_globals.get("__name__")) and (
            frame.f_locals is not frame.f_globals
        ):
            yield frame
        frame = frame.f_back


def _is_memscope(module_name: object) -> bool:
    return isinstance(module_name, str) and (
        module_name == "memscope" or module_name.startswith("memscope.")
    )


def _note(
    names: dict[int, _Holder],
    wanted: set[int],
    value: object,
    place: _Place,
    owner: object = None,
    attribute: object = None,
) -> None:
    """Name the wanted tensors that ``value`` is or holds; labels are made only on a hit."""
    if id(value) in wanted:
        names.setdefault(id(value), place.holder(value, owner, attribute))
    elif isinstance(value, _CONTAINERS):
        held = [id(item) for item in _items(value) if id(item) in wanted]
        if held:
            holder = place.holder(value, owner, attribute)
            for tensor_id in held:
                names.setdefault(tensor_id, holder)


def _owner_label(owner: object) -> str:
    return f"class {owner.__name__}" if isinstance(owner, type) else type(owner).__name__


def _attributes(value: object) -> list[tuple[Any, Any]]:
    """An object's (or a class's) own attributes; none where it has no ``__dict__``."""
    try:
        return list(vars(value).items())
    except Exception:  # no __dict__, or one that raises when read
        return []


def _entries(mapping: dict[Any, Any]) -> list[tuple[Any, Any]]:
    """A dict's items, or none if it changed size while being read (in another thread)."""
    try:
        return list(mapping.items())
    except Exception:
        return []


def _items(container: object) -> list[object]:
    """What a container holds: a dict's values, other containers' items."""
    try:
        if isinstance(container, dict):
            return list(container.values())
        if isinstance(container, _CONTAINERS):
            return list(container)
    except Exception:  # changed size while being read, in another thread
        return []
    return []


def _names_from_referrers(
    tensors: Sequence[torch.Tensor], own: tuple[object, ...] = ()
) -> dict[int, _Holder]:
    """Names for what refers to ``tensors``, from ``gc.get_referrers``: two walks at most.

    The first walk finds the direct holders. An object names its attribute; a container is
    named in the second walk by what refers to it in turn: an object's attribute, a
    generator's local, or the object whose ``__dict__`` it is.
    """
    wanted = {id(tensor) for tensor in tensors}
    names: dict[int, _Holder] = {}
    # Ids only: a dict or tuple holding the containers would itself refer to them.
    containers: list[object] = []
    held_by: dict[int, list[int]] = {}
    for referrer in _referrers(tensors, own):
        held = _held_ids(referrer, wanted)
        if not held:
            continue
        if isinstance(referrer, _CONTAINERS):
            containers.append(referrer)
            held_by[id(referrer)] = held
            continue
        kind, where = _direct_label(referrer, wanted)
        holder = _Holder(f"{kind} {where}")
        for tensor_id in held:
            names.setdefault(tensor_id, holder)
    if not containers:
        return names
    places, owners = _container_places(containers, own)
    for container in containers:
        held = held_by[id(container)]
        owner = owners.get(id(container))
        if owner is not None and isinstance(container, dict):
            # An object's __dict__: the tensors are the object's attributes.
            for key, value in list(container.items()):
                if id(value) in held:
                    label = f"attribute `{key}` of a {owner} object"
                    names.setdefault(id(value), _Holder(label))
            continue
        place = places.get(id(container), "that nothing memscope can name refers to")
        holder = _Holder(f"{type(container).__name__} {place}", container)
        for tensor_id in held:
            names.setdefault(tensor_id, holder)
    return names


def _referrers(objects: Sequence[object], own: tuple[object, ...] = ()) -> list[object]:
    """``gc.get_referrers(*objects)`` without the search's own lists, tuples and frames.

    ``own`` are the search's other lists that hold the objects (the tensors it looks at).
    """
    referrers = gc.get_referrers(*objects)
    ignored = {id(objects), *map(id, own)}
    return [
        referrer
        for referrer in referrers
        if id(referrer) not in ignored
        # The tuple of arguments of the call itself refers to every object.
        and not (
            isinstance(referrer, tuple)
            and len(referrer) == len(objects)
            and all(mine is theirs for mine, theirs in zip(referrer, objects, strict=True))
        )
        and not (
            isinstance(referrer, types.FrameType)
            and _is_memscope(referrer.f_globals.get("__name__"))
        )
    ]


def _held_ids(referrer: object, wanted: set[int]) -> list[int]:
    values: Iterable[object]
    if isinstance(referrer, types.FrameType):
        values = list(referrer.f_locals.values())
    elif isinstance(referrer, types.CellType):
        try:
            values = [referrer.cell_contents]
        except ValueError:  # an empty cell
            return []
    elif isinstance(referrer, _CONTAINERS):
        values = _items(referrer)
    elif isinstance(referrer, types.GeneratorType | types.CoroutineType):
        frame = getattr(referrer, "gi_frame", None) or getattr(referrer, "cr_frame", None)
        values = [] if frame is None else list(frame.f_locals.values())
    else:
        values = [value for _, value in _attributes(referrer)]
    return list(dict.fromkeys(id(value) for value in values if id(value) in wanted))


def _direct_label(referrer: object, wanted: set[int]) -> tuple[str, str]:
    """What a referrer that is no container calls what it holds, and where that is:
    ``("local variable", "`out` in run() (job.py:12)")``, ``("attribute", "`cache` of a
    Colorizer object")``."""
    if isinstance(referrer, types.GeneratorType | types.CoroutineType):
        frame = getattr(referrer, "gi_frame", None) or getattr(referrer, "cr_frame", None)
        if frame is not None:
            referrer = frame
    if isinstance(referrer, types.FrameType):
        code = referrer.f_code
        return "local variable", (
            f"`{_first_key(referrer.f_locals, wanted)}` in "
            f"{getattr(code, 'co_qualname', code.co_name)}() "
            f"({code.co_filename}:{referrer.f_lineno})"
        )
    if isinstance(referrer, types.CellType):
        return "closure variable", "of a function"
    attributes = dict(_attributes(referrer))
    if any(id(value) in wanted for value in attributes.values()):
        return "attribute", (
            f"`{_first_key(attributes, wanted)}` of a {type(referrer).__name__} object"
        )
    return "part", f"of a {type(referrer).__name__} object"


def _first_key(mapping: dict[Any, Any], wanted: set[int]) -> str:
    return next((str(key) for key, value in mapping.items() if id(value) in wanted), "?")


def _container_places(
    containers: Sequence[object], own: tuple[object, ...] = ()
) -> tuple[dict[int, str], dict[int, str]]:
    """Where each container sits, from what refers to it, and the type names of the objects
    whose ``__dict__`` some of them are.

    An object, a frame or a generator names the place; another container only says "in a
    dict", so it counts only where nothing better refers to the container.
    """
    wanted = {id(container) for container in containers}
    places: dict[int, str] = {}
    fallbacks: dict[int, str] = {}
    owners: dict[int, str] = {}
    for referrer in _referrers(containers, own):
        owned = _own_attributes_id(referrer)
        if owned is not None and owned in wanted:
            owners.setdefault(owned, type(referrer).__name__)
        for container_id in _held_ids(referrer, wanted):
            if isinstance(referrer, _CONTAINERS):
                fallbacks.setdefault(container_id, f"in a {type(referrer).__name__}")
            else:
                places.setdefault(container_id, _direct_label(referrer, {container_id})[1])
    return {**fallbacks, **places}, owners


def _own_attributes_id(referrer: object) -> int | None:
    """The ``id`` of an object's ``__dict__``, or ``None`` for anything else."""
    if isinstance(referrer, (type, types.ModuleType, *_CONTAINERS)):
        return None
    try:
        return id(vars(referrer))
    except Exception:
        return None
