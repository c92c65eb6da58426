"""Out-of-memory detection on every backend, and releasing a failed call's memory."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
import torch

from memscope import is_oom_error
from memscope.oom import (
    CaughtOom,
    call_catching_oom,
    call_catching_oom_async,
    reclaim_memory,
    release_exception_frames,
)
from memscope.testing import GiB, MiB, RecordingManager, oom_error

# Message shapes as the backends print them (figures invented). -------------------------

POSITIVES: list[tuple[str, BaseException]] = [
    (
        "CUDA caching allocator, older torch",
        RuntimeError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; "
            "19.80 GiB already allocated; 1.12 GiB free; 21.02 GiB reserved in total by "
            "PyTorch) If reserved memory is >> allocated memory try setting "
            "max_split_size_mb to avoid fragmentation.  See documentation for Memory "
            "Management and PYTORCH_CUDA_ALLOC_CONF"
        ),
    ),
    (
        "CUDA caching allocator, torch.OutOfMemoryError",
        torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of "
            "15.77 GiB of which 802.31 MiB is free. Process 4242 has 14.97 GiB memory in use. "
            "Of the allocated memory 14.20 GiB is allocated by PyTorch, and 391.12 MiB is "
            "reserved by PyTorch but unallocated."
        ),
    ),
    ("torch.OutOfMemoryError by type alone", torch.OutOfMemoryError("allocation refused")),
    ("torch.cuda.OutOfMemoryError by type", torch.cuda.OutOfMemoryError("")),
    (
        "CUDA driver",
        RuntimeError(
            "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported "
            "at some other API call, so the stacktrace below might be incorrect.\nFor "
            "debugging consider passing CUDA_LAUNCH_BLOCKING=1"
        ),
    ),
    ("CUDA driver, older spacing", RuntimeError("CUDA error:out of memory")),
    (
        "CUDA driver, runtime status name",
        RuntimeError("CUDA error: out of memory. Search for `cudaErrorMemoryAllocation'"),
    ),
    (
        "ROCm caching allocator",
        torch.OutOfMemoryError(
            "HIP out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total capacity of "
            "15.98 GiB of which 96.00 MiB is free. Of the allocated memory 14.71 GiB is "
            "allocated by PyTorch, and 611.50 MiB is reserved by PyTorch but unallocated. If "
            "reserved but unallocated memory is large try setting "
            "PYTORCH_HIP_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
        ),
    ),
    (
        "ROCm driver",
        RuntimeError(
            "HIP error: out of memory\nSearch for `hipErrorOutOfMemory' in the HIP "
            "documentation for more information."
        ),
    ),
    (
        "Intel XPU",
        RuntimeError(
            "XPU out of memory. Tried to allocate 3.42 GiB (GPU 0; 15.56 GiB total capacity; "
            "11.80 GiB already allocated; 11.90 GiB reserved in total by PyTorch)"
        ),
    ),
    (
        "Ascend NPU",
        RuntimeError(
            "NPU out of memory. Tried to allocate 88.00 MiB (NPU 1; 60.96 GiB total capacity; "
            "58.10 GiB already allocated; 58.10 GiB current active; 12.31 MiB free; 59.87 GiB "
            "reserved in total by PyTorch)"
        ),
    ),
    (
        "Apple MPS",
        RuntimeError(
            "MPS backend out of memory (MPS allocated: 17.95 GB, other allocations: 1.02 GB, "
            "max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool. Use "
            "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory "
            "allocations (may cause system failure)."
        ),
    ),
    (
        "cuDNN workspace, reported as not supported",
        RuntimeError(
            "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in "
            "a non-contiguous input."
        ),
    ),
    ("cuDNN allocation", RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")),
    (
        "cuBLAS allocation",
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ),
    (
        "cuSOLVER allocation",
        RuntimeError(
            "cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate(handle)`"
        ),
    ),
    ("cuFFT allocation", RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED")),
    (
        "CPU allocator, Linux",
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate "
            "memory)"
        ),
    ),
    (
        "CPU allocator, Windows",
        RuntimeError(
            "[enforce fail at C:\\actions-runner\\c10\\core\\impl\\alloc_cpu.cpp:81] data. "
            "DefaultCPUAllocator: not enough memory: you tried to allocate 3221225472 bytes."
        ),
    ),
    ("Python's MemoryError", MemoryError()),
]

if hasattr(torch, "AcceleratorError"):
    POSITIVES.append(
        ("CUDA driver, torch.AcceleratorError", torch.AcceleratorError("CUDA error: out of memory"))
    )


class _CustomRuntimeError(RuntimeError):
    """A backend's own RuntimeError subclass."""


POSITIVES.append(("RuntimeError subclass", _CustomRuntimeError("XPU out of memory.")))

NEGATIVES: list[tuple[str, BaseException]] = [
    (
        "device-side assert",
        RuntimeError(
            "CUDA error: device-side assert triggered\nCUDA kernel errors might be "
            "asynchronously reported at some other API call"
        ),
    ),
    (
        "illegal memory access",
        RuntimeError("CUDA error: an illegal memory access was encountered"),
    ),
    ("misaligned address", RuntimeError("CUDA error: misaligned address")),
    ("index out of range", IndexError("index out of range in self")),
    ("RuntimeError out of range", RuntimeError("index 7 is out of bounds for dimension 0")),
    (
        "ValueError about memory",
        ValueError("not enough memory budget for cache_size=4096; lower it"),
    ),
    ("ValueError quoting an OOM message", ValueError("CUDA out of memory")),
    (
        "devices mixed up",
        RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            "cuda:0 and cpu!"
        ),
    ),
    ("cuDNN execution failure", RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")),
    (
        "cuBLAS execution failure",
        RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"),
    ),
    (
        "MPS operator missing",
        NotImplementedError(
            "The operator 'aten::upsample_bicubic2d.out' is not currently implemented for "
            "the MPS device."
        ),
    ),
    ("KeyboardInterrupt", KeyboardInterrupt()),
    ("SystemExit", SystemExit(1)),
    ("CancelledError", asyncio.CancelledError()),
    ("plain RuntimeError", RuntimeError("something else went wrong")),
]


@pytest.mark.parametrize(
    "error", [error for _, error in POSITIVES], ids=[label for label, _ in POSITIVES]
)
def test_out_of_memory_errors_are_recognised(error: BaseException) -> None:
    """Every backend's out-of-memory error, by type or by message, is an OOM."""
    assert is_oom_error(error) is True


@pytest.mark.parametrize(
    "error", [error for _, error in NEGATIVES], ids=[label for label, _ in NEGATIVES]
)
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    """Other device errors, errors that merely mention memory, and interrupts are not."""
    assert is_oom_error(error) is False


def test_genuine_cpu_allocator_failure_is_recognised() -> None:
    """The error this torch really raises when the CPU allocator fails is an OOM."""
    failure: BaseException | None = None
    try:
        torch.empty(1 << 62, dtype=torch.uint8)
    except RuntimeError as error:
        failure = error
    assert failure is not None
    assert is_oom_error(failure) is True


# Re-wrapped errors ------------------------------------------------------------------------


def _raised(make: Any) -> BaseException:
    try:
        make()
    except BaseException as error:
        return error
    raise AssertionError("nothing was raised")


def _raise_cuda_oom() -> None:
    raise oom_error("cuda", tried=20 * MiB)


def test_oom_as_explicit_cause_is_recognised() -> None:
    """``raise Wrapper(...) from oom`` is an OOM."""

    def wrap() -> None:
        try:
            _raise_cuda_oom()
        except RuntimeError as error:
            raise ValueError("inference failed") from error

    assert is_oom_error(_raised(wrap)) is True


def test_oom_as_implicit_context_is_recognised() -> None:
    """An error raised while handling an OOM is an OOM."""

    def wrap() -> None:
        try:
            _raise_cuda_oom()
        except RuntimeError:
            raise LookupError("step failed")  # noqa: B904 - the implicit context is the point

    assert is_oom_error(_raised(wrap)) is True


def test_oom_deep_in_the_chain_is_recognised() -> None:
    """The chain is followed through several wrappers."""
    innermost = RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")
    middle = ValueError("middle")
    middle.__cause__ = innermost
    outer = TypeError("outer")
    outer.__context__ = middle
    assert is_oom_error(outer) is True


def test_suppressed_context_is_not_followed() -> None:
    """``raise ... from None`` hides the OOM on purpose, so the error is not an OOM."""

    def wrap() -> None:
        try:
            _raise_cuda_oom()
        except RuntimeError:
            raise ValueError("bad input") from None

    assert is_oom_error(_raised(wrap)) is False


def test_chain_without_oom_is_not_out_of_memory() -> None:
    """Wrapped errors that are not OOMs stay not OOMs."""
    inner = RuntimeError("CUDA error: device-side assert triggered")
    outer = ValueError("wrapped")
    outer.__cause__ = inner
    assert is_oom_error(outer) is False


def test_cyclic_chain_terminates() -> None:
    """A chain that loops back on itself is walked once and answers False."""
    first = ValueError("first")
    second = TypeError("second")
    first.__context__ = second
    second.__context__ = first
    assert is_oom_error(first) is False


def test_interrupt_raised_while_handling_oom_is_not_out_of_memory() -> None:
    """Ctrl-C during an OOM's handling must never be retried as an OOM."""
    interrupt = KeyboardInterrupt()
    interrupt.__context__ = torch.OutOfMemoryError("CUDA out of memory.")
    assert is_oom_error(interrupt) is False


def test_unprintable_error_is_not_out_of_memory() -> None:
    """An error whose ``str()`` fails is answered, not re-raised."""

    class UnprintableError(RuntimeError):
        def __str__(self) -> str:
            raise ValueError("no")

    assert is_oom_error(UnprintableError()) is False


# Releasing a failed call's memory ------------------------------------------------------


def _failing_call(references: list[weakref.ref[torch.Tensor]]) -> None:
    activations = torch.empty(1024)
    references.append(weakref.ref(activations))
    raise oom_error("cuda", tried=8 * GiB)


def test_a_held_exception_pins_the_failed_calls_tensors() -> None:
    """The trap itself: while the exception is alive, its traceback keeps the tensor alive."""
    references: list[weakref.ref[torch.Tensor]] = []
    outcome = call_catching_oom(_failing_call, references)
    assert isinstance(outcome, CaughtOom)
    gc.collect()
    assert references[0]() is not None


def test_release_frees_the_failed_calls_tensors_while_the_error_lives() -> None:
    """After release_exception_frames, the tensor is gone even though the error is held."""
    references: list[weakref.ref[torch.Tensor]] = []
    outcome = call_catching_oom(_failing_call, references)
    assert isinstance(outcome, CaughtOom)
    release_exception_frames(outcome.error)
    assert references[0]() is None
    assert "Tried to allocate 8.0 GiB" in str(outcome.error)
    assert outcome.error.__traceback__ is None


def test_release_detaches_the_chain_but_keeps_notes() -> None:
    """Cause and context are dropped; the message and notes stay."""
    error = _raised(_wrap_oom)
    error.add_note("keep me")
    release_exception_frames(error)
    assert error.__cause__ is None
    assert error.__context__ is None
    assert error.__notes__ == ["keep me"]


def _wrap_oom() -> None:
    try:
        _raise_cuda_oom()
    except RuntimeError as error:
        raise ValueError("wrapped") from error


def test_release_leaves_a_callers_exception_untouched() -> None:
    """An exception the caller is handling, chained as context, keeps its traceback."""
    seen: dict[str, Any] = {}
    try:
        raise KeyError("the caller's own error")
    except KeyError as callers_error:
        outcome = call_catching_oom(_raise_cuda_oom)
        assert isinstance(outcome, CaughtOom)
        seen["context"] = outcome.error.__context__
        release_exception_frames(outcome.error)
        seen["callers_error"] = callers_error
    assert isinstance(seen["callers_error"], KeyError)
    assert seen["context"] is seen["callers_error"]
    assert seen["callers_error"].__traceback__ is not None
    assert outcome.error.__context__ is None


def test_reclaim_memory_collects_then_clears(monkeypatch: pytest.MonkeyPatch) -> None:
    """gc.collect() runs first, then the manager's clear_cache()."""
    manager = RecordingManager()
    real_collect = gc.collect

    def collect(*args: int) -> int:
        manager.events.append("gc.collect")
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", collect)
    assert reclaim_memory(manager) is True
    assert manager.events == ["gc.collect", "clear_cache"]


def test_reclaim_memory_never_raises(memscope_log: pytest.LogCaptureFixture) -> None:
    """A failing cache clear is logged as a warning and reported as False."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("driver gone")
    assert reclaim_memory(manager) is False
    assert any(record.levelno == logging.WARNING for record in memscope_log.records)


# Catching without raising --------------------------------------------------------------


def test_call_catching_oom_returns_the_result() -> None:
    """A call that works gives its result."""
    assert call_catching_oom(lambda a, b=0: a + b, 2, b=3) == 5


def test_call_catching_oom_returns_the_oom() -> None:
    """An OOM comes back wrapped, the original error object inside."""
    outcome = call_catching_oom(_raise_cuda_oom)
    assert isinstance(outcome, CaughtOom)
    assert is_oom_error(outcome.error)


def test_call_catching_oom_lets_other_errors_through() -> None:
    """Other exceptions, interrupts included, propagate unchanged."""
    error = ValueError("bad")

    def fail() -> None:
        raise error

    with pytest.raises(ValueError, match="bad") as info:
        call_catching_oom(fail)
    assert info.value is error

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_catching_oom(interrupt)


def test_call_catching_oom_async() -> None:
    """The async form awaits the call and catches OOMs the same way."""

    async def works(value: int) -> int:
        return value

    async def fails() -> None:
        _raise_cuda_oom()

    async def bad() -> None:
        raise ValueError("bad")

    assert asyncio.run(call_catching_oom_async(works, 7)) == 7
    assert isinstance(asyncio.run(call_catching_oom_async(fails)), CaughtOom)
    with pytest.raises(ValueError, match="bad"):
        asyncio.run(call_catching_oom_async(bad))


def test_a_new_backend_brings_its_own_oom_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out-of-memory messages live with the backends: registering one adds its messages."""
    from memscope.backends import base

    class FutureBackend(base.DeviceBackend):
        device_type = "future"
        detection_priority = 500
        oom_messages = (r"FPU ran dry",)

        @classmethod
        def is_available(cls) -> bool:
            return False

        def empty_cache(self) -> None:
            pass

        def read_memory(self) -> base.MemoryReading:
            return base.MemoryReading()

    error = RuntimeError("FPU ran dry while allocating 2 GiB")
    assert not is_oom_error(error)
    monkeypatch.setattr(base, "_BACKENDS", [*base._BACKENDS])
    base.register_backend(FutureBackend)
    assert is_oom_error(error)
