"""What a leak looks like in a report: the growth, when memory runs out, and what holds it.

:class:`LeakFinding` is what :class:`memscope.leaks.LeakWatch` concludes and what a
:class:`~memscope.BatchReport` keeps in ``leak``; :class:`LeakSuspect` is one group of tensors
that stayed alive while memory grew. Both are immutable and go to JSON and back.

The fitted line of the plot and the CSV is computed here too, from the report's timeline and
its ``memory_growth_per_item``, so that the two always draw the same line.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

from memscope._leak_rule import Sampled
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.units import format_bytes

if TYPE_CHECKING:
    from memscope.reports._timeline import TimelineEntry

__all__ = ["LeakFinding", "LeakSuspect"]


FIT_WINDOW: Final = 64
"""How many of the latest samples the growth is fitted over (the detector's default window);
the plot and the CSV draw the fitted line over as many of the timeline's last items."""


@dataclass(frozen=True, slots=True)
class LeakSuspect:
    """Tensors alike (one device, shape and dtype) that stayed alive while memory grew.

    ``str()`` reads ``list `outputs` in module colorize holds 58 tensors of 1x4x128x128
    float16, 14.5 MiB``.
    """

    device: str
    """The tensors' device, ``"cuda:0"`` or ``"cpu"``."""
    shape: tuple[int, ...]
    """The tensors' shape."""
    dtype: str
    """The tensors' dtype without the ``torch.`` prefix, ``"float16"``."""
    count: int
    """How many such tensors stayed alive."""
    nbytes: int
    """The bytes their storages hold, each storage counted once (a view keeps its base's)."""
    holder: str | None = None
    """What refers to them, ``"list `outputs` in module colorize"``, or ``None`` where no
    Python object memscope could name holds them (an autograd graph, a C++ cache)."""

    def __str__(self) -> str:
        tensors = f"{self.count} tensor{'' if self.count == 1 else 's'}"
        what = f"{tensors} of {_shape_text(self.shape)} {self.dtype} on {self.device}"
        if self.holder is None:
            return f"{what}, {format_bytes(self.nbytes)}, held by no Python object memscope found"
        return f"{self.holder} holds {what}, {format_bytes(self.nbytes)}"

    def to_dict(self) -> dict[str, Any]:
        """The suspect as a JSON-serialisable dict."""
        return {
            "device": self.device,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "count": self.count,
            "nbytes": self.nbytes,
            "holder": self.holder,
        }

    @classmethod
    def from_dict(cls, data: object) -> LeakSuspect:
        """The suspect :meth:`to_dict` gave, for example after a trip through JSON."""
        values = _known_fields(cls, data, "a leak suspect")
        shape = values.get("shape")
        if not isinstance(shape, (list, tuple)):
            raise InvalidArgumentTypeError(f"a leak suspect's shape must be a list, got {shape!r}")
        values["shape"] = tuple(shape)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class LeakFinding:
    """Memory that stays after cleanup grows steadily: how fast, until when, and why.

    Memory is sampled after each cleanup (the device's allocated bytes, or the process's
    resident bytes on the CPU), in blocks of four, and ``growth_per_item`` is the robust slope
    of the latest blocks' medians. ``exhausted_at_item`` is the item at which, at that rate,
    ``capacity`` would be reached. ``suspects`` lists the tensors created while memory grew
    that stayed alive, largest first, once the search that follows a finding is done
    (``search_seconds`` says what it cost; ``None`` while it has not finished).

    A finding whose growth stopped later (a cache that filled once) has ``cleared_at_item``
    set and ``active`` false; it stays in the report as a record of what was seen.
    """

    device: str
    """The device whose memory grows, ``"cuda:0"`` or ``"cpu"``."""
    sampled: Sampled
    """What was sampled: ``"allocated"`` (the device's tensors) or ``"resident"`` (the
    process's resident memory, on the CPU)."""
    growth_per_item: float
    """The growth, in bytes per item: the robust slope of the evidence (the median of the
    slopes between its blocks half the evidence apart)."""
    detected_at_item: int
    """The item at which the growth was first judged a leak."""
    first_item: int
    """The first item of the evidence: the samples the growth was fitted over."""
    last_item: int
    """The last item of the evidence."""
    samples: int
    """How many samples (one per cleanup) the evidence holds."""
    retained_first: int
    """The fitted memory at ``first_item``, in bytes."""
    retained_last: int
    """The fitted memory at ``last_item``, in bytes."""
    retained_lowest: int
    """The lowest memory sampled in the batch, in bytes: the growth is counted from it."""
    noise: float
    """The samples' jitter, in bytes (a robust standard deviation, from their second
    differences, so the growth itself is not counted)."""
    capacity: int | None
    """The memory that runs out, in bytes: the device's total, or the host's limit."""
    exhausted_at_item: int | None
    """The item at which, at this rate, ``capacity`` is reached; ``None`` without one."""
    suspects: tuple[LeakSuspect, ...] = ()
    """The tensors that stayed alive while memory grew, grouped, largest first."""
    search_seconds: float | None = None
    """What the search for suspects cost, in seconds; ``None`` until it has finished."""
    cleared_at_item: int | None = None
    """The item at which the growth was seen to have stopped; ``None`` while it goes on."""
    hints: tuple[str, ...] = field(default=())
    """Where to look next, in sentences: the allocation history, why nothing was found."""
    after_cleanup: bool = True
    """Whether each sample was taken just after a cleanup (GC and cache clearing); ``False``
    in a count-only batch, which collects nothing, so uncollected garbage counts too."""

    @property
    def active(self) -> bool:
        """Whether the memory was still growing when last sampled."""
        return self.cleared_at_item is None

    def message(self) -> str:
        """The warning memscope logs: ``memory grows 16.0 MiB per item (after GC and cache
        clearing); at this rate cuda:0 is full at about item 1,430``."""
        if self.sampled == "resident":
            what, after = "host memory (resident)", "after GC"
            full = "the host's memory limit is reached"
        else:
            what, after = "memory", "after GC and cache clearing"
            full = f"{self.device} is full"
        if not self.after_cleanup:
            after = "without cleanup: count-only mode"
        text = f"{what} grows {format_bytes(self.growth_per_item)} per item ({after})"
        if self.exhausted_at_item is not None:
            text += f"; at this rate {full} at about item {self.exhausted_at_item:,}"
        return text

    def summary(self) -> str:
        """A clause for the report's summary line."""
        if not self.active:
            return (
                f"memory growth seen from item {self.detected_at_item:,} stopped at item "
                f"{self.cleared_at_item:,}"
            )
        text = f"leak suspected at item {self.detected_at_item:,}: {self.message()}"
        if self.suspects:
            text += f"; held by {self.suspects[0]}"
        return text

    def __str__(self) -> str:
        lines = [self.summary() if not self.active else self.message()]
        lines.append(
            f"  evidence: {self.samples} samples of {self.sampled} memory from item "
            f"{self.first_item:,} to {self.last_item:,}, fitted "
            f"{format_bytes(self.retained_first)} -> {format_bytes(self.retained_last)} "
            f"(jitter {format_bytes(self.noise)}; lowest {format_bytes(self.retained_lowest)})"
        )
        lines.extend(f"  suspect: {suspect}" for suspect in self.suspects)
        if self.search_seconds is not None:
            lines.append(f"  the search for suspects took {self.search_seconds:.2f} s")
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The finding as a JSON-serialisable dict, suspects included."""
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data["suspects"] = [suspect.to_dict() for suspect in self.suspects]
        data["hints"] = list(self.hints)
        return data

    @classmethod
    def from_dict(cls, data: object) -> LeakFinding:
        """The finding :meth:`to_dict` gave, for example after a trip through JSON."""
        values = _known_fields(cls, data, "a leak finding")
        suspects = values.get("suspects", ())
        if not isinstance(suspects, (list, tuple)):
            raise InvalidArgumentTypeError(
                f"a leak finding's suspects must be a list, got {suspects!r:.80}"
            )
        values["suspects"] = tuple(LeakSuspect.from_dict(suspect) for suspect in suspects)
        hints = values.get("hints", ())
        if not isinstance(hints, (list, tuple)):
            raise InvalidArgumentTypeError(f"a leak finding's hints must be a list, got {hints!r}")
        values["hints"] = tuple(hints)
        return cls(**values)


def _known_fields(cls: type[Any], data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidArgumentTypeError(f"{what} must be a JSON object, got {data!r:.80}")
    known = {item.name for item in fields(cls)}
    values = {name: value for name, value in data.items() if name in known}
    required = {
        item.name
        for item in fields(cls)
        if item.default is MISSING and item.default_factory is MISSING
    }
    missing = sorted(required - values.keys())
    if missing:
        raise InvalidArgumentError(f"{what} lacks {', '.join(map(repr, missing))}")
    return values


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


# The fitted line ----------------------------------------------------------------------------


def fitted_series(timeline: Sequence[TimelineEntry]) -> Sampled | None:
    """Which timeline figure the growth describes: the device's allocated bytes where the
    timeline has them, else the host's resident bytes, else none."""
    if any(entry.allocated is not None for entry in timeline):
        return "allocated"
    if any(entry.host_resident is not None for entry in timeline):
        return "resident"
    return None


def fitted_line(
    timeline: Sequence[TimelineEntry], growth_per_item: float | None
) -> dict[int, float]:
    """The fitted memory in bytes at each of the timeline's last :data:`FIT_WINDOW` items.

    The slope is the report's growth; the line goes through the median of those items'
    figures as the detector's does, so a spike moves it no more than any other item. Empty
    without a growth or without figures.
    """
    series = fitted_series(timeline)
    if growth_per_item is None or not math.isfinite(growth_per_item) or series is None:
        return {}
    points = [
        (entry.item, value)
        for entry in timeline[-FIT_WINDOW:]
        if (value := entry.allocated if series == "allocated" else entry.host_resident) is not None
    ]
    if not points:
        return {}
    intercept = statistics.median(value - growth_per_item * item for item, value in points)
    return {item: intercept + growth_per_item * item for item, _ in points}
