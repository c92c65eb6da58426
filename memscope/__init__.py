"""memscope: keep GPU memory in check across long PyTorch batch jobs.

The toolkit is :func:`managed_batch` (a with-block around a batch loop), :func:`auto_clear`
(a decorator for the per-item function), :func:`adaptive_batch` and
:func:`process_in_chunks` (batch sizes that shrink when memory runs out), all built on
:class:`MemoryManager`. Inside a batch there is one owner of cleanup and one record of what
happened, the batch's :class:`BatchReport`; the decorators are its clients.

Everything else lives in namespaces: :mod:`memscope.oom`, :mod:`memscope.reports`,
:mod:`memscope.distributed`, :mod:`memscope.backends`, :mod:`memscope.host`,
:mod:`memscope.testing` and :mod:`memscope.typing`.
"""

import logging
from typing import TYPE_CHECKING, Any

from memscope._homes import attribute_from
from memscope._version import __version__

if TYPE_CHECKING:
    from memscope.allocator import configure_allocator
    from memscope.batch import ManagedBatch, managed_batch
    from memscope.decorator import auto_clear
    from memscope.estimation import ImageMemoryModel
    from memscope.exceptions import (
        BatchSizeExhaustedError,
        BatchStateError,
        DeviceUnavailableError,
        InvalidArgumentError,
        InvalidArgumentTypeError,
        MemscopeError,
    )
    from memscope.manager import MemoryManager
    from memscope.oom import is_oom_error
    from memscope.policies import ClearAlways, ClearWhenUseful, GCBackoff
    from memscope.reports import BatchReport
    from memscope.sizing import Sizing, adaptive_batch, process_in_chunks, process_in_chunks_async
    from memscope.snapshot import MemorySnapshot
    from memscope.units import format_bytes, parse_bytes

# Each top-level name's home. They are imported on first use, so ``import memscope`` (and
# ``memscope --version``) does not import torch until something needs it.
_HOMES = {
    "BatchReport": "memscope.reports",
    "BatchSizeExhaustedError": "memscope.exceptions",
    "BatchStateError": "memscope.exceptions",
    "ClearAlways": "memscope.policies",
    "ClearWhenUseful": "memscope.policies",
    "DeviceUnavailableError": "memscope.exceptions",
    "GCBackoff": "memscope.policies",
    "ImageMemoryModel": "memscope.estimation",
    "InvalidArgumentError": "memscope.exceptions",
    "InvalidArgumentTypeError": "memscope.exceptions",
    "ManagedBatch": "memscope.batch",
    "MemoryManager": "memscope.manager",
    "MemorySnapshot": "memscope.snapshot",
    "MemscopeError": "memscope.exceptions",
    "Sizing": "memscope.sizing",
    "adaptive_batch": "memscope.sizing",
    "auto_clear": "memscope.decorator",
    "configure_allocator": "memscope.allocator",
    "format_bytes": "memscope.units",
    "is_oom_error": "memscope.oom",
    "managed_batch": "memscope.batch",
    "parse_bytes": "memscope.units",
    "process_in_chunks": "memscope.sizing",
    "process_in_chunks_async": "memscope.sizing",
}


def __getattr__(name: str) -> Any:
    value = attribute_from(__name__, name, _HOMES)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


# The standard library's convention for libraries: silent unless the application configures
# logging.
logging.getLogger("memscope").addHandler(logging.NullHandler())

__all__ = [
    "BatchReport",
    "BatchSizeExhaustedError",
    "BatchStateError",
    "ClearAlways",
    "ClearWhenUseful",
    "DeviceUnavailableError",
    "GCBackoff",
    "ImageMemoryModel",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ManagedBatch",
    "MemoryManager",
    "MemorySnapshot",
    "MemscopeError",
    "Sizing",
    "__version__",
    "adaptive_batch",
    "auto_clear",
    "configure_allocator",
    "format_bytes",
    "is_oom_error",
    "managed_batch",
    "parse_bytes",
    "process_in_chunks",
    "process_in_chunks_async",
]
