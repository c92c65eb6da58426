"""What memscope keeps inside each Ray worker: its device, its manager, its batch, its sizes.

One :class:`ActorMemory` lives as long as its actor (or, for a function run in Ray tasks, its
worker process), and so does its one ``managed_batch``: entered at the actor's first Ray
batch (after the user's constructor, so the model is among the objects the heap freeze
takes out of every collection) and left when Ray Data shuts the actor down. Every Ray batch
runs inside it, with the cadence and cache policy the job asked for, and through
:func:`~memscope.process_in_chunks`: when memory runs out, the same rows are retried in
smaller chunks, so the batch still completes, every row in exactly one chunk that
succeeded, in order. The actor's one :class:`~memscope.sizing.AdaptiveBatchState`, passed to
every batch's ``process_in_chunks``, keeps what was learned (the size that worked, the
memory per row where the device can be measured), so the next batches start there instead
of running out of memory again.

After each Ray batch the actor's figures (an :class:`~memscope.ray.ActorBatchReport`: the
long-lived batch's report so far, with the Ray batches counted) go to a :class:`Reporter`;
the Ray one sends them to the job's collector without waiting. An actor that is killed never
leaves its batch, so the collector keeps the figures of its last finished Ray batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from memscope._validation import check_int
from memscope.batch import ManagedBatch, managed_batch
from memscope.exceptions import BatchStateError, InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.policies import GCBackoff
from memscope.ray._report import ActorBatchReport
from memscope.ray._rows import BatchRows, concatenate_batches
from memscope.reports import BatchReport
from memscope.sizing import AdaptiveBatchState, Sizing, process_in_chunks
from memscope.typing import CachePolicy, DeviceLike

__all__: list[str] = []

logger = logging.getLogger("memscope")

_FAILURE_TEXT_LIMIT = 500

_WHOLE_BATCH = 2**31 - 1
"""The sizing state's ``start`` without a ``chunk_size``: larger than any batch, so each
chunk is at most the rows left, and a batch runs whole until memory runs out."""


_WHOLE_BATCHES = Sizing()
"""The default sizing: each Ray batch whole, until memory runs out."""


@dataclass(frozen=True, slots=True)
class ActorSettings:
    """How each actor manages its memory; checked on the driver, used in every actor.

    ``sizing`` sizes the chunks of every Ray batch (its ``start`` is the largest chunk;
    ``None`` there: the whole batch, until memory runs out).
    """

    device: DeviceLike = None
    every: int | None = 1
    cache_policy: CachePolicy | None = None
    memory_threshold: float = DEFAULT_MEMORY_THRESHOLD
    freeze_heap: bool = True
    sizing: Sizing = _WHOLE_BATCHES

    @classmethod
    def checked(
        cls,
        *,
        device: DeviceLike,
        every: int | None,
        cache_policy: CachePolicy | None,
        memory_threshold: float,
        freeze_heap: bool,
        sizing: Sizing,
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
        if not isinstance(sizing, Sizing):
            raise InvalidArgumentTypeError(
                f"sizing must be a memscope.sizing.Sizing, got {sizing!r} of type "
                f"{type(sizing).__name__}"
            )
        return cls(device, every, cache_policy, float(memory_threshold), freeze_heap, sizing)

    def new_state(self) -> AdaptiveBatchState:
        """A fresh sizing state for one actor's batches."""
        whole = self.sizing.start is None
        return AdaptiveBatchState(
            replace(self.sizing, start=_WHOLE_BATCH) if whole else self.sizing
        )


def chunk_sizing(
    chunk_size: object, factor: object, min_size: object, regrow_after: object
) -> Sizing:
    """The :class:`Sizing` of ``memscope.ray.managed``'s separate chunk options, checked
    (``chunk_size`` is its ``start``, and named so in the errors)."""
    size = None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)
    if size is not None and isinstance(min_size, int) and min_size > size:
        raise InvalidArgumentError(
            f"min_size must be <= chunk_size, got min_size={min_size!r} and chunk_size={size!r}"
        )
    return Sizing(start=size, factor=factor, min_size=min_size, regrow_after=regrow_after)  # type: ignore[arg-type]


class Reporter(Protocol):
    """Where an actor's figures go; the Ray one sends them to the job's collector."""

    def started(self, batch: int, rows: int, block: str | None = None) -> None:
        """The actor began its ``batch``-th Ray batch, of ``rows`` rows (``block``: what
        names the batch's content, so a block Ray runs again is counted once)."""
        ...

    def finished(self, batch: int, report: ActorBatchReport | None, failure: str | None) -> None:
        """The batch ended; ``report`` is the actor's total so far, ``failure`` what it raised."""
        ...

    def closed(self, report: ActorBatchReport | None) -> None:
        """The actor was shut down gracefully; ``report`` is its final figures."""
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
    """One actor's memory management: its manager, its long-lived batch, its sizing state.

    ``process`` runs one Ray batch; it is safe to call from several threads (an actor with
    ``max_concurrency`` above 1), which then take turns: the device's peak figures and the
    sizing state belong to one batch at a time. ``close`` ends the long-lived batch.
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
        self.batch: ManagedBatch = managed_batch(
            manager=self.manager,
            every=settings.every,
            cache_policy=settings.cache_policy,
            freeze_heap=settings.freeze_heap,
        )
        """The actor's one managed batch, entered at its first Ray batch."""
        self._reporter = reporter
        self._lock = threading.Lock()
        self._report: ActorBatchReport | None = None
        self._batches = 0
        self._split_batches = 0
        self._failed_batches = 0
        self._busy_seconds = 0.0
        self._largest_batch = 0
        self._closed = False

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
        if self.settings.sizing.start is None and size >= self._largest_batch:
            return None
        return size

    def process(self, function: Callable[[Any], Any], batch: Any) -> Any:
        """``function`` applied to ``batch`` in chunks that fit, the results joined in order."""
        with self._lock:
            if self._closed:
                raise BatchStateError("this actor's memscope batch has ended: it takes no batches")
            rows = BatchRows(batch)
            self._largest_batch = max(self._largest_batch, len(rows))
            self._batches += 1
            number = self._batches
            self._reporter.started(number, len(rows), _block_name(rows, number))
            count = _ChunkCount()
            started = time.perf_counter()
            try:
                if not self.batch.active:
                    self.batch.open()
                    # Busy time starts with the batch's own clock, so it never exceeds it.
                    started = time.perf_counter()
                # Ray may run each call in a thread or context of its own: the batch is made
                # the active one for this call wherever it runs.
                result = self.batch.bind(self._run)(function, rows, count)
            except BaseException as error:
                self._after(number, count, started, describe_failure(error))
                raise
            self._after(number, count, started, None)
            return result

    def close(self) -> None:
        """End the actor's batch (its final cleanup, the heap unfrozen) and report the final
        figures. Later calls do nothing; so does a call while a batch is running."""
        if not self._lock.acquire(blocking=False):
            # A Ray batch is running (or this is a finalizer inside one): the process is
            # going away, and ending the batch under it would break the batch.
            logger.debug("memscope.ray: the actor was closed during a batch; left running")
            return
        try:
            if self._closed:
                return
            self._closed = True
            if self.batch.active:
                try:
                    self.batch.close()
                    self._report = self._actor_report(self.batch.report)
                except Exception:
                    logger.warning("memscope.ray: could not end the actor's batch", exc_info=True)
            self._reporter.closed(self._report)
        finally:
            self._lock.release()

    def _run(self, function: Callable[[Any], Any], rows: BatchRows, count: _ChunkCount) -> Any:
        if len(rows) == 0:
            # Nothing to split; the function still says what an empty batch becomes.
            return function(rows.batch)
        return process_in_chunks(
            count.counting(function), rows, state=self.state, combine=concatenate_batches
        )

    def _after(self, number: int, count: _ChunkCount, started: float, failure: str | None) -> None:
        """Count the Ray batch, and report the actor's figures so far."""
        self._busy_seconds += time.perf_counter() - started
        self._split_batches += int(count.chunks > 1)
        self._failed_batches += int(failure is not None)
        try:
            if self.batch.active:
                if failure is not None and self.settings.every is not None:
                    # What the failed batch left behind is worth freeing before the next.
                    self.batch.clean_up(f"the failed Ray batch {number}")
                self._report = self._actor_report(self.batch.report_so_far())
        except Exception:
            # Bookkeeping must never fail the data path.
            logger.warning("memscope.ray: could not record batch %d", number, exc_info=True)
        self._reporter.finished(number, self._report, failure)

    def _actor_report(self, report: BatchReport) -> ActorBatchReport:
        return ActorBatchReport.of(
            report,
            batches=self._batches,
            split_batches=self._split_batches,
            failed_batches=self._failed_batches,
            chunk_size=self.chunk_size,
            busy_seconds=self._busy_seconds,
        )


def _block_name(rows: BatchRows, number: int) -> str | None:
    """The batch's content fingerprint; unnamed, a batch still counts, but a retry of its
    block cannot be matched to it."""
    try:
        return rows.fingerprint
    except Exception:
        logger.debug("memscope.ray: could not name batch %d", number, exc_info=True)
        return None
