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

from memscope._version import __version__
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
from memscope.oom import adaptive_batch, is_oom_error, process_in_chunks, process_in_chunks_async
from memscope.policies import ClearAlways, ClearWhenUseful, GCBackoff
from memscope.reports import BatchReport
from memscope.snapshot import MemorySnapshot
from memscope.units import format_bytes, parse_bytes

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
    "__version__",
    "adaptive_batch",
    "auto_clear",
    "format_bytes",
    "is_oom_error",
    "managed_batch",
    "parse_bytes",
    "process_in_chunks",
    "process_in_chunks_async",
]
