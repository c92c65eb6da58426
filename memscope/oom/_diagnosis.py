"""The note memscope attaches to an out-of-memory error as it leaves memscope (PEP 678).

The note says what the device looked like at the failure, which batch sizes were tried and
where a memory-history snapshot was written, so the traceback a user reads at the end of a
long job already holds the figures they would otherwise have to reproduce the failure for::

    torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB ...
    memscope: out of memory on cuda:0
      at failure: allocated 14.1 GiB, reserved 22.6 GiB, free 310.0 MiB, total 23.6 GiB,
        peak allocated 23.1 GiB
      allocator: reserved but free 8.5 GiB, inactive split 8.2 GiB, allocation retries 3,
        allocator OOMs 1
      fragmentation: 8.2 GiB reserved but free in fragments; run with
        PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (memscope.configure_allocator)
      batch sizes tried: 32, 16, 8
      memory history snapshot: /runs/oom/memscope-oom-cuda0-....pickle (open it at
        https://pytorch.org/memory_viz)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from os import PathLike

from memscope._notes import add_note, notes_of
from memscope.manager import MemoryManager
from memscope.snapshot import MemorySnapshot
from memscope.units import format_bytes, parse_bytes

__all__ = ["add_oom_note"]

logger = logging.getLogger("memscope")

MEMORY_VIEWER_URL = "https://pytorch.org/memory_viz"

EXPANDABLE_SEGMENTS_REMEDY = (
    "run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (memscope.configure_allocator)"
)
_FRAGMENTED_SHARE_OF_TOTAL = 0.05
"""Without the failed request's size, fragments count as the cause when they exceed what the
driver has free and are at least this share of the device."""
_REQUEST = re.compile(r"Tried to allocate (\d+(?:\.\d+)?) ?([KMGTP]i?B|bytes)")

_NOTE_HEADER = "memscope: out of memory"
# Where the diagnosis lives on the exception, so that a second memscope layer the error
# passes through completes the note instead of adding another.
_DIAGNOSIS_ATTRIBUTE = "_memscope_oom_diagnosis"


@dataclass(frozen=True, slots=True)
class _Diagnosis:
    device: str | None
    snapshot: MemorySnapshot | None
    snapshot_failure: str | None
    batch_sizes_tried: tuple[int, ...]
    snapshot_path: str | None
    requested: int | None = None

    def render(self) -> str:
        header = _NOTE_HEADER if self.device is None else f"{_NOTE_HEADER} on {self.device}"
        lines = [header]
        if self.snapshot_failure is not None:
            lines.append(f"  memory figures unavailable: {self.snapshot_failure}")
        elif self.snapshot is not None:
            lines.append(f"  at failure: {_figures(self.snapshot)}")
            lines.extend(_allocator_lines(self.snapshot, self.requested))
        if self.batch_sizes_tried:
            sizes = ", ".join(str(size) for size in self.batch_sizes_tried)
            lines.append(f"  batch sizes tried: {sizes}")
        if self.snapshot_path is not None:
            lines.append(
                f"  memory history snapshot: {self.snapshot_path} (open it at {MEMORY_VIEWER_URL})"
            )
        return "\n".join(lines)


def _figures(snapshot: MemorySnapshot) -> str:
    figures = (
        ("allocated", snapshot.allocated),
        ("reserved", snapshot.reserved),
        ("free", snapshot.free),
        ("total", snapshot.total),
        ("peak allocated", snapshot.peak_allocated),
    )
    if all(value is None for _, value in figures):
        return "the device reports no memory figures"
    return ", ".join(f"{label} {format_bytes(value)}" for label, value in figures)


def _allocator_lines(snapshot: MemorySnapshot, requested: int | None) -> list[str]:
    fragments = snapshot.inactive_split
    if fragments is None:
        if snapshot.cached_but_free is not None and snapshot.device.startswith("cuda"):
            # The only CUDA allocator without these statistics: torch reports zeros there.
            return ["  allocator: fragmentation figures n/a under cudaMallocAsync"]
        return []
    retries, ooms = snapshot.alloc_retries or 0, snapshot.allocator_ooms or 0
    if not (fragments or retries or ooms):
        return []
    lines = [
        f"  allocator: reserved but free {format_bytes(snapshot.cached_but_free)}, inactive "
        f"split {format_bytes(fragments)}, allocation retries {retries}, allocator OOMs {ooms}"
    ]
    if fragments and _fragmentation_explains(snapshot, fragments, requested):
        lines.append(
            f"  fragmentation: {format_bytes(fragments)} reserved but free in fragments; "
            f"{EXPANDABLE_SEGMENTS_REMEDY}"
        )
    return lines


def _fragmentation_explains(
    snapshot: MemorySnapshot, fragments: int, requested: int | None
) -> bool:
    """Whether the allocator's fragments could have held the request, had they been one
    piece: at an OOM it has already released its whole cached blocks and retried, so what
    is left reserved but free sits in split blocks (``inactive_split``)."""
    if requested is not None:
        return fragments >= requested
    if snapshot.free is None or not snapshot.total:
        return False
    return fragments > snapshot.free and fragments >= snapshot.total * _FRAGMENTED_SHARE_OF_TOTAL


def requested_bytes(error: BaseException) -> int | None:
    """The size an allocator's OOM message says it tried to allocate, or ``None``."""
    match = _REQUEST.search(str(error))
    if match is None:
        return None
    number, unit = match.groups()
    try:
        return parse_bytes(f"{number} {'B' if unit == 'bytes' else unit}")
    except ValueError:
        return None


def _take_snapshot(
    manager: MemoryManager | None,
) -> tuple[str | None, MemorySnapshot | None, str | None]:
    if manager is None:
        return None, None, None
    device: str | None
    try:
        device = str(manager.resolved_device)
    except Exception:
        device = None
    try:
        return device, manager.snapshot(), None
    except Exception as error:
        logger.warning("could not read memory figures for an out-of-memory note", exc_info=True)
        return device, None, repr(error)


def _merge(
    earlier: _Diagnosis, batch_sizes_tried: tuple[int, ...], snapshot_path: str | None
) -> _Diagnosis:
    # The first layer's figures are the ones closest to the failure; later layers only add
    # what the first could not know.
    return replace(
        earlier,
        batch_sizes_tried=earlier.batch_sizes_tried or batch_sizes_tried,
        snapshot_path=earlier.snapshot_path or snapshot_path,
    )


def add_oom_note(
    error: BaseException,
    manager: MemoryManager | None,
    *,
    batch_sizes_tried: list[int] | tuple[int, ...] | None = None,
    snapshot_path: str | PathLike[str] | None = None,
) -> str | None:
    """Attach memscope's out-of-memory note to ``error``; returns the note's text.

    The note names the device and its figures now (allocated, reserved, free, total, peak
    allocated, from ``manager.snapshot()``; left out when ``manager`` is ``None``), the
    caching allocator's figures where it keeps them (reserved but free, inactive split,
    retries, OOMs), the batch sizes tried, in order, and the memory-history snapshot file,
    if any. Where fragmentation explains the failure (the memory reserved but free could
    have held the request, had it been in one piece), a line says so and names the remedy.
    Call it before freeing memory, so the figures are those of the failure.

    An error carries at most one memscope note: when it passes through a second memscope
    layer, that layer's call completes the note (sizes or snapshot path the first layer did
    not know) in place, and keeps the first layer's figures.

    Never raises: a failing snapshot is logged and the note says the figures are
    unavailable; if the note itself cannot be attached, that is logged and ``None`` comes
    back.
    """
    try:
        sizes = tuple(batch_sizes_tried or ())
        path = None if snapshot_path is None else str(snapshot_path)
        earlier = getattr(error, _DIAGNOSIS_ATTRIBUTE, None)
        replaced = False
        if isinstance(earlier, _Diagnosis):
            diagnosis = _merge(earlier, sizes, path)
            if diagnosis == earlier:
                return earlier.render()
            note = diagnosis.render()
            notes = notes_of(error)
            old_note = earlier.render()
            if notes is not None and old_note in notes:
                notes[notes.index(old_note)] = note
                replaced = True
        else:
            device, snapshot, failure = _take_snapshot(manager)
            diagnosis = _Diagnosis(device, snapshot, failure, sizes, path, requested_bytes(error))
            note = diagnosis.render()
        if not replaced and not add_note(error, note):
            raise TypeError(f"{type(error).__name__}'s __notes__ is not a list")
        setattr(error, _DIAGNOSIS_ATTRIBUTE, diagnosis)
        return note
    except Exception:
        logger.warning("could not attach an out-of-memory note to %r", error, exc_info=True)
        return None
