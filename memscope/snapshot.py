"""An immutable record of one device's memory at one moment."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from memscope.units import format_bytes

__all__ = ["MemorySnapshot"]


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """A device's memory figures in bytes, ``None`` where the device cannot tell.

    ``usage`` is the fraction of ``total`` that this process's next allocation cannot have,
    the same figure :meth:`MemoryManager.check_memory_usage` returns.
    """

    device: str
    usage: float
    allocated: int | None = None
    reserved: int | None = None
    free: int | None = None
    total: int | None = None
    used: int | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-serialisable dict."""
        return asdict(self)

    def __str__(self) -> str:
        if self.total is None:
            return f"{self.device}: usage {self.usage:.1%} (the device reports no memory figures)"
        parts = [
            f"{self.device}: {self.usage:.1%} used ({format_bytes(self.used)} of "
            f"{format_bytes(self.total)})"
        ]
        for label, value in (
            ("allocated", self.allocated),
            ("reserved", self.reserved),
            ("free", self.free),
            ("peak allocated", self.peak_allocated),
        ):
            if value is not None:
                parts.append(f"{label} {format_bytes(value)}")
        return ", ".join(parts)
