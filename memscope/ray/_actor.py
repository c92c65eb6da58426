"""What memscope keeps inside each Ray worker: its device, its manager, the size it learned.

One :class:`ActorMemory` lives as long as its actor (or, for a function run in Ray tasks, its
worker process). Each Ray batch it is handed runs inside a ``managed_batch`` on the actor's
one long-lived :class:`~memscope.MemoryManager`, with the cadence and cache policy the job
asked for, and through :func:`~memscope.process_in_chunks`: when memory runs out, the same
rows are retried in smaller chunks, so the batch still completes, every row in exactly one
chunk that succeeded, in order. The chunk size that worked is kept for the actor's next
batches, which start there instead of running out of memory again.

The actor's figures are the running total of its batches (an
:class:`~memscope.ray.ActorBatchReport`), handed to a :class:`Reporter` after each batch;
the Ray one sends them to the job's collector without waiting.

Why one ``managed_batch`` per Ray batch rather than one for the actor's whole life: a batch's
report exists once it has ended, and an actor must report while it runs (it may be killed
at any moment, or by Ray Data at the end, with no chance to finish a batch). The manager,
its GC backoff, the learned size and the report outlive the batches.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from memscope._validation import check_int
from memscope.batch import ManagedBatch, managed_batch
from memscope.exceptions import BatchStateError, InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.oom import process_in_chunks
from memscope.policies import GCBackoff
from memscope.ray._report import ActorBatchReport, fold_batch
from memscope.ray._rows import BatchRows, concatenate_batches, row_count
from memscope.typing import CachePolicy, DeviceLike

__all__: list[str] = []

logger = logging.getLogger("memscope")

_FAILURE_TEXT_LIMIT = 500


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
    regrow_after_batches: int | None = None

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
        regrow_after_batches: int | None,
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
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise InvalidArgumentTypeError(
                f"factor must be a real number between 0 and 1, got {factor!r} "
                f"of type {type(factor).__name__}"
            )
        if math.isnan(float(factor)) or not 0.0 < float(factor) < 1.0:
            raise InvalidArgumentError(
                f"factor must be between 0 and 1, exclusive (0 < factor < 1), got {factor!r}"
            )
        regrow = (
            None
            if regrow_after_batches is None
            else check_int(regrow_after_batches, "regrow_after_batches", minimum=1)
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
            regrow_after_batches=regrow,
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


def learned_size(
    attempts: list[tuple[int, bool]], total: int, *, factor: float, min_size: int
) -> int | None:
    """The chunk size one batch's attempts taught; ``None`` where memory never ran out.

    ``attempts`` are the chunks tried, in order, as (rows, succeeded). A chunk that succeeded
    with rows left after it ran at exactly the search's size; the last chunk may have been cut
    short by the end of the batch, so after an out-of-memory error followed only by such a
    tail, the size is what the factor would have made of the failed one (or the tail's
    length, where that is larger: the search used at least that).
    """
    position = 0
    last_failed: int | None = None
    exact: int | None = None
    tail = 0
    for rows, succeeded in attempts:
        if not succeeded:
            last_failed, exact, tail = rows, None, 0
            continue
        if position + rows < total:
            exact = rows
        else:
            tail = rows
        position += rows
    if last_failed is None:
        return None
    if exact is not None:
        return exact
    shrunk = max(min_size, min(int(last_failed * factor), last_failed - 1))
    return max(shrunk, tail)


class _ChunkLog:
    """The chunks one batch tried, as (rows, succeeded), in order."""

    def __init__(self) -> None:
        self.attempts: list[tuple[int, bool]] = []

    @property
    def chunks(self) -> int:
        """Chunks that succeeded."""
        return sum(1 for _, succeeded in self.attempts if succeeded)

    def watching(self, function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def attempt(chunk: Any) -> Any:
            self.attempts.append((row_count(chunk), False))
            result = function(chunk)
            self.attempts[-1] = (self.attempts[-1][0], True)
            return result

        return attempt


class ActorMemory:
    """One actor's memory management: its manager, learned chunk size and running report.

    ``process`` runs one Ray batch; it is safe to call from several threads (an actor with
    ``max_concurrency`` above 1), which then take turns: the device's peak figures and the
    learned size belong to one batch at a time.
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
        self._reporter = reporter
        self._lock = threading.Lock()
        self._report: ActorBatchReport | None = None
        self._learned: int | None = None
        self._batches_without_oom = 0
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
        return self._learned if self._learned is not None else self.settings.chunk_size

    def process(self, function: Callable[[Any], Any], batch: Any) -> Any:
        """``function`` applied to ``batch`` in chunks that fit, the results joined in order."""
        with self._lock:
            rows = BatchRows(batch)
            self._largest_batch = max(self._largest_batch, len(rows))
            self._batches += 1
            number = self._batches
            self._reporter.started(number, len(rows))
            log = _ChunkLog()
            segment = managed_batch(
                manager=self.manager,
                every=self.settings.every,
                cache_policy=self.settings.cache_policy,
                freeze_heap=self.settings.freeze_heap,
            )
            try:
                with segment:
                    result = self._run(function, rows, log)
            except BaseException as error:
                self._after(number, segment, rows, log, describe_failure(error))
                raise
            self._after(number, segment, rows, log, None)
            return result

    def _run(self, function: Callable[[Any], Any], rows: BatchRows, log: _ChunkLog) -> Any:
        if len(rows) == 0:
            # Nothing to split; the function still says what an empty batch becomes.
            return function(rows.batch)
        start = self._start_for(len(rows))
        return process_in_chunks(
            log.watching(function),
            rows,
            start=start,
            factor=self.settings.factor,
            min_size=min(self.settings.min_size, start),
            combine=concatenate_batches,
        )

    def _start_for(self, rows: int) -> int:
        limit = self.chunk_size
        return rows if limit is None else min(rows, limit)

    def _after(
        self,
        number: int,
        segment: ManagedBatch,
        rows: BatchRows,
        log: _ChunkLog,
        failure: str | None,
    ) -> None:
        """Learn from the batch, add its figures to the actor's, and report them."""
        try:
            self._learn(log, len(rows))
            try:
                batch_report = segment.report
            except BatchStateError:
                batch_report = None  # the batch never started: nothing to add
            if batch_report is not None:
                self._report = fold_batch(
                    self._report,
                    batch_report,
                    split=log.chunks > 1,
                    failed=failure is not None,
                    chunk_size=self.chunk_size,
                )
        except Exception:
            # Bookkeeping must never fail the data path.
            logger.warning("memscope.ray: could not record batch %d", number, exc_info=True)
        self._reporter.finished(number, self._report, failure)

    def _learn(self, log: _ChunkLog, total: int) -> None:
        learned = learned_size(
            log.attempts, total, factor=self.settings.factor, min_size=self.settings.min_size
        )
        if learned is not None:
            if self._learned is None or learned < self._learned:
                logger.info("memscope.ray: this actor's batches now start at %d rows", learned)
            self._learned = learned
            self._batches_without_oom = 0
            return
        self._batches_without_oom += 1
        regrow_after = self.settings.regrow_after_batches
        if self._learned is None or regrow_after is None:
            return
        if self._batches_without_oom >= regrow_after:
            grown = max(self._learned + 1, int(self._learned / self.settings.factor))
            # Back to the configured size (or, without one, whole batches) once reached.
            cap = self.settings.chunk_size
            ceiling = self._largest_batch if cap is None else cap
            self._learned = None if grown >= ceiling else grown
            self._batches_without_oom = 0
            logger.info(
                "memscope.ray: no OOM in %d batches; batches now start at %s rows",
                regrow_after,
                "full" if self._learned is None else self._learned,
            )
