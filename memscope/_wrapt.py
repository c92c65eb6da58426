"""wrapt's function wrappers as generic base classes, on every wrapt memscope supports.

memscope's decorated functions subclass ``wrapt.FunctionWrapper[Parameters, Result]`` so that
type checkers keep the decorated function's signature. wrapt made its wrappers subscriptable
in 2.2; before that, subscripting them in a ``class`` statement raises ``TypeError``, which
would keep memscope off environments that other packages pin to an older wrapt. Type checkers
see wrapt's own (typed) classes; at run time an older wrapt gets thin subclasses that accept
the subscript and change nothing else.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

import wrapt

__all__ = ["BoundFunctionWrapper", "FunctionWrapper"]

if TYPE_CHECKING:
    from wrapt import BoundFunctionWrapper, FunctionWrapper
elif hasattr(wrapt.FunctionWrapper, "__class_getitem__"):
    FunctionWrapper = wrapt.FunctionWrapper
    BoundFunctionWrapper = wrapt.BoundFunctionWrapper
else:

    class FunctionWrapper(wrapt.FunctionWrapper):
        """``wrapt.FunctionWrapper``, subscriptable as wrapt 2.2 and later make it."""

        __slots__ = ()
        __class_getitem__ = classmethod(types.GenericAlias)

    class BoundFunctionWrapper(wrapt.BoundFunctionWrapper):
        """``wrapt.BoundFunctionWrapper``, subscriptable as wrapt 2.2 and later make it."""

        __slots__ = ()
        __class_getitem__ = classmethod(types.GenericAlias)
