"""What memscope keeps inside each Ray worker: its device, its manager, the size it learned.

One :class:`ActorMemory` lives as long as its actor (or, for a function run in Ray tasks, its
worker process). Each Ray batch it is handed runs inside a ``managed_batch`` on the actor's
one long-lived :class:`~memscope.MemoryManager`, with the cadence and cache policy the job
asked for, and through :func:`~memscope.process_in_chunks`: when memory runs out, the same
rows are retried in smaller chunks, so the batch still completes, every row in exactly one
chunk that succeeded, in order. The actor's one :class:`~memscope.oom.AdaptiveBatchState`,
passed to every batch's ``process_in_chunks``, keeps what was learned (the size that worked,
the memory per row where the device can be measured), so the next batches start there
instead of running out of memory again.

The actor's figures are the running total of its batches (an
:class:`~memscope.ray.ActorBatchReport`), handed to a :class:`Reporter` after each batch;
the Ray one sends them to the job's collector without waiting.

Why one ``managed_batch`` per Ray batch rather than one for the actor's whole life: a batch's
report exists once it has ended, and an actor must report while it runs (it may be killed
at any moment, or by Ray Data at the end, with no chance to finish a batch). The manager,
its GC backoff, the sizing state and the report outlive the batches.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from memscope._validation import check_int
from memscope.batch import ManagedBatch, managed_batch
from memscope.exceptions import BatchStateError, InvalidArgumentError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom import AdaptiveBatchState, process_in_chunks
from memscope.policies import GCBackoff
from memscope.ray._report import ActorBatchReport, fold_batch
from memscope.ray._rows import BatchRows, concatenate_batches
from memscope.typing import CachePolicy, DeviceLike

__all__: list[str] = []

logger = logging.getLogger("memscope")

_FAILURE_TEXT_LIMIT = 500

_WHOLE_BATCH = 2**31 - 1
"""The sizing state's ``start`` without a ``chunk_size``: larger than any batch, so each
chunk is at most the rows left, and a batch runs whole until memory runs out."""


@dataclass(frozen=True, slots=True)
class ActorSettings:
    """How each actor manages its memory; checked on the driver, used in every actor."""

    device: DeviceLike = None
    every: int | None = 1
    cache_policy: CachePolicy | None = None
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    freeze_heap: bool = True
    chunk_size: int | None = None
    factor: float = 0.5
    min_size: int = 1
    regrow_after: int | None = None

    @classmethod
    def checked(
        cls,
        *,
        device: DeviceLike,
        every: int | None,
        cache_policy: CachePolicy | None,
        memory_threshold: float,
        freeze_heap: bool,
        chunk_size: int | None,
        factor: float,
        min_size: int,
        regrow_after: int | None,
    ) -> ActorSettings:
        """The settings, or an error naming the first bad one, before any actor starts."""
        # A managed_batch checks its own options when it is made (it is not entered here),
        # so every actor's batches are sure to accept them.
        managed_batch(
            device,
            every=every,
            cache_policy=cache_policy,
            memory_threshold=memory_threshold,
            freeze_heap=freeze_heap,
        )
        size = None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)
        smallest = check_int(min_size, "min_size", minimum=1)
        if size is not None and smallest > size:
            raise InvalidArgumentError(
                f"min_size must be <= chunk_size, got min_size={smallest!r} and chunk_size={size!r}"
            )
        # The sizing state checks the rest (factor, regrow_after) as process_in_chunks would.
        AdaptiveBatchState(
            start=_WHOLE_BATCH if size is None else size,
            factor=factor,
            min_size=smallest,
            regrow_after=regrow_after,
        )
        return cls(
            device=device,
            every=every,
            cache_policy=cache_policy,
            memory_threshold=float(memory_threshold),
            freeze_heap=freeze_heap,
            chunk_size=size,
            factor=float(factor),
            min_size=smallest,
            regrow_after=regrow_after,
        )

    def new_state(self) -> AdaptiveBatchState:
        """A fresh sizing state for one actor's batches."""
        return AdaptiveBatchState(
            start=_WHOLE_BATCH if self.chunk_size is None else self.chunk_size,
            factor=self.factor,
            min_size=self.min_size,
            regrow_after=self.regrow_after,
        )


class Reporter(Protocol):
    """Where an actor's figures go; the Ray one sends them to the job's collector."""

    def started(self, batch: int, rows: int) -> None:
        """The actor began its ``batch``-th Ray batch, of ``rows`` rows."""
        ...

    def finished(self, batch: int, report: ActorBatchReport | None, failure: str | None) -> None:
        """The batch ended; ``report`` is the actor's total so far, ``failure`` what it raised."""
        ...


def device_for_gpus(
    gpu_ids: list[str], visible_devices: str | None, cuda_available: bool
) -> torch.device:
    """The device of a worker that Ray assigned ``gpu_ids`` (possibly none).

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned, so the first of them is
    ``cuda:0`` in the worker; where it left the variable alone (it may be told to), the
    GPU's own index is the device's. No GPU assigned: the CPU, even on a machine with GPUs,
    which belong to other actors.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if not cuda_available:
        logger.warning(
            "Ray assigned GPU %s to this worker, but torch cannot use CUDA here; using the CPU",
            ",".join(gpu_ids),
        )
        return torch.device("cpu")
    if visible_devices:
        visible = [entry.strip() for entry in visible_devices.split(",")]
        if gpu_ids[0] in visible:
            return torch.device("cuda", visible.index(gpu_ids[0]))
        return torch.device("cuda", 0)
    return torch.device("cuda", int(gpu_ids[0]))


def assigned_device(gpu_ids: list[str]) -> torch.device:
    """:func:`device_for_gpus` for this process's environment."""
    return device_for_gpus(
        gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available()
    )


def describe_failure(error: BaseException) -> str:
    """``"Type: message"``, short enough to send, whatever the exception's ``__str__`` does."""
    try:
        message = str(error)
    except Exception:
        message = f"<unprintable {type(error).__name__}>"
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= _FAILURE_TEXT_LIMIT else text[: _FAILURE_TEXT_LIMIT - 3] + "..."


class _ChunkCount:
    """How many chunks of one batch succeeded."""

    def __init__(self) -> None:
        self.chunks = 0

    def counting(self, function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def attempt(chunk: Any) -> Any:
            result = function(chunk)
            self.chunks += 1
            return result

        return attempt


class ActorMemory:
    """One actor's memory management: its manager, sizing state and running report.

    ``process`` runs one Ray batch; it is safe to call from several threads (an actor with
    ``max_concurrency`` above 1), which then take turns: the device's peak figures and the
    sizing state belong to one batch at a time.
    """

    def __init__(
        self,
        settings: ActorSettings,
        device: DeviceLike,
        reporter: Reporter,
        *,
        manager: MemoryManager | None = None,
    ) -> None:
        self.settings = settings
        self.manager = (
            manager
            if manager is not None
            else MemoryManager(device, settings.memory_threshold, gc_backoff=GCBackoff())
        )
        self.state = settings.new_state()
        """What the actor's batches learned about sizes, kept from one batch to the next."""
        self._reporter = reporter
        self._lock = threading.Lock()
        self._report: ActorBatchReport | None = None
        self._batches = 0
        self._largest_batch = 0

    @property
    def device(self) -> torch.device:
        """The device the actor's batches run on."""
        return self.manager.resolved_device

    @property
    def report(self) -> ActorBatchReport | None:
        """The actor's figures so far; ``None`` before its first batch ended."""
        return self._report

    @property
    def chunk_size(self) -> int | None:
        """The chunk size the next batch starts at; ``None``: the whole batch."""
        size = self.state.current_size
        if self.settings.chunk_size is None and size >= self._largest_batch:
            return None
        return size

    def process(self, function: Callable[[Any], Any], batch: Any) -> Any:
        """``function`` applied to ``batch`` in chunks that fit, the results joined in order."""
        with self._lock:
            rows = BatchRows(batch)
            self._largest_batch = max(self._largest_batch, len(rows))
            self._batches += 1
            number = self._batches
            self._reporter.started(number, len(rows))
            count = _ChunkCount()
            segment = managed_batch(
                manager=self.manager,
                every=self.settings.every,
                cache_policy=self.settings.cache_policy,
                freeze_heap=self.settings.freeze_heap,
            )
            try:
                with segment:
                    result = self._run(function, rows, count)
            except BaseException as error:
                self._after(number, segment, count, describe_failure(error))
                raise
            self._after(number, segment, count, None)
            return result

    def _run(self, function: Callable[[Any], Any], rows: BatchRows, count: _ChunkCount) -> Any:
        if len(rows) == 0:
            # Nothing to split; the function still says what an empty batch becomes.
            return function(rows.batch)
        return process_in_chunks(
            count.counting(function), rows, state=self.state, combine=concatenate_batches
        )

    def _after(
        self, number: int, segment: ManagedBatch, count: _ChunkCount, failure: str | None
    ) -> None:
        """Add the batch's figures to the actor's, and report them."""
        try:
            try:
                batch_report = segment.report
            except BatchStateError:
                batch_report = None  # the batch never started: nothing to add
            if batch_report is not None:
                self._report = fold_batch(
                    self._report,
                    batch_report,
                    split=count.chunks > 1,
                    failed=failure is not None,
                    chunk_size=self.chunk_size,
                )
        except Exception:
            # Bookkeeping must never fail the data path.
            logger.warning("memscope.ray: could not record batch %d", number, exc_info=True)
        self._reporter.finished(number, self._report, failure)
