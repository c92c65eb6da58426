"""Odd use, faults and bad input in the core: nothing lost, nothing left frozen, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import multiprocessing
import pickle
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hardening_targets
import numpy as np
import pytest
import torch

from memscope import (
    BatchStateError,
    DeviceUnavailableError,
    InvalidArgumentError,
    MemoryManager,
    _cleanup,
    _heap,
    auto_clear,
    managed_batch,
)
from memscope._heap import heap_is_unfrozen
from memscope.batch import current_batch
from memscope.host import (
    HostMemoryMonitor,
    _read_limit_file,
    physical_memory_from_meminfo,
    rlimit_memory_limit,
)
from memscope.testing import FakeDevice, FakeHost, GiB, RecordingManager, oom_error


@pytest.fixture(autouse=True)
def heap_left_unfrozen() -> None:
    """Every test here must leave the heap as it found it: unfrozen."""
    assert heap_is_unfrozen()


def assert_heap_released() -> None:
    assert heap_is_unfrozen()
    assert _heap.heap_holders() == 0


# Pickling ------------------------------------------------------------------------------


def test_decorated_function_pickles_by_reference() -> None:
    """pickle.dumps of an @auto_clear function gives back the same decorated function."""
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(hardening_targets.double, protocol=protocol))
        assert restored is hardening_targets.double
    assert restored(4) == 8


def test_bound_decorated_method_pickles_with_its_instance() -> None:
    """A bound decorated method pickles like a bound method: its instance, then the name."""
    method = hardening_targets.Colorizer(3).colorize
    restored = pickle.loads(pickle.dumps(method))
    assert restored(2) == 6
    assert restored.cleanup_stats is method.cleanup_stats


def test_decorated_function_deep_copies_as_itself() -> None:
    """copy.copy and copy.deepcopy keep the decorated function, as they do plain functions."""
    assert copy.copy(hardening_targets.double) is hardening_targets.double
    assert copy.deepcopy({"f": hardening_targets.double})["f"] is hardening_targets.double


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_decorated_function_runs_in_a_process_pool(start_method: str) -> None:
    """ProcessPoolExecutor (spawn and fork) can ship a decorated function to its workers."""
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"this platform has no {start_method!r} start method")
    context = multiprocessing.get_context(start_method)
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        assert list(pool.map(hardening_targets.double, range(5))) == [0, 2, 4, 6, 8]


# Entering and leaving ------------------------------------------------------------------


def test_batch_on_a_missing_device_leaves_the_heap_unfrozen() -> None:
    """managed_batch("cuda") without CUDA raises and freezes nothing; later batches work."""
    with pytest.raises(DeviceUnavailableError), managed_batch("cuda"):
        pass
    assert_heap_released()
    with managed_batch("cpu"):
        assert not heap_is_unfrozen()
    assert_heap_released()


def test_budget_larger_than_the_device_leaves_the_heap_unfrozen() -> None:
    """A budget that cannot fit is refused on entry, with nothing left frozen."""
    with FakeDevice("cuda", total=8 * GiB):
        batch = managed_batch("cuda", budget="16GiB")
        with pytest.raises(InvalidArgumentError, match="budget"):
            batch.__enter__()
    assert_heap_released()


def test_failure_while_entering_releases_what_was_acquired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If entering fails after the heap was frozen, the heap is released before the error."""
    import memscope.batch

    class BrokenRecorder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise OSError("history folder is read-only")

    import memscope._watch_history

    monkeypatch.setattr(memscope._watch_history, "MemoryHistoryRecorder", BrokenRecorder)
    with (
        pytest.raises(OSError, match="read-only"),
        managed_batch(manager=RecordingManager(), history=True),
    ):
        pass
    assert_heap_released()


def test_exit_without_enter_is_a_batch_state_error() -> None:
    """__exit__ on a batch never entered says so, instead of an IndexError."""
    with pytest.raises(BatchStateError, match="without a matching __enter__"):
        managed_batch().__exit__(None, None, None)


def test_batch_entered_and_left_in_different_tasks_finishes() -> None:
    """An async generator (an app's lifespan) whose set-up and tear-down run in different
    tasks still ends its batch: a report, and the heap unfrozen."""

    async def lifespan():  # type: ignore[no-untyped-def]
        async with managed_batch(manager=RecordingManager()) as batch:
            yield batch

    async def main() -> object:
        generator = lifespan()
        batch = await asyncio.create_task(generator.__anext__())
        batch.step()
        await asyncio.create_task(generator.aclose())
        return batch

    batch = asyncio.run(main())
    assert batch.report.items == 1  # type: ignore[attr-defined]
    assert_heap_released()


def test_exit_stack_closed_from_another_thread_finishes_the_batch() -> None:
    """An ExitStack holding a batch, closed in another thread, still produces the report."""
    stack = contextlib.ExitStack()
    batch = stack.enter_context(managed_batch(manager=RecordingManager()))
    batch.step()
    closer = threading.Thread(target=stack.close)
    closer.start()
    closer.join()
    assert batch.report.items == 1
    assert current_batch() is None
    assert_heap_released()


def test_batches_left_from_another_thread_are_not_held_by_the_entering_context() -> None:
    """A batch entered here and left elsewhere is dropped from this context's bookkeeping at
    the next batch entered here, so a loop of such batches holds none of them."""
    left_elsewhere = []
    for _ in range(3):
        stack = contextlib.ExitStack()
        left_elsewhere.append(weakref.ref(stack.enter_context(managed_batch("cpu"))))
        closer = threading.Thread(target=stack.close)
        closer.start()
        closer.join()
        del stack
    with managed_batch("cpu", every=None) as batch:
        gc.collect()
        assert [ref() for ref in left_elsewhere] == [None, None, None]
        assert current_batch() is batch
    assert current_batch() is None


def test_interrupt_in_the_final_cleanup_keeps_the_report_and_the_users_error() -> None:
    """A KeyboardInterrupt raised by the final cleanup propagates with the user's exception as
    its context, and the report is still made."""
    manager = RecordingManager()
    batch = managed_batch(manager=manager)
    user_error = ValueError("bad image")

    def run() -> None:
        with batch:
            batch.step()
            manager.cleanup_error = KeyboardInterrupt()
            raise user_error

    with pytest.raises(KeyboardInterrupt) as raised:
        run()
    assert raised.value.__context__ is user_error
    assert batch.report.items == 1
    assert batch.report.ended_by == "ValueError"
    assert_heap_released()


def test_track_in_a_worker_after_the_batch_ended_is_an_error() -> None:
    """A worker thread still inside track() when its batch exits gets a BatchStateError."""
    errors: list[BaseException] = []
    started = threading.Event()

    with managed_batch(manager=RecordingManager()) as batch:
        tracked = batch.track(range(1000))

        def worker() -> None:
            try:
                for _ in tracked:
                    started.set()
                    time.sleep(0.005)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=worker)
        thread.start()
        started.wait(5)
    thread.join(5)
    assert len(errors) == 1
    assert isinstance(errors[0], BatchStateError)
    assert batch.report.items < 1000


# Devices -------------------------------------------------------------------------------


def test_explicit_missing_device_is_refused_when_decorating() -> None:
    """@auto_clear(device="cuda") on a machine without CUDA fails at once, not after a call."""
    with pytest.raises(DeviceUnavailableError, match="cuda"):

        @auto_clear(every=1, device="cuda")
        def colorize(image: int) -> int:
            return image


def test_unresolvable_device_at_call_time_never_replaces_the_result(
    monkeypatch: pytest.MonkeyPatch, memscope_log: pytest.LogCaptureFixture
) -> None:
    """Under a launcher whose LOCAL_RANK names a GPU this process cannot see, the call's
    result and its own exception come back; the cleanup failure is logged."""

    @auto_clear(every=1)
    def colorize(image: int) -> int:
        if image < 0:
            raise ValueError("negative image")
        return image * 2

    monkeypatch.setenv("LOCAL_RANK", "3")
    with FakeDevice("cuda", device_count=1):
        assert colorize(2) == 4
        with pytest.raises(ValueError, match="negative image"):
            colorize(-1)
    assert colorize.cleanup_stats.cleanup_failures == 2
    assert any("LOCAL_RANK" in r.getMessage() or r.exc_info for r in memscope_log.records)


def test_numpy_integers_name_devices() -> None:
    """A NumPy integer is a device index wherever a Python int is."""
    with FakeDevice("cuda", device_count=2):
        assert str(MemoryManager(np.int64(1)).resolved_device) == "cuda:1"
        with managed_batch(np.int32(1)) as batch:
            batch.step()
    assert batch.report.device == "cuda:1"


# Cleanup failures and OOM recovery -----------------------------------------------------


def test_a_cleanup_that_keeps_failing_is_logged_a_handful_of_times(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """1,000 failing cleanups: the first warning has the traceback, at most six warnings in
    all, each later one with the count."""
    _cleanup.failures.succeeded()  # failures left by earlier tests
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("driver gone")

    @auto_clear(every=1, manager=manager)
    def colorize(image: int) -> int:
        return image

    try:
        for image in range(1000):
            colorize(image)
    finally:
        manager.cleanup_error = None
        colorize(0)  # a cleanup that works resets the count
    warnings = [r for r in memscope_log.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 6
    assert warnings[0].exc_info is not None
    assert "1000 cleanups in a row" in warnings[-1].getMessage()
    assert _cleanup.failures.count == 0


def test_oom_recovery_collects_garbage_that_predates_the_batch() -> None:
    """Garbage made of objects frozen at the batch's start is out of reach of the cadence's
    collections, but OOM recovery unfreezes, collects and refreezes."""

    class Holder:
        def __init__(self) -> None:
            self.tensor = torch.zeros(1024)
            self.me = self

    holder = Holder()
    alive = weakref.ref(holder)
    attempts: list[int] = []

    @auto_clear(oom_retries=1)
    def colorize(image: int) -> int:
        attempts.append(image)
        if len(attempts) == 1:
            raise oom_error("cuda")
        return image

    with managed_batch(manager=RecordingManager()) as batch:
        del holder  # now cyclic garbage, frozen with everything else at the start
        gc.collect()
        assert alive() is not None
        assert colorize(7) == 7
        assert alive() is None
        assert not heap_is_unfrozen()
    assert batch.report.gc_runs >= 1
    assert_heap_released()


# Host figures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("MemTotal:       16384000 kB", 16384000 * 1024),
        ("MemTotal: 16 GB", 16 * GiB),
        ("MemTotal: 16 GiB", 16 * GiB),
        ("MemTotal:", None),
        ("MemTotal: lots kB", None),
        ("MemTotal: 16 parsecs", None),
    ],
)
def test_meminfo_lines_are_read_with_their_unit_or_refused(
    tmp_path: Path, line: str, expected: int | None, memscope_log: pytest.LogCaptureFixture
) -> None:
    """MemTotal is read in its unit; a malformed line gives None and one warning."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"{line}\nMemFree: 1 kB\n")
    assert physical_memory_from_meminfo(meminfo) == expected
    warnings = [r for r in memscope_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if expected is None else 0)


def test_non_utf8_cgroup_limit_is_ignored_with_a_warning(
    tmp_path: Path, memscope_log: pytest.LogCaptureFixture
) -> None:
    """A memory.max that is not text gives no limit and one warning, not a crash."""
    limit_file = tmp_path / "memory.max"
    limit_file.write_bytes(b"\xff\xfe\x00max")
    assert _read_limit_file(limit_file) is None
    assert [r.levelno for r in memscope_log.records] == [logging.WARNING]


def test_failing_getrlimit_falls_back_with_a_warning(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """A getrlimit that raises OSError means no resource limit, with a warning."""

    def broken(which: int) -> tuple[int, int]:
        raise OSError("not permitted")

    assert rlimit_memory_limit(broken) is None
    assert any(r.levelno == logging.WARNING for r in memscope_log.records)


def test_monitor_with_a_broken_meminfo_uses_the_next_source() -> None:
    """With /proc/meminfo unreadable as text, the monitor still finds the machine's RAM."""
    with FakeHost(resident=GiB, physical_memory=16 * GiB) as host:
        (host.proc_root / "meminfo").write_bytes(b"MemTotal: \xff\xfe kB\n")
        monitor = HostMemoryMonitor(use_psutil=False)
        assert monitor.limit.size > 0
        assert monitor.resident_bytes() == GiB


# Logging -------------------------------------------------------------------------------


def test_memscope_logger_has_a_null_handler() -> None:
    """The library adds a NullHandler to its logger, as the standard library advises."""
    handlers = logging.getLogger("memscope").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_unconfigured_application_sees_no_memscope_output() -> None:
    """An application that configures no logging sees nothing from memscope on stderr,
    even when a cleanup fails."""
    code = (
        "import logging, memscope\n"
        "logging.getLogger('memscope').warning('a warning nobody asked to see')\n"
        "from memscope.testing import RecordingManager\n"
        "manager = RecordingManager()\n"
        "manager.cleanup_error = RuntimeError('boom')\n"
        "with memscope.managed_batch(manager=manager) as batch:\n"
        "    batch.step()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "memscope" not in result.stderr
    assert "boom" not in result.stderr


# The test double -----------------------------------------------------------------------


def test_fake_device_failure_is_a_fresh_exception_each_time() -> None:
    """FakeDevice.fail raises a new exception per call, so no traceback grows without bound."""
    with FakeDevice("cuda") as fake:
        fake.fail("torch.cuda.mem_get_info", RuntimeError("driver gone"))
        raised = []
        for _ in range(3):
            with pytest.raises(RuntimeError, match="driver gone") as error:
                fake.function("torch.cuda.mem_get_info")(0)
            raised.append(error.value)
    assert len({id(error) for error in raised}) == 3


# Exception groups ----------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in Python 3.11")
def test_oom_inside_an_exception_group_is_an_oom() -> None:
    """An asyncio TaskGroup whose tasks all ran out of memory is an out-of-memory error; one
    with another error among them is that error too, and not an OOM."""
    from memscope import is_oom_error

    async def fails(error: BaseException) -> None:
        raise error

    async def group(*errors: BaseException) -> None:
        async with asyncio.TaskGroup() as tasks:
            for error in errors:
                tasks.create_task(fails(error))

    with pytest.raises(BaseExceptionGroup) as with_oom:  # noqa: F821 (3.11 builtin)
        asyncio.run(group(oom_error("cuda"), oom_error("cuda")))
    assert is_oom_error(with_oom.value)
    with pytest.raises(BaseExceptionGroup) as mixed:  # noqa: F821
        asyncio.run(group(ValueError("bad"), oom_error("cuda")))
    assert not is_oom_error(mixed.value)
    with pytest.raises(BaseExceptionGroup) as without_oom:  # noqa: F821
        asyncio.run(group(ValueError("bad"), KeyError("x")))
    assert not is_oom_error(without_oom.value)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in Python 3.11")
def test_retries_and_reports_treat_an_oom_group_as_an_oom() -> None:
    """@auto_clear(oom_retries=1) retries a call that failed with an OOM inside a group, and
    the batch counts it as one out-of-memory error."""
    attempts: list[int] = []

    @auto_clear(oom_retries=1)
    def colorize(image: int) -> int:
        attempts.append(image)
        if len(attempts) == 1:
            raise ExceptionGroup("tasks failed", [oom_error("cuda")])  # noqa: F821
        return image

    with managed_batch(manager=RecordingManager()) as batch:
        assert colorize(3) == 3
    assert attempts == [3, 3]
    assert (batch.report.ooms, batch.report.oom_retries) == (1, 1)


def test_an_exhausted_adaptive_batch_inside_a_batch_counts_each_oom_once() -> None:
    """@adaptive_batch that runs out of memory at every size raises BatchSizeExhaustedError
    out of the batch; the report counts the OOMs it met, not one more at exit."""
    from memscope import BatchSizeExhaustedError, adaptive_batch

    @adaptive_batch(start=4)
    def colorize(batch_size: int, images: list[int]) -> list[int]:
        raise oom_error("cuda", tried=batch_size * GiB)

    with (
        pytest.raises(BatchSizeExhaustedError) as raised,
        managed_batch(manager=RecordingManager()) as batch,
    ):
        colorize([1, 2, 3, 4])
    assert raised.value.sizes_tried == (4, 2, 1)
    assert batch.report.ooms == 3
