"""Names a module serves without defining them, read from their home when first asked for.

The top level (``memscope.__init__``) serves its small API this way, so that ``import
memscope`` imports no torch; and the modules names moved out of in 0.2 (``memscope.oom``,
``memscope.estimation``) still serve them (docs/changelog.md lists them). Each such module's
``__getattr__`` asks :func:`attribute_from`, which imports the home by name: an old module of
a lower layer (``memscope.oom``, below sizing) never imports the layer its names moved to, and
each moved name is written down once, in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
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


def attribute_from(module: str, name: str, homes: Mapping[str, str]) -> Any:
    """``name`` of ``module`` read from its home in ``homes`` (name -> module);
    ``AttributeError`` (as for any missing attribute) where ``homes`` has no such name."""
    home = homes.get(name)
    if home is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def moved_attribute(module: str, name: str) -> Any:
    """A name that moved out of ``module``, from where it lives now (:data:`MOVED`)."""
    return attribute_from(module, name, MOVED.get(module, {}))
