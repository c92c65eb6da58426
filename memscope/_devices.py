"""Turning what a caller passes as ``device`` into a device memscope can query."""

from __future__ import annotations

import numbers

import torch

from memscope.backends import DeviceBackend, create_backend, detect_device
from memscope.backends.base import available_devices, present_backend_class
from memscope.exceptions import DeviceUnavailableError, InvalidArgumentTypeError
from memscope.typing import DeviceLike

__all__ = ["as_torch_device", "present_torch_device", "resolve_device"]


def as_torch_device(device: DeviceLike) -> torch.device:
    """The ``torch.device`` the caller means, without checking that it is present."""
    if device is None:
        return detect_device()
    if isinstance(device, torch.device):
        return device
    if isinstance(device, bool):
        raise InvalidArgumentTypeError(f"device must not be a bool, got {device!r}")
    if isinstance(device, numbers.Integral):
        # NumPy integers (an index read from an array or a config) count as ints.
        device = int(device)
        if device < 0:
            raise DeviceUnavailableError(
                f"device index must be >= 0, got {device!r}; "
                f"available devices: {', '.join(available_devices())}"
            )
        try:
            return torch.device("cuda", device)
        except (RuntimeError, OverflowError, ValueError):
            raise DeviceUnavailableError(
                f"device index {device!r} is not a device index; "
                f"available devices: {', '.join(available_devices())}"
            ) from None
    if isinstance(device, str):
        try:
            return torch.device(device)
        except (RuntimeError, ValueError) as error:
            raise DeviceUnavailableError(
                f"device {device!r} is not a device torch knows ({error}); "
                f"available devices: {', '.join(available_devices())}"
            ) from None
    raise InvalidArgumentTypeError(
        "device must be a torch.device, a str such as 'cuda:1', an int CUDA index or None, "
        f"got {device!r} of type {type(device).__name__}"
    )


def present_torch_device(device: DeviceLike) -> torch.device:
    """:func:`as_torch_device`, and a :class:`DeviceUnavailableError` now if it is not present.

    Touches no device beyond asking whether its type is available and how many there are.
    """
    torch_device = as_torch_device(device)
    present_backend_class(torch_device)
    return torch_device


def resolve_device(device: DeviceLike) -> tuple[torch.device, DeviceBackend]:
    """The caller's device and the backend bound to the concrete device behind it."""
    torch_device = as_torch_device(device)
    return torch_device, create_backend(torch_device)
