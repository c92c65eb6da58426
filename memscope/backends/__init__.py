"""Device backends: the only place in memscope that knows about particular devices.

Importing this package imports every backend module in it, and each module registers its
backend, so a new backend is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from memscope.backends.base import (
    DeviceBackend,
    MemoryReading,
    OomObserver,
    available_devices,
    create_backend,
    detect_device,
    register_backend,
    registered_backends,
    registered_in_context,
)

__all__ = [
    "DeviceBackend",
    "MemoryReading",
    "OomObserver",
    "available_devices",
    "create_backend",
    "detect_device",
    "register_backend",
    "registered_backends",
    "registered_in_context",
]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
