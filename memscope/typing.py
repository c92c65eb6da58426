"""Types for annotating code that uses memscope.

- :data:`DeviceLike`: what every ``device`` parameter accepts.
- :class:`CachePolicy`: the protocol a cache policy follows (``ClearWhenUseful`` and
  ``ClearAlways`` are two).
- :data:`Combine`: how ``process_in_chunks`` combines per-chunk results.
- :class:`MemoryModel`: what ``MemoryManager(memory_model=...)`` accepts (``ImageMemoryModel``
  and a calibrated model are two).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from memscope.snapshot import MemorySnapshot

__all__ = ["BatchCounts", "CachePolicy", "Combine", "DeviceLike", "ItemKey", "MemoryModel"]

DeviceLike = torch.device | str | int | None
"""What memscope accepts as a device: a ``torch.device``, ``"cuda:1"``, a CUDA index, or
``None`` for auto-detection (CUDA, then MPS, then another accelerator, then the CPU; under
torchrun, the GPU whose index is in ``LOCAL_RANK``)."""

ItemKey = str | int
"""What names an item in a journal and in ``report.failed_items``: the item itself, or what
``key=`` made of it."""

Combine = Literal["concat", "chunks"] | Callable[[list[Any]], Any]
"""How :func:`~memscope.process_in_chunks` combines the per-chunk results."""


class CachePolicy(Protocol):
    """Decides whether a cleanup step empties the device's cache."""

    needs_snapshot: ClassVar[bool]
    """Whether the policy looks at the device's figures (reading them costs a query)."""

    def __call__(self, snapshot: MemorySnapshot | None, memory_threshold: float) -> bool:
        """Whether to call ``clear_cache()`` now."""
        ...


@runtime_checkable
class MemoryModel(Protocol):
    """Estimates the bytes one image of a size needs."""

    def estimate(self, image_size: tuple[int, int]) -> int:
        """Bytes needed for one image of ``(width, height)`` pixels."""
        ...


class BatchCounts(Protocol):
    """A batch's counts so far (``batch.counts``), live: what its report adds up. Read
    them; only the batch writes them."""

    items: int
    """Items finished."""
    calls: int
    """Decorated calls made inside the batch."""
    cleanups: int
    """Cleanup steps that ran."""
    cache_clears: int
    """``clear_cache()`` calls on a device with a cache."""
    gc_runs: int
    """``gc.collect()`` calls."""
    gc_seconds: float
    """Seconds those collections took."""
    ooms: int
    """Out-of-memory errors met, each counted once."""
