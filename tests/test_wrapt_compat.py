"""memscope/_wrapt.py: wrapt's wrappers as generic bases, on wrapt releases before 2.2 too."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import wrapt

import memscope
from memscope import _wrapt


def test_a_subscriptable_wrapt_is_used_as_it_is() -> None:
    """With wrapt 2.2 or later (subscriptable wrappers) the shim adds no class of its own."""
    if not hasattr(wrapt.FunctionWrapper, "__class_getitem__"):
        pytest.skip("this wrapt predates subscriptable wrappers; .ci/run tests that case")
    assert _wrapt.FunctionWrapper is wrapt.FunctionWrapper
    assert _wrapt.BoundFunctionWrapper is wrapt.BoundFunctionWrapper


def test_an_older_wrapt_gets_subscriptable_subclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a wrapt whose wrappers refuse a subscript (1.x, 2.0, 2.1), the shim's classes
    subclass them, accept ``[Parameters, Result]`` in a class statement, and wrap as before."""
    old_wrapt = types.ModuleType("wrapt")

    class FunctionWrapper:  # no __class_getitem__, as before wrapt 2.2
        def __init__(self, wrapped: Callable[[int], int]) -> None:
            self.__wrapped__ = wrapped

        def __call__(self, value: int) -> int:
            return self.__wrapped__(value)

    class BoundFunctionWrapper(FunctionWrapper):
        pass

    old_wrapt.FunctionWrapper = FunctionWrapper  # type: ignore[attr-defined]
    old_wrapt.BoundFunctionWrapper = BoundFunctionWrapper  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        FunctionWrapper[int, int]  # type: ignore[misc]
    monkeypatch.setitem(sys.modules, "wrapt", old_wrapt)
    path = Path(memscope.__file__).parent / "_wrapt.py"
    spec = importlib.util.spec_from_file_location("memscope_wrapt_on_old_wrapt", path)
    assert spec is not None
    assert spec.loader is not None
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)

    assert issubclass(shim.FunctionWrapper, FunctionWrapper)
    assert issubclass(shim.BoundFunctionWrapper, BoundFunctionWrapper)

    class Decorated(shim.FunctionWrapper[[int], int]):  # type: ignore[misc,name-defined]
        pass

    proxy = Decorated(abs)
    assert isinstance(proxy, FunctionWrapper)
    assert proxy(-3) == 3
