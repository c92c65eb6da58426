"""Out-of-memory handling in the toolkit: @auto_clear(oom_retries=N), and what managed_batch
records and notes when an out-of-memory error meets it."""

from __future__ import annotations

import asyncio
import traceback
import weakref
from collections.abc import Generator
from pathlib import Path

import pytest
import torch

from memscope import (
    BatchSizeExhaustedError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    adaptive_batch,
    auto_clear,
    managed_batch,
    process_in_chunks,
)
from memscope.oom import MemoryHistory
from memscope.testing import FakeDevice, GiB, RecordingManager, oom_error


def test_retries_then_succeeds() -> None:
    """Two OOMs then a success: the caller gets the result; the retries are counted."""
    attempts: list[int] = []

    @auto_clear(every=100, manager=RecordingManager(), oom_retries=3)
    def colorize() -> str:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise oom_error("cuda")
        return "done"

    assert colorize() == "done"
    assert len(attempts) == 3
    stats = colorize.cleanup_stats  # type: ignore[attr-defined]
    assert (stats.calls, stats.errors, stats.ooms, stats.oom_retries) == (1, 0, 2, 2)


def test_one_failure_raised_again_counts_once_in_the_decorator_and_the_batch() -> None:
    """A stored OOM raised by every attempt (a failed future's ``result()``) is one failure:
    ``@auto_clear`` and its batch each count it once, through the same ledger rule, and
    count every retry."""
    from concurrent.futures import Future

    failed: Future[None] = Future()
    failed.set_exception(oom_error("cuda"))

    @auto_clear(every=100, manager=RecordingManager(), oom_retries=2)
    def colorize() -> None:
        failed.result()

    with managed_batch(manager=RecordingManager(), every=None) as batch:
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            colorize()
        stats = colorize.cleanup_stats
        assert (stats.ooms, stats.oom_retries, stats.errors) == (1, 2, 1)
    assert (batch.report.ooms, batch.report.oom_retries) == (1, 2)


def test_last_oom_is_raised_unchanged_with_a_note() -> None:
    """After N failed retries the last OOM propagates: same object, its traceback, a note."""
    errors: list[BaseException] = []

    @auto_clear(every=100, manager=RecordingManager(), oom_retries=2)
    def colorize() -> None:
        errors.append(oom_error("cuda"))
        raise errors[-1]

    with pytest.raises(RuntimeError, match="CUDA out of memory") as raised:
        colorize()
    assert len(errors) == 3
    assert raised.value is errors[-1]
    assert traceback.extract_tb(raised.value.__traceback__)[-1].name == "colorize"
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1
    assert "memscope" in notes[0]
    assert colorize.cleanup_stats.errors == 1  # type: ignore[attr-defined]


def test_other_errors_are_not_retried() -> None:
    """A non-OOM error propagates at once, unchanged and without a note."""
    calls: list[int] = []
    original = ValueError("corrupt image")

    @auto_clear(every=100, manager=RecordingManager(), oom_retries=5)
    def colorize() -> None:
        calls.append(1)
        raise original

    with pytest.raises(ValueError, match="corrupt image") as raised:
        colorize()
    assert raised.value is original
    assert calls == [1]
    assert not hasattr(raised.value, "__notes__")


def test_failed_attempt_tensor_is_freed_before_the_retry() -> None:
    """The traceback trap: a tensor held by the failed attempt's frame is already freed when
    the retry starts, because memscope drops the traceback outside the except block before
    collecting garbage."""
    holders: list[weakref.ref[torch.Tensor]] = []
    alive_at_retry: list[bool] = []

    @auto_clear(every=100, manager=RecordingManager(), oom_retries=1)
    def colorize() -> str:
        if holders:
            alive_at_retry.append(holders[0]() is not None)
            return "retried"
        activations = torch.ones(256, 1024)
        # A cycle through the frame, as real tracebacks and closures make.
        activations.keep = activations  # type: ignore[attr-defined]
        holders.append(weakref.ref(activations))
        raise oom_error("cuda")

    assert colorize() == "retried"
    assert alive_at_retry == [False]


def test_retry_frees_memory_through_the_manager() -> None:
    """Between attempts memscope collects garbage and clears the cache of the manager."""
    manager = RecordingManager()
    attempts: list[int] = []

    @auto_clear(every=100, manager=manager, oom_retries=1)
    def colorize() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise oom_error("cuda")

    colorize()
    assert manager.events == ["clear_cache"]


def test_async_retry() -> None:
    """An async function is retried after the awaited attempt fails."""
    attempts: list[int] = []

    @auto_clear(every=100, manager=RecordingManager(), oom_retries=1)
    async def colorize() -> str:
        await asyncio.sleep(0)
        attempts.append(1)
        if len(attempts) == 1:
            raise oom_error("cuda")
        return "done"

    assert asyncio.run(colorize()) == "done"
    assert colorize.cleanup_stats.oom_retries == 1  # type: ignore[attr-defined]


def test_oom_retries_are_validated_when_decorating() -> None:
    """oom_retries must be an int >= 0, and generators cannot be retried."""
    with pytest.raises(InvalidArgumentError, match="oom_retries"):
        auto_clear(oom_retries=-1)
    with pytest.raises(InvalidArgumentTypeError, match="oom_retries"):
        auto_clear(oom_retries=True)  # type: ignore[call-overload]

    def frames() -> Generator[int, None, None]:
        yield 1

    with pytest.raises(TypeError, match="oom_retries"):
        auto_clear(frames, oom_retries=1)  # type: ignore[call-overload]
    assert auto_clear(frames, oom_retries=0) is not None  # type: ignore[call-overload]


def test_bare_form_with_oom_retries_in_a_batch_counts_into_the_report() -> None:
    """Retried OOMs of a decorated call count into the batch report."""
    attempts: list[int] = []

    @auto_clear(oom_retries=2)
    def colorize() -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise oom_error("cuda")

    with managed_batch(manager=RecordingManager()) as batch:
        colorize()
    report = batch.report
    assert (report.ooms, report.oom_retries, report.calls, report.failures) == (2, 2, 1, 0)
    assert "2 out-of-memory errors (2 retried" in report.summary()


def test_oom_leaving_the_batch_is_counted_once_and_noted() -> None:
    """An OOM that leaves a batch through a decorated call is counted once and gets one note
    with the device's figures at the failure."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=7 * GiB, reserved=7 * GiB)

        @auto_clear(oom_retries=1)
        def colorize() -> None:
            raise oom_error("cuda")

        def run() -> None:
            with managed_batch("cuda") as batch:
                runs.append(batch)
                colorize()

        runs: list[object] = []
        with pytest.raises(RuntimeError, match="CUDA out of memory") as raised:
            run()
    report = runs[0].report  # type: ignore[attr-defined]
    assert (report.ooms, report.oom_retries, report.ended_by) == (2, 1, "OutOfMemoryError")
    notes = raised.value.__notes__
    assert len(notes) == 1
    assert "7.0 GiB" in notes[0]


def test_plain_oom_in_a_batch_loop_is_noted() -> None:
    """An OOM raised straight from the loop body gets the note when it leaves the batch."""

    def run() -> None:
        with managed_batch(manager=RecordingManager()) as batch:
            reports.append(batch)
            raise oom_error("cuda")

    reports: list[object] = []
    with pytest.raises(RuntimeError) as raised:
        run()
    assert reports[0].report.ooms == 1  # type: ignore[attr-defined]
    assert len(raised.value.__notes__) == 1


def test_adaptive_batch_counts_into_the_report() -> None:
    """adaptive_batch's OOMs, retries and size reductions show in the batch report."""

    @adaptive_batch(start=8)
    def colorize(batch_size: int) -> int:
        if batch_size > 2:
            raise oom_error("cuda")
        return batch_size

    with managed_batch(manager=RecordingManager()) as batch:
        assert colorize() == 2
    report = batch.report
    assert (report.ooms, report.oom_retries, report.batch_size_reductions) == (2, 2, 2)


def test_chunks_count_into_the_report() -> None:
    """process_in_chunks reports its reductions to the active batch."""
    with managed_batch(manager=RecordingManager()) as batch:
        result = process_in_chunks(
            lambda chunk: [item * 2 for item in chunk] if len(chunk) <= 3 else _raise(),
            list(range(10)),
            start=8,
        )
    assert result == [item * 2 for item in range(10)]
    assert batch.report.batch_size_reductions >= 1
    assert batch.report.ooms == batch.report.oom_retries


def _raise() -> list[int]:
    raise oom_error("cuda")


def test_exhausted_adaptive_batch_leaves_the_batch_with_one_note() -> None:
    """When even min_size fails, the error leaving the batch carries a single note."""

    @adaptive_batch(start=4)
    def colorize(batch_size: int) -> None:
        raise oom_error("cuda")

    def run() -> None:
        with managed_batch(manager=RecordingManager()):
            colorize()

    with pytest.raises(BatchSizeExhaustedError) as raised:
        run()
    assert len(raised.value.__notes__) == 1


def test_record_history_writes_a_snapshot_on_oom(tmp_path: Path) -> None:
    """With history=MemoryHistory(folder) on CUDA, an OOM leaving the batch writes a snapshot file,
    names it in the note and in the report, and recording stops at the end."""
    with FakeDevice("cuda", total=8 * GiB) as fake:

        def run() -> None:
            with managed_batch("cuda", history=MemoryHistory(tmp_path)) as batch:
                batches.append(batch)
                raise oom_error("cuda")

        batches: list[object] = []
        with pytest.raises(RuntimeError) as raised:
            run()
    report = batches[0].report  # type: ignore[attr-defined]
    assert len(report.memory_snapshots) == 1
    snapshot = Path(report.memory_snapshots[0])
    assert snapshot.parent == tmp_path
    assert snapshot.exists()
    assert str(snapshot) in raised.value.__notes__[0]
    assert fake.count("torch.cuda.memory._dump_snapshot") == 1
    assert fake.memory_history is None


def test_record_history_without_oom_writes_nothing(tmp_path: Path) -> None:
    """A batch that ends normally starts and stops recording but writes no file."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        with managed_batch("cuda", history=MemoryHistory(tmp_path)) as batch:
            assert fake.memory_history is not None
        assert fake.memory_history is None
    assert batch.report.memory_snapshots == ()
    assert list(tmp_path.iterdir()) == []


def test_record_history_on_cpu_is_harmless(tmp_path: Path) -> None:
    """On a device without allocation history, record_history does nothing and says so."""
    with managed_batch("cpu", history=MemoryHistory(tmp_path)) as batch:
        batch.step()
    assert batch.report.items == 1
    assert list(tmp_path.iterdir()) == []


def test_history_arguments_are_checked() -> None:
    """Bad history values or folders fail at construction."""
    with pytest.raises(TypeError, match="history"):
        managed_batch(history="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="folder"):
        MemoryHistory(3)  # type: ignore[arg-type]
