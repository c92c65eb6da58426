"""The checks of ``MemoryManager``'s arguments: each refuses a bad value by name, once, when the
manager is made."""

from __future__ import annotations

from typing import Literal

import torch

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.host import HostMemoryMonitor
from memscope.policies import GCBackoff
from memscope.typing import MemoryModel
from memscope.units import format_bytes, parse_bytes

__all__: list[str] = []

CONTAINER = "container"
"""``host=`` for the whole container's memory, as the kernel counts it."""


def gc_backoff(policy: object) -> GCBackoff:
    if not isinstance(policy, GCBackoff):
        raise InvalidArgumentTypeError(f"gc_backoff must be a GCBackoff or None, got {policy!r}")
    return policy


def host(value: object) -> bool | Literal["container"]:
    if isinstance(value, str) and value != CONTAINER:
        raise InvalidArgumentError(f"host must be True, False or 'container', got {value!r}")
    if not isinstance(value, (bool, str)):
        raise InvalidArgumentTypeError(
            f"host must be True, False or 'container', got {value!r} of type {type(value).__name__}"
        )
    return value  # type: ignore[return-value]  # the one string left is "container"


def memory_model(model: object) -> MemoryModel:
    if not isinstance(model, MemoryModel):
        raise InvalidArgumentTypeError(
            "memory_model must be a memory model with an estimate((width, height)) method, "
            f"such as ImageMemoryModel(), got {model!r}"
        )
    return model


def budget(value: object) -> int:
    size = parse_bytes(value, "budget")
    if size == 0:
        raise InvalidArgumentError(f"budget must be more than 0 bytes, got {value!r}")
    return size


def budget_fits(
    given: object,
    size: int,
    device_capacity: int | None,
    host_monitor: HostMemoryMonitor | None,
    device: torch.device,
) -> None:
    """Refuse a budget larger than what it is measured on: the host's limit where the budget
    counts host memory (``host_monitor``), else the device's capacity."""
    if host_monitor is not None:
        capacity: int | None = host_monitor.limit.size
        of_what = f"the host's memory limit, {host_monitor.limit}"  # says its size
    else:
        capacity = device_capacity
        of_what = f"the total memory of {device} ({format_bytes(capacity)})"
    if capacity is not None and size > capacity:
        raise InvalidArgumentError(
            f"budget {given!r} ({format_bytes(size)}) is larger than {of_what}"
        )
