"""The records and figures the fakes keep: calls, one device's memory, fresh errors."""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MiB = 1024**2
GiB = 1024**3


def _fresh(failure: BaseException | Callable[[], BaseException]) -> BaseException:
    """A new exception like ``failure`` (or made by it), with no traceback yet."""
    if not isinstance(failure, BaseException):
        return failure()
    try:
        error = copy.copy(failure)
    except Exception:
        return failure
    error.__traceback__ = None
    notes = getattr(failure, "__notes__", None)
    if notes is not None:
        # A shallow copy would share the list, and notes added to one error reach the next.
        setattr(error, "__notes__", list(notes))  # noqa: B010 (no __notes__ in 3.10 typing)
    return error


class FakeCall(NamedTuple):
    """One call of a faked torch function, such as ``("torch.cuda.mem_get_info", (1,))``.

    ``kwargs`` holds keyword arguments as ``(name, value)`` pairs sorted by name; it is empty
    for the calls memscope makes positionally, so ``FakeCall(function, args)`` compares
    equal to them.
    """

    function: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass
class FakeMemory:
    """The memory of one fake device, in bytes.

    ``reserved`` is what torch's caching allocator holds (live tensors plus cache),
    ``other_processes`` what other processes hold; the driver's free memory is what is left.
    A neighbour never holds what this process holds: ``reserved + other_processes`` never
    exceeds ``total``, so ``free`` is what the card has, never below zero.
    """

    total: int
    allocated: int = 0
    reserved: int = 0
    other_processes: int = 0
    peak_allocated: int = 0
    peak_reserved: int = 0
    inactive_split: int = 0
    alloc_retries: int = 0
    allocator_ooms: int = 0
    scripted_usage: deque[float] = field(default_factory=deque)

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.other_processes

    def update_peaks(self) -> None:
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def apply_next_scripted_usage(self) -> None:
        # A scripted usage is realised as live tensors, so every backend's formula gives it.
        if self.scripted_usage:
            usage = self.scripted_usage.popleft()
            self.allocated = self.reserved = round(usage * self.total)
            self.other_processes = 0
            self.update_peaks()

    def nested_stats(self) -> dict[str, Any]:
        """The allocator's statistics as ``torch.cuda.memory_stats_as_nested_dict`` gives
        them (the figures memscope reads; the pools are left out)."""

        def stat(current: int, peak: int) -> dict[str, dict[str, int]]:
            return {"all": {"current": current, "peak": peak, "allocated": peak, "freed": 0}}

        return {
            "allocated_bytes": stat(self.allocated, self.peak_allocated),
            "reserved_bytes": stat(self.reserved, self.peak_reserved),
            "inactive_split_bytes": stat(self.inactive_split, self.inactive_split),
            "num_alloc_retries": self.alloc_retries,
            "num_ooms": self.allocator_ooms,
        }

    def flat_stats(self) -> dict[str, int]:
        """The same figures flattened, as ``torch.cuda.memory_stats`` gives them."""
        flat: dict[str, int] = {}
        for name, value in self.nested_stats().items():
            if isinstance(value, dict):
                for which, figure in value["all"].items():
                    flat[f"{name}.all.{which}"] = figure
            else:
                flat[name] = value
        return dict(sorted(flat.items()))
