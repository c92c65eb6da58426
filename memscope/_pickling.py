"""Decorated functions pickle and copy as the functions they are: by reference.

wrapt's proxies refuse to pickle (there is no general way to pickle a proxy), so a decorated
function could not go through ``multiprocessing``, ``ProcessPoolExecutor`` or ``copy.deepcopy``.
A plain function pickles as its module and qualified name and is looked up again on the other
side; a decorated function is what that name refers to, so the same works for it, and the
unpickled function is the decorated one, options and all.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []


class PicklableFunctionWrapper:
    """Mixed into a ``wrapt.FunctionWrapper`` subclass: pickle and copy by reference."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> str | tuple[Any, ...]:
        # A string means "the global of this name in the object's module", as for functions.
        return str(object.__getattribute__(self, "__qualname__"))

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self


class PicklableBoundFunctionWrapper:
    """Mixed into a ``wrapt.BoundFunctionWrapper`` subclass: pickle as ``getattr(owner, name)``,
    like a bound method."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> str | tuple[Any, ...]:
        owner = object.__getattribute__(self, "_self_instance")
        if owner is None:
            owner = object.__getattribute__(self, "_self_owner")
        return getattr, (owner, object.__getattribute__(self, "__name__"))

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self
