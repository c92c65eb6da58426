"""The names that moved to another module in 0.2, and where each lives now.

Their old modules still serve them (docs/changelog.md lists them): a module-level
``__getattr__`` there asks :func:`moved_attribute`, which imports the new home by name when
such a name is first asked for. So each moved name is written down once, here, and an old
module of a lower layer (``memscope.oom``, below sizing) never imports the layer its names
moved to.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__: list[str] = []

_SIZING = "memscope.sizing"
_PEAK = "memscope._peak"

MOVED: dict[str, dict[str, str]] = {
    "memscope.oom": {
        "AdaptiveBatchClassMethod": _SIZING,
        "AdaptiveBatchDecorator": _SIZING,
        "AdaptiveBatchFunction": _SIZING,
        "AdaptiveBatchMethod": _SIZING,
        "AdaptiveBatchSnapshot": _SIZING,
        "AdaptiveBatchState": _SIZING,
        "adaptive_batch": _SIZING,
        "iter_chunks": _SIZING,
        "iter_chunks_async": _SIZING,
        "process_in_chunks": _SIZING,
        "process_in_chunks_async": _SIZING,
    },
    "memscope.estimation": {
        "calibrate": _SIZING,
        "fit_samples": _SIZING,
        "PeakStart": _PEAK,
        "host_peak": _PEAK,
        "peak_source": _PEAK,
        "read_peak": _PEAK,
        "start_peak": _PEAK,
    },
}
"""Old module -> moved name -> the module that defines it now."""


def moved_attribute(module: str, name: str) -> Any:
    """``name`` of ``module`` read from where it lives now; ``AttributeError`` (as for any
    missing attribute) where ``module`` never had such a name."""
    new_home = MOVED.get(module, {}).get(name)
    if new_home is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(importlib.import_module(new_home), name)
