"""Ray, imported when first needed, with a clear error where the extra is missing.

``import memscope.ray`` never imports Ray itself, so the documentation builds and the
Ray-free parts (the reports, reading one back) work without it; the first call that needs
the cluster imports it, or raises an ``ImportError`` that says how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__: list[str] = []

RAY_MISSING = "memscope.ray needs Ray Data, which is not installed: pip install 'memscope[ray]'"


def require_ray() -> ModuleType:
    """The ``ray`` module, or an ``ImportError`` naming the extra to install."""
    try:
        return importlib.import_module("ray")
    except ImportError as error:
        raise ImportError(RAY_MISSING) from error
