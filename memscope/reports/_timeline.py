"""A managed batch's memory timeline: :class:`TimelineEntry` rows, kept as compact columns.

A batch of a million items with ``timeline=True`` keeps a million rows. As frozen dataclass
instances they took 185-200 bytes each; :class:`Timeline` keeps each figure in a typed
``array`` column instead and builds a :class:`TimelineEntry` only when a row is read:

- ``seconds`` and ``usage``: 8 bytes each (doubles, exactly the floats given);
- ``allocated``, ``reserved`` and ``host_resident``: 8 bytes each, and nothing at all while
  every row's figure is ``None`` (the CPU's allocated and reserved, the host where the batch
  does not watch it); a ``None`` after the first figure is a sentinel in the column;
- ``item``: nothing while the numbers step evenly (1, 2, 3 ... or a chunk's size at a time),
  8 bytes each once they do not;
- ``gc_ran``: one byte.

So a CPU batch (host watched) keeps about 25 bytes per row and a CUDA batch about 33, plus
the few per cent arrays hold in reserve as they grow (``python -m benchmarks overhead``
measures a million rows with tracemalloc); all columns at once, with irregular item
numbers, about 49.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, overload

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["Timeline", "TimelineEntry"]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """The memory as one item of a managed batch finished, after any cleanup.

    ``allocated`` and ``reserved`` are ``None`` where the device cannot tell (the CPU);
    ``host_resident`` is ``None`` where the batch does not watch the host.
    ``gc_ran`` says whether memscope collected garbage in this batch since the previous item
    finished.
    """

    item: int
    """The item's number in the batch, counting from 1."""
    seconds: float
    """Seconds since the batch started."""
    usage: float
    """The device's memory usage, as :meth:`MemoryManager.check_memory_usage` measures it."""
    allocated: int | None = None
    """Bytes the device's tensors occupy, or ``None`` where the device cannot tell."""
    reserved: int | None = None
    """Bytes the device's allocator holds, or ``None`` where the device cannot tell."""
    gc_ran: bool = False
    """Whether memscope collected garbage in this batch since the previous item finished."""
    host_resident: int | None = None
    """The process's resident memory in bytes after the item, or ``None`` when unknown."""


_MISSING = -(2**63)
"""Stands for ``None`` in an integer column: the one 64-bit value a byte count never is."""

_INTEGER_FIELDS = ("item", "allocated", "reserved", "host_resident")
_FLOAT_FIELDS = ("seconds", "usage")


def _integer_column(length: int, value: int) -> array[int]:
    """A new integer column: ``length`` rows of ``None``, then ``value``."""
    column = array("q", repeat(_MISSING, length))
    column.append(value)
    return column


class Timeline(Sequence[TimelineEntry]):
    """A batch's timeline: a read-only sequence of :class:`TimelineEntry`, kept as columns.

    It reads like the tuple of entries it replaces: indexing (a slice gives a
    ``Timeline``), ``len``, iteration, ``==`` with another timeline or a list or tuple of
    entries, pickling. Rows are only added, by :meth:`append`, which takes a row's figures
    without building an entry. ``Timeline(entries)`` copies existing entries.
    """

    __slots__ = (
        "_allocated",
        "_first_item",
        "_gc_ran",
        "_host_resident",
        "_item_step",
        "_items",
        "_length",
        "_reserved",
        "_seconds",
        "_usage",
    )

    def __init__(self, entries: Iterable[TimelineEntry] = ()) -> None:
        self._length = 0
        # While the item numbers step evenly they are first + step * row, and _items is None.
        self._first_item = 0
        self._item_step = 1
        self._items: array[int] | None = None
        self._seconds: array[float] = array("d")
        self._usage: array[float] = array("d")
        # None while every row's figure is None.
        self._allocated: array[int] | None = None
        self._reserved: array[int] | None = None
        self._host_resident: array[int] | None = None
        self._gc_ran = bytearray()
        for entry in entries:
            if not isinstance(entry, TimelineEntry):
                raise InvalidArgumentTypeError(
                    f"entries must be TimelineEntry instances, got {entry!r:.80}"
                )
            self.append(
                entry.item,
                entry.seconds,
                entry.usage,
                entry.allocated,
                entry.reserved,
                entry.gc_ran,
                entry.host_resident,
            )

    # Adding rows ---------------------------------------------------------------------------

    def append(
        self,
        item: int,
        seconds: float,
        usage: float,
        allocated: int | None = None,
        reserved: int | None = None,
        gc_ran: bool = False,
        host_resident: int | None = None,
    ) -> None:
        """Add a row: the figures of a :class:`TimelineEntry`, in its field order.

        A figure that is not a number (or ``None`` where the entry allows it), or an integer
        outside 64 bits, raises :class:`~memscope.exceptions.InvalidArgumentError` (or
        ``InvalidArgumentTypeError``) naming it, and the timeline is left as it was.
        """
        row = self._length
        try:
            items = self._items
            if items is not None:
                items.append(item)
            elif row >= 2:
                if item != self._first_item + self._item_step * row or type(item) is not int:
                    self._list_items().append(item)
            elif type(item) is not int:
                array("q").append(item)  # raises for what no integer column takes
                self._list_items().append(item)
            elif row == 0:
                self._first_item = item
            else:
                self._item_step = item - self._first_item
            self._seconds.append(seconds)
            self._usage.append(usage)
            column = self._allocated
            if column is not None:
                column.append(_MISSING if allocated is None else allocated)
            elif allocated is not None:
                self._allocated = _integer_column(row, allocated)
            column = self._reserved
            if column is not None:
                column.append(_MISSING if reserved is None else reserved)
            elif reserved is not None:
                self._reserved = _integer_column(row, reserved)
            column = self._host_resident
            if column is not None:
                column.append(_MISSING if host_resident is None else host_resident)
            elif host_resident is not None:
                self._host_resident = _integer_column(row, host_resident)
            if _MISSING in (allocated, reserved, host_resident):
                raise OverflowError("the integer stands for None")
            self._gc_ran.append(gc_ran)
        except (TypeError, ValueError, OverflowError) as error:
            self._truncate(row)
            figures = (item, seconds, usage, allocated, reserved, gc_ran, host_resident)
            raise _bad_row(*figures) from error
        self._length = row + 1

    def _list_items(self) -> array[int]:
        """The item column, written out: the numbers stopped stepping evenly."""
        first, step = self._first_item, self._item_step
        self._items = items = array("q", (first + step * row for row in range(self._length)))
        return items

    def _columns(self) -> tuple[Any, ...]:
        """Every column, the items first (``None`` where one is not kept)."""
        return (
            self._items,
            self._seconds,
            self._usage,
            self._allocated,
            self._reserved,
            self._host_resident,
            self._gc_ran,
        )

    def _truncate(self, length: int) -> None:
        """Drop the rows from ``length`` on (an append that failed half-way)."""
        if self._items is not None:
            del self._items[length:]
        for column in self._columns()[1:]:
            if column is not None:
                del column[length:]
        for name in ("_allocated", "_reserved", "_host_resident"):
            column = getattr(self, name)
            if column is not None and not any(value != _MISSING for value in column):
                setattr(self, name, None)

    # Reading rows --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> TimelineEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Timeline: ...

    def __getitem__(self, index: int | slice) -> TimelineEntry | Timeline:
        if isinstance(index, slice):
            return self._sliced(index)
        length = self._length
        try:
            row = index.__index__()
        except AttributeError:
            raise InvalidArgumentTypeError(
                f"timeline indices must be integers or slices, got {index!r}"
            ) from None
        if row < 0:
            row += length
        if not 0 <= row < length:
            raise IndexError(f"timeline index {index} out of range for {length} entries")
        return TimelineEntry(
            self._first_item + self._item_step * row if self._items is None else self._items[row],
            self._seconds[row],
            self._usage[row],
            _figure(self._allocated, row),
            _figure(self._reserved, row),
            bool(self._gc_ran[row]),
            _figure(self._host_resident, row),
        )

    def __iter__(self) -> Iterator[TimelineEntry]:
        length = self._length
        items: Iterable[int]
        if self._items is None:
            first, step = self._first_item, self._item_step
            items = range(first, first + step * length, step) if step else repeat(first, length)
        else:
            items = self._items
        flags = map(bool, self._gc_ran)
        # Not strict: a row appended (by the batch's thread) while this iterates is left out,
        # as the columns not yet bounded by ``length`` may already hold it.
        for item, seconds, usage, allocated, reserved, ran, host in zip(
            items,
            self._seconds,
            self._usage,
            _values(self._allocated, length),
            _values(self._reserved, length),
            flags,
            _values(self._host_resident, length),
            strict=False,
        ):
            yield TimelineEntry(item, seconds, usage, allocated, reserved, ran, host)

    def _sliced(self, index: slice) -> Timeline:
        rows = range(self._length)[index]
        part = Timeline()
        part._length = len(rows)
        if self._items is None:
            part._first_item = self._first_item + self._item_step * rows.start
            part._item_step = self._item_step * rows.step
        else:
            part._items = self._items[index]
        part._seconds = self._seconds[index]
        part._usage = self._usage[index]
        part._allocated = None if self._allocated is None else self._allocated[index]
        part._reserved = None if self._reserved is None else self._reserved[index]
        part._host_resident = None if self._host_resident is None else self._host_resident[index]
        part._gc_ran = self._gc_ran[index]
        return part

    def copy(self) -> Timeline:
        """An independent copy (its columns copied, no entries built)."""
        return self[:]

    # Comparing, printing, pickling ---------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Timeline, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(
            mine == theirs for mine, theirs in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # rows can still be appended

    def __repr__(self) -> str:
        if not self._length:
            return "Timeline([])"
        return f"Timeline(<{self._length} entries, the last {self[-1]!r}>)"

    def __sizeof__(self) -> int:
        columns = self._columns()
        return object.__sizeof__(self) + sum(
            sys.getsizeof(column) for column in columns if column is not None
        )

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in self.__slots__:
            setattr(self, name, state[name])


def _figure(column: array[int] | None, row: int) -> int | None:
    if column is None:
        return None
    value = column[row]
    return None if value == _MISSING else value


def _values(column: array[int] | None, length: int) -> Iterator[int | None]:
    if column is None:
        return repeat(None, length)
    return (None if value == _MISSING else value for value in column)


def _bad_row(
    item: object,
    seconds: object,
    usage: object,
    allocated: object,
    reserved: object,
    gc_ran: object,
    host_resident: object,
) -> InvalidArgumentError | InvalidArgumentTypeError:
    """The error naming the figure of a row that no column takes."""
    figures = {
        "item": item,
        "seconds": seconds,
        "usage": usage,
        "allocated": allocated,
        "reserved": reserved,
        "host_resident": host_resident,
    }
    for name, value in figures.items():
        if value is None and name not in ("item", "seconds", "usage"):
            continue
        if name in _FLOAT_FIELDS:
            try:
                array("d").append(value)  # type: ignore[arg-type]
            except TypeError:
                return InvalidArgumentTypeError(f"{name} must be a number, got {value!r:.80}")
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            kind = "an integer" if name == "item" else "an integer or None"
            return InvalidArgumentTypeError(f"{name} must be {kind}, got {value!r:.80}")
        if not _MISSING < value < 2**63:
            return InvalidArgumentError(
                f"{name} must be an integer within 64 bits (above -2**63), got {value!r}"
            )
    if not isinstance(gc_ran, int):
        return InvalidArgumentTypeError(f"gc_ran must be a bool, got {gc_ran!r:.80}")
    if not 0 <= gc_ran <= 1:
        return InvalidArgumentError(f"gc_ran must be a bool, got {gc_ran!r:.80}")
    return InvalidArgumentError(f"the timeline cannot keep the row {figures!r:.200}")
