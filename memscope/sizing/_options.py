"""The one value that says how batch sizes are searched, and the options around it.

:class:`Sizing` declares each sizing option once (``start``, ``factor``, ``min_size``,
``regrow_after``, ``headroom``, ``measure``), with its default, and checks all of them when it
is made: ``@adaptive_batch``, ``process_in_chunks``, ``iter_chunks``, their async forms,
:class:`~memscope.sizing.AdaptiveBatchState` and ``memscope.ray.managed`` all take one, so a
bad value fails before any work is done, with the parameter and the value named.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

from memscope import _context as context
from memscope._devices import as_torch_device
from memscope._validation import check_int, reject_both
from memscope.estimation import DEFAULT_HEADROOM, check_headroom
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import MemoryManager
from memscope.typing import DeviceLike

__all__ = ["Sizing", "SizingKeywords"]

MAX_SIZE = 2**53
"""The largest size: sizes are multiplied by floats, which are exact up to here."""

_SIZING_FIELDS = ("start", "factor", "min_size", "regrow_after", "headroom", "measure")


def _check_size(value: object, name: str) -> int:
    size = check_int(value, name, minimum=1)
    if size > MAX_SIZE:
        raise InvalidArgumentError(f"{name} must be an int <= 2**53, got {value!r}")
    return size


def _check_factor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentTypeError(
            f"factor must be a real number between 0 and 1, got {value!r} "
            f"of type {type(value).__name__}"
        )
    # Compared before converting: float(10**400) would raise OverflowError.
    if not 0 < value < 1:  # type: ignore[operator]
        raise InvalidArgumentError(
            f"factor must be between 0 and 1, exclusive (0 < factor < 1), got {value!r}"
        )
    shrink = float(value)
    if math.isnan(shrink) or not 0.0 < shrink < 1.0:
        raise InvalidArgumentError(
            f"factor must be between 0 and 1, exclusive (0 < factor < 1), got {value!r}"
        )
    return shrink


@dataclass(frozen=True, slots=True)
class Sizing:
    """How batch sizes are searched: checked once, when it is made, and never changed.

    ``Sizing(start=32)`` starts at 32 items; every other option has the default shown. Pass
    it as ``sizing=`` to :func:`~memscope.adaptive_batch`, :func:`~memscope.process_in_chunks`
    and the others; ``dataclasses.replace(sizing, start=64)`` makes a checked variant.
    """

    start: int | None = None
    """The first size tried, and the largest ever used (an int >= 1). ``None``: not given
    (``@adaptive_batch`` needs it; chunks sized by a memory model may go without)."""
    factor: float = 0.5
    """What a size is multiplied by after an out-of-memory error where nothing is measured
    (0 < factor < 1)."""
    min_size: int = 1
    """The smallest size tried (1 <= min_size <= start)."""
    regrow_after: int | None = None
    """After this many successes in a row, try a larger size; ``None``: grow only when the
    measurements say the device has room."""
    headroom: float = DEFAULT_HEADROOM
    """The share of the available memory that predicted sizes leave unused (0 <= h < 1)."""
    measure: bool = True
    """Size from measured memory where the device can be measured; ``False``: by factor."""

    def __post_init__(self) -> None:
        start = None if self.start is None else _check_size(self.start, "start")
        smallest = _check_size(self.min_size, "min_size")
        if start is not None and smallest > start:
            raise InvalidArgumentError(
                f"min_size must be <= start, got min_size={smallest!r} and start={start!r}"
            )
        shrink = _check_factor(self.factor)
        interval = (
            None
            if self.regrow_after is None
            else check_int(self.regrow_after, "regrow_after", minimum=1)
        )
        margin = check_headroom(self.headroom)
        if not isinstance(self.measure, bool):
            raise InvalidArgumentTypeError(
                f"measure must be True or False, got {self.measure!r} "
                f"of type {type(self.measure).__name__}"
            )
        # Normalised (an int subclass to int, a Fraction to float), so that equal settings
        # compare and hash equal.
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "min_size", smallest)
        object.__setattr__(self, "factor", shrink)
        object.__setattr__(self, "regrow_after", interval)
        object.__setattr__(self, "headroom", margin)

    @property
    def first_size(self) -> int:
        """``start``, which a search needs; an error naming it when it was not given."""
        if self.start is None:
            raise InvalidArgumentTypeError(
                "sizing needs start=, the first batch size to try: Sizing(start=...)"
            )
        return self.start


class SizingKeywords(TypedDict, total=False):
    """The fields of :class:`Sizing`, as keywords: ``adaptive_batch(start=32)`` is
    ``adaptive_batch(sizing=Sizing(start=32))``. Their defaults are :class:`Sizing`'s."""

    start: int | None
    factor: float
    min_size: int
    regrow_after: int | None
    headroom: float
    measure: bool


def resolve_sizing(where: str, sizing: object, options: Mapping[str, object]) -> Sizing:
    """The one :class:`Sizing` of a call that takes ``sizing=`` or its fields as keywords."""
    unknown = [name for name in options if name not in _SIZING_FIELDS]
    if unknown:
        raise InvalidArgumentTypeError(
            f"{where}() got an unexpected keyword argument {unknown[0]!r} (the sizing "
            f"options are {', '.join(_SIZING_FIELDS)})"
        )
    if sizing is None:
        return Sizing(**options)  # type: ignore[arg-type]
    if not isinstance(sizing, Sizing):
        raise InvalidArgumentTypeError(
            f"sizing must be a memscope.sizing.Sizing (Sizing(start=...)) or None, got "
            f"{sizing!r} of type {type(sizing).__name__}"
        )
    for name, value in options.items():
        reject_both(
            "sizing",
            sizing,
            name,
            value,
            f"{where}() takes one; a variant of a sizing is dataclasses.replace(sizing, ...)",
        )
    return sizing


@dataclass(frozen=True, slots=True)
class SizingOptions:
    """The sizing, and where memory is freed (``manager`` or ``device``), checked."""

    sizing: Sizing
    manager: MemoryManager | None
    device: DeviceLike

    def __post_init__(self) -> None:
        manager, device = self.manager, self.device
        context.check_manager(manager)
        if manager is not None and device is not None:
            reject_both("manager", manager, "device", device, "the manager has a device")
        if device is not None:
            # Parses the device without touching it: decorating never initialises CUDA.
            as_torch_device(device)

    def manager_for(self, batch: context.ActiveBatch | None) -> MemoryManager:
        """The manager that frees memory for a call made now, inside ``batch`` if any."""
        device = None if self.device is None else as_torch_device(self.device)
        return context.manager_for(self.manager, device, batch)
