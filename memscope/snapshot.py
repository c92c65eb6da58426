"""An immutable record of one device's memory at one moment."""

from __future__ import annotations

from typing import Any, NamedTuple

from memscope.units import format_bytes

__all__ = ["MemorySnapshot"]

NOT_REPORTED = "n/a"
"""How memscope writes a figure the device does not report (never as 0)."""
NO_DEVICE_FIGURES = "the device reports no memory figures"
"""Why a device such as the CPU has no usage: ``str(snapshot)`` and ``memscope info`` say it."""

_BUDGET_FIELDS = ("budget", "budget_used")
_HOST_FIELDS = ("host_resident", "host_limit", "host_usage")
_ALLOCATOR_FIELDS = ("inactive_split", "alloc_retries", "allocator_ooms")


class MemorySnapshot(NamedTuple):
    """A device's memory figures in bytes, ``None`` where the device cannot tell.

    Immutable, and a tuple so that taking one on every cleanup step costs next to nothing;
    ``snapshot._replace(usage=0.5)`` makes a changed copy.

    ``usage`` is the figure :meth:`MemoryManager.check_memory_usage` returns: the fraction of
    ``total`` that this process's next allocation cannot have, or, where the manager also
    watches the host or a budget, the largest of that, ``host_usage`` and
    ``budget_used / budget``.

    ``inactive_split``, ``alloc_retries`` and ``allocator_ooms`` are the caching allocator's
    own figures (see :class:`~memscope.backends.MemoryReading`): ``None`` where it keeps none,
    and under CUDA's ``cudaMallocAsync`` allocator, where torch reports zeros for them.

    ``budget`` is the manager's byte budget and ``budget_used`` what counts against it;
    ``host_resident`` is the process's resident memory, ``host_limit`` the host's effective
    limit and ``host_usage`` their ratio. Each is ``None`` when it is not monitored.
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
    inactive_split: int | None = None
    alloc_retries: int | None = None
    allocator_ooms: int | None = None
    budget: int | None = None
    budget_used: int | None = None
    host_resident: int | None = None
    host_limit: int | None = None
    host_usage: float | None = None

    @property
    def cached_but_free(self) -> int | None:
        """What the allocator reserves but no tensor uses: free in its cache, possibly in
        fragments no request can use whole."""
        if self.reserved is None or self.allocated is None:
            return None
        return max(self.reserved - self.allocated, 0)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-serialisable dict.

        The budget figures appear only when there is a budget, the host figures only when
        the host is monitored and the allocator's figures only where it reports them, so a
        plain device's dict keeps the keys it always had.
        """
        data = self._asdict()
        if all(data[key] is None for key in _ALLOCATOR_FIELDS):
            for key in _ALLOCATOR_FIELDS:
                del data[key]
        if self.budget is None:
            for key in _BUDGET_FIELDS:
                del data[key]
        if self.host_limit is None:
            for key in _HOST_FIELDS:
                del data[key]
        return data

    def __str__(self) -> str:
        monitored = self._budget_and_host_parts()
        if self.total is None:
            if not monitored:
                # torch's 0.0 there is a convention, not a measurement.
                return f"{self.device}: usage {NOT_REPORTED} ({NO_DEVICE_FIGURES})"
            return ", ".join([f"{self.device}: usage {self.usage:.1%}", *monitored])
        device_figures = f"{format_bytes(self.used)} of {format_bytes(self.total)}"
        if monitored:
            # Usage may come from the budget or the host, so the device's share is labelled.
            head = f"{self.device}: usage {self.usage:.1%} (device {device_figures} used)"
        else:
            head = f"{self.device}: {self.usage:.1%} used ({device_figures})"
        parts = [head]
        for label, value in (
            ("allocated", self.allocated),
            ("reserved", self.reserved),
            ("free", self.free),
            ("peak allocated", self.peak_allocated),
        ):
            if value is not None:
                parts.append(f"{label} {format_bytes(value)}")
        return ", ".join([*parts, *monitored])

    def _budget_and_host_parts(self) -> list[str]:
        parts = []
        if self.budget is not None:
            parts.append(f"budget {format_bytes(self.budget_used)} of {format_bytes(self.budget)}")
        if self.host_limit is not None:
            host_usage = "n/a" if self.host_usage is None else f"{self.host_usage:.1%}"
            parts.append(
                f"host {format_bytes(self.host_resident)} resident of "
                f"{format_bytes(self.host_limit)} ({host_usage})"
            )
        return parts
