"""One base for memscope's context managers: write ``__enter__`` and ``_leave``, get ``with`` and
``async with``.

memscope's context managers do no I/O worth awaiting on entry or exit, so their asynchronous
form is the synchronous one run in place; deriving it in one base keeps the two from drifting.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Any, TypeVar

__all__: list[str] = []

Manager = TypeVar("Manager", bound="SyncAndAsyncContextManager")


class SyncAndAsyncContextManager(abc.ABC):
    """A context manager usable with ``with`` and ``async with`` alike."""

    @abc.abstractmethod
    def __enter__(self: Manager) -> Manager: ...

    @abc.abstractmethod
    def _leave(self, error: BaseException | None) -> None:
        """Leave the block; ``error`` is the exception leaving it, if any."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._leave(exc)

    async def __aenter__(self: Manager) -> Manager:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)
