"""The options of ``@adaptive_batch`` and ``process_in_chunks``, checked once, up front.

Both take the same sizing options (``start``, ``factor``, ``min_size``, ``regrow_after``,
``headroom``, ``measure``) and the same choice of where memory is freed (``manager`` or
``device``). They are checked when
decorating (or when ``process_in_chunks`` is called), so a bad value fails before any work
is done, with the parameter and the value named.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from memscope import _context as context
from memscope._devices import as_torch_device
from memscope._validation import check_int
from memscope.estimation import DEFAULT_HEADROOM, check_headroom
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import MemoryManager
from memscope.typing import DeviceLike

__all__: list[str] = []


@dataclass(frozen=True, slots=True)
class SizingSettings:
    """How sizes are searched: where to start, how fast to shrink, the floor, regrowth, and
    whether (and with what margin) sizes are predicted from measured memory."""

    start: int
    factor: float
    min_size: int
    regrow_after: int | None
    headroom: float = DEFAULT_HEADROOM
    measure: bool = True

    @classmethod
    def checked(
        cls,
        *,
        start: object,
        factor: object,
        min_size: object,
        regrow_after: object,
        headroom: object = DEFAULT_HEADROOM,
        measure: object = True,
    ) -> SizingSettings:
        """The settings, or an error naming the first bad one."""
        start_size = check_int(start, "start", minimum=1)
        smallest = check_int(min_size, "min_size", minimum=1)
        if smallest > start_size:
            raise InvalidArgumentError(
                f"min_size must be <= start, got min_size={smallest!r} and start={start_size!r}"
            )
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise InvalidArgumentTypeError(
                f"factor must be a real number between 0 and 1, got {factor!r} "
                f"of type {type(factor).__name__}"
            )
        shrink = float(factor)
        if math.isnan(shrink) or not 0.0 < shrink < 1.0:
            raise InvalidArgumentError(
                f"factor must be between 0 and 1, exclusive (0 < factor < 1), got {factor!r}"
            )
        interval = (
            None if regrow_after is None else check_int(regrow_after, "regrow_after", minimum=1)
        )
        margin = check_headroom(headroom)
        if not isinstance(measure, bool):
            raise InvalidArgumentTypeError(
                f"measure must be True or False, got {measure!r} of type {type(measure).__name__}"
            )
        return cls(start_size, shrink, smallest, interval, margin, measure)


@dataclass(frozen=True, slots=True)
class SizingOptions:
    """Everything ``@adaptive_batch`` and ``process_in_chunks`` were told, checked."""

    settings: SizingSettings
    manager: MemoryManager | None
    device: DeviceLike

    @classmethod
    def checked(
        cls,
        *,
        start: object,
        factor: object,
        min_size: object,
        regrow_after: object,
        manager: object,
        device: DeviceLike,
        headroom: object = DEFAULT_HEADROOM,
        measure: object = True,
    ) -> SizingOptions:
        """The options, or an error naming the first bad one."""
        settings = SizingSettings.checked(
            start=start,
            factor=factor,
            min_size=min_size,
            regrow_after=regrow_after,
            headroom=headroom,
            measure=measure,
        )
        if manager is not None and not isinstance(manager, MemoryManager):
            raise InvalidArgumentTypeError(
                f"manager must be a MemoryManager or None, got {manager!r}"
            )
        if manager is not None and device is not None:
            raise InvalidArgumentError(
                "pass manager or device, not both: the manager already has a device "
                f"(got manager={manager!r} and device={device!r})"
            )
        if device is not None:
            # Parses the device without touching it: decorating never initialises CUDA.
            as_torch_device(device)
        return cls(settings, manager, device)

    def manager_for(self, batch: context.ActiveBatch | None) -> MemoryManager:
        """The manager that frees memory for a call made now, inside ``batch`` if any."""
        device = None if self.device is None else as_torch_device(self.device)
        return context.manager_for(self.manager, device, batch)
