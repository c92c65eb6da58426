"""``@adaptive_batch``: supplied size, shrinking on OOM, memory freed first, memory of sizes."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch

from memscope import (
    BatchSizeExhaustedError,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemscopeError,
    _context as context,
    adaptive_batch,
    is_oom_error,
    managed_batch,
)
from memscope.oom import AdaptiveBatchFunction, AdaptiveBatchState
from memscope.testing import FakeDevice, GiB, MiB, RecordingManager, oom_error


@pytest.fixture
def own_default_managers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default managers made in the test (bound to a fake device) do not outlive it."""
    monkeypatch.setattr(context, "_shared_managers", {})


def cuda_oom(batch_size: int) -> BaseException:
    """The CUDA allocator's error for a batch of ``batch_size`` items of 1 MiB each."""
    return oom_error("cuda", tried=batch_size * MiB)


def failing_above(
    limit: int, calls: list[int], raised: list[BaseException] | None = None
) -> Callable[[int], int]:
    """A step that records its size (and each error it raises in ``raised``) and runs out of
    memory above ``limit``."""

    def step(batch_size: int) -> int:
        calls.append(batch_size)
        if batch_size > limit:
            error = cuda_oom(batch_size)
            if raised is not None:
                raised.append(error)
            raise error
        return batch_size

    return step


# Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"start": 0}, InvalidArgumentError, "start"),
        ({"start": -4}, InvalidArgumentError, "start"),
        ({"start": True}, InvalidArgumentTypeError, "start"),
        ({"start": 8.0}, InvalidArgumentTypeError, "start"),
        ({"start": "8"}, InvalidArgumentTypeError, "start"),
        ({"start": 8, "min_size": 0}, InvalidArgumentError, "min_size"),
        ({"start": 8, "min_size": 9}, InvalidArgumentError, "min_size must be <= start"),
        ({"start": 8, "min_size": False}, InvalidArgumentTypeError, "min_size"),
        ({"start": 8, "factor": 0}, InvalidArgumentError, "factor"),
        ({"start": 8, "factor": 1}, InvalidArgumentError, "factor"),
        ({"start": 8, "factor": 1.5}, InvalidArgumentError, "factor"),
        ({"start": 8, "factor": -0.5}, InvalidArgumentError, "factor"),
        ({"start": 8, "factor": float("nan")}, InvalidArgumentError, "factor"),
        ({"start": 8, "factor": True}, InvalidArgumentTypeError, "factor"),
        ({"start": 8, "factor": "0.5"}, InvalidArgumentTypeError, "factor"),
        ({"start": 8, "regrow_after": 0}, InvalidArgumentError, "regrow_after"),
        ({"start": 8, "regrow_after": True}, InvalidArgumentTypeError, "regrow_after"),
        ({"start": 8, "regrow_after": 2.0}, InvalidArgumentTypeError, "regrow_after"),
        ({"start": 8, "manager": "cuda"}, InvalidArgumentTypeError, "manager"),
        (
            {"start": 8, "manager": RecordingManager(), "device": "cpu"},
            InvalidArgumentError,
            "not both",
        ),
        ({"start": 8, "device": "nonsense"}, DeviceUnavailableError, "nonsense"),
    ],
)
def test_bad_options_fail_when_decorating(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Every option is checked at decoration time, with the parameter named."""
    with pytest.raises(error, match=match):
        adaptive_batch(**options)


def test_errors_are_the_builtin_kinds() -> None:
    """Bad values are ValueErrors and bad types TypeErrors, as callers expect."""
    with pytest.raises(ValueError, match="start"):
        adaptive_batch(start=0)
    with pytest.raises(TypeError, match="start"):
        adaptive_batch(start="8")  # type: ignore[arg-type]


def test_decorator_without_start_is_a_clear_error() -> None:
    """``@adaptive_batch`` and ``@adaptive_batch()`` say that start is needed."""
    with pytest.raises(InvalidArgumentTypeError, match=r"@adaptive_batch\(start=\.\.\.\)"):
        adaptive_batch(lambda batch_size: batch_size)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError, match="first batch size"):
        adaptive_batch()


def test_function_without_batch_parameter_is_rejected() -> None:
    """A function that cannot take the size positionally first is refused when decorated."""
    decorate = adaptive_batch(start=4)
    with pytest.raises(InvalidArgumentTypeError, match="first parameter is the batch size"):
        decorate(lambda: None)  # type: ignore[arg-type, misc]
    with pytest.raises(InvalidArgumentTypeError, match="first parameter is the batch size"):

        @decorate  # type: ignore[arg-type]
        def keyword_only(*, batch_size: int) -> None:
            pass


def test_generator_function_is_rejected() -> None:
    """A generator cannot be retried half-way, so it cannot be decorated."""

    def generate(batch_size: int) -> Any:
        yield batch_size

    with pytest.raises(InvalidArgumentTypeError, match="generator"):
        adaptive_batch(start=4)(generate)


def test_decorating_touches_no_device(own_default_managers: None) -> None:
    """Decorating calls no torch function; the first call makes the manager."""
    with FakeDevice("cuda") as fake:

        @adaptive_batch(start=4, device="cuda")
        def step(batch_size: int) -> int:
            return batch_size

        assert fake.calls == []
        assert step() == 4
        assert fake.count("torch.cuda.is_available") >= 1


# The supplied batch size ----------------------------------------------------------------


def test_callers_leave_the_batch_size_out() -> None:
    """The first parameter is supplied; other arguments pass through."""

    @adaptive_batch(start=16, device="cpu")
    def step(batch_size: int, images: list[str], *, scale: float = 1.0) -> tuple[Any, ...]:
        return batch_size, images, scale

    assert step(["a"], scale=2.0) == (16, ["a"], 2.0)


def test_signature_drops_the_batch_size() -> None:
    """inspect.signature shows the function as callers call it."""

    @adaptive_batch(start=16, device="cpu")
    def step(batch_size: int, images: list[str], *, scale: float = 1.0) -> None:
        pass

    assert (
        str(inspect.signature(step)) == "(images: 'list[str]', *, scale: 'float' = 1.0) -> 'None'"
    )


def test_passing_the_batch_size_by_name_is_a_type_error() -> None:
    """``batch_size=`` from the caller is refused with a message that explains."""

    @adaptive_batch(start=16, device="cpu")
    def step(batch_size: int, images: list[str]) -> int:
        return batch_size

    with pytest.raises(TypeError, match="adaptive_batch supplies the batch size") as info:
        step(["a"], batch_size=4)  # type: ignore[call-arg]
    assert isinstance(info.value, MemscopeError)


def test_passing_the_batch_size_positionally_is_a_type_error() -> None:
    """One positional argument too many means the caller passed the size."""

    @adaptive_batch(start=16, device="cpu")
    def step(batch_size: int, images: list[str]) -> int:
        return batch_size

    with pytest.raises(TypeError, match="besides the batch size 'batch_size'"):
        step(4, ["a"])  # type: ignore[call-arg, arg-type]


def test_star_args_functions_are_not_arity_checked() -> None:
    """With ``*args`` any number of positional arguments is the caller's business."""

    @adaptive_batch(start=2, device="cpu")
    def step(batch_size: int, *images: str) -> tuple[Any, ...]:
        return (batch_size, *images)

    assert step("a", "b", "c") == (2, "a", "b", "c")


class Colorizer:
    """Methods of every kind, decorated."""

    def __init__(self, name: str) -> None:
        self.name = name

    @adaptive_batch(start=8, device="cpu")
    def method(self, batch_size: int, images: list[str]) -> tuple[str, int, list[str]]:
        return self.name, batch_size, images

    @classmethod
    @adaptive_batch(start=8, device="cpu")
    def inner_classmethod(cls, batch_size: int, images: list[str]) -> tuple[str, int]:
        return cls.__name__, batch_size

    @adaptive_batch(start=8, device="cpu")
    @classmethod
    def outer_classmethod(cls, batch_size: int, images: list[str]) -> tuple[str, int]:
        return cls.__name__, batch_size

    @adaptive_batch(start=8, device="cpu")
    @staticmethod
    def static(batch_size: int, images: list[str]) -> int:
        return batch_size


def test_methods_get_the_size_after_self() -> None:
    """Methods, classmethods and staticmethods all receive the size after self/cls."""
    colorizer = Colorizer("c")
    assert colorizer.method(["x"]) == ("c", 8, ["x"])
    assert Colorizer.method(colorizer, ["x"]) == ("c", 8, ["x"])
    assert Colorizer.inner_classmethod(["x"]) == ("Colorizer", 8)
    assert colorizer.outer_classmethod(["x"]) == ("Colorizer", 8)
    assert Colorizer.static(["x"]) == 8
    assert colorizer.static(["x"]) == 8


def test_method_signatures_drop_the_batch_size() -> None:
    """Bound and unbound method signatures leave the size out."""
    colorizer = Colorizer("c")
    assert list(inspect.signature(colorizer.method).parameters) == ["images"]
    assert list(inspect.signature(Colorizer.method).parameters) == ["self", "images"]
    assert list(inspect.signature(Colorizer.inner_classmethod).parameters) == ["images"]
    assert list(inspect.signature(Colorizer.outer_classmethod).parameters) == ["images"]
    assert list(inspect.signature(colorizer.static).parameters) == ["images"]


def test_method_called_with_the_batch_size_is_a_type_error() -> None:
    """The arity check knows about self."""
    with pytest.raises(TypeError, match="adaptive_batch supplies"):
        Colorizer("c").method(4, ["x"])  # type: ignore[call-arg, arg-type]


# Shrinking ---------------------------------------------------------------------------------


def test_size_shrinks_by_factor_until_it_fits() -> None:
    """32 -> 16 -> 8 -> 4 with the default factor, and the result of the call that worked."""
    calls: list[int] = []
    step = adaptive_batch(start=32, device="cpu")(failing_above(5, calls))
    assert step() == 4
    assert calls == [32, 16, 8, 4]
    state = step.adaptive_state
    assert (state.current_size, state.oom_count, state.reductions) == (4, 3, 3)
    assert state.sizes_tried == (32, 16, 8, 4)


def test_size_that_worked_is_remembered() -> None:
    """Later calls start at the size that worked."""
    calls: list[int] = []
    step = adaptive_batch(start=32, device="cpu")(failing_above(5, calls))
    step()
    calls.clear()
    step()
    step()
    assert calls == [4, 4]
    assert step.adaptive_state.successes == 3


def test_each_size_is_strictly_smaller_and_never_below_min_size() -> None:
    """A factor close to 1 still makes progress, and min_size is a floor."""
    calls: list[int] = []
    step = adaptive_batch(start=10, factor=0.9, min_size=3, device="cpu")(failing_above(3, calls))
    step()
    assert calls == [10, 9, 8, 7, 6, 5, 4, 3]


def test_exhausted_sizes_raise_a_clear_error_from_the_last_oom(own_default_managers: None) -> None:
    """When min_size fails too: BatchSizeExhaustedError naming the sizes, from the last OOM."""
    calls: list[int] = []
    raised: list[BaseException] = []
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=23 * GiB)
        step = adaptive_batch(start=32, min_size=6, device="cuda")(failing_above(5, calls, raised))
        with pytest.raises(BatchSizeExhaustedError) as info:
            step()
    error = info.value
    # The device reports its figures, so after 32 fails it probes: halfway to min_size=6 on
    # a log scale each time (the function's memory is not on the fake device, so nothing is
    # learned from the figures).
    assert calls == [32, 13, 8, 6]
    assert error.sizes_tried == (32, 13, 8, 6)
    assert "sizes tried: 32, 13, 8, 6" in str(error)
    assert "min_size=6" in str(error)
    # The cause is the error of the last attempt, at 6, traceback and all.
    assert error.__cause__ is raised[-1]
    assert "Tried to allocate 6.0 MiB" in str(error.__cause__)
    assert error.__cause__.__traceback__ is not None
    assert isinstance(error, RuntimeError)
    assert is_oom_error(error)
    (note,) = error.__notes__
    assert "memscope: out of memory on cuda:0" in note
    assert "allocated 23.0 GiB" in note
    assert "batch sizes tried: 32, 13, 8, 6" in note


def test_other_errors_pass_through_without_retry() -> None:
    """A non-OOM error propagates unchanged, after one call, and teaches nothing."""
    calls: list[int] = []
    failure = ValueError("bad image")

    @adaptive_batch(start=8, device="cpu")
    def step(batch_size: int) -> None:
        calls.append(batch_size)
        raise failure

    with pytest.raises(ValueError, match="bad image") as info:
        step()
    assert info.value is failure
    assert calls == [8]
    assert step.adaptive_state.oom_count == 0


def test_interrupts_are_never_retried() -> None:
    """KeyboardInterrupt propagates at once."""
    calls: list[int] = []

    @adaptive_batch(start=8, device="cpu")
    def step(batch_size: int) -> None:
        calls.append(batch_size)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        step()
    assert calls == [8]


def test_genuine_cpu_allocator_oom_is_recovered() -> None:
    """A real allocation failure from torch's CPU allocator shrinks the size."""

    @adaptive_batch(start=8, device="cpu")
    def allocate(batch_size: int) -> int:
        # Beyond any address space while the batch is large: a genuine allocator failure.
        block = torch.empty((1 << 61) if batch_size > 2 else 16, dtype=torch.uint8)
        return batch_size + 0 * int(block.numel() > 0)

    assert allocate() == 2
    assert allocate.adaptive_state.reductions == 2


def test_log_says_what_happened(memscope_log: pytest.LogCaptureFixture) -> None:
    """Each reduction is a warning naming the function and both sizes."""
    step = adaptive_batch(start=8, device="cpu")(failing_above(4, []))
    step()
    warnings = [r.getMessage() for r in memscope_log.records if r.levelno == logging.WARNING]
    assert warnings == ["failing_above.<locals>.step: out of memory at batch size 8; retrying at 4"]


# Freeing memory before the retry ---------------------------------------------------------


def test_tensor_of_the_failed_attempt_is_freed_when_the_retry_starts() -> None:
    """The traceback trap: the failed call's local tensor is gone before the next call."""
    references: list[weakref.ref[torch.Tensor]] = []
    alive_when_retrying: list[bool] = []

    @adaptive_batch(start=2, manager=RecordingManager())
    def step(batch_size: int) -> int:
        if references:
            alive_when_retrying.append(references[-1]() is not None)
        activations = torch.ones(4096)
        references.append(weakref.ref(activations))
        if batch_size > 1:
            raise cuda_oom(batch_size)
        return int(activations.sum().item())

    assert step() == 4096
    assert alive_when_retrying == [False]


def test_tensor_in_a_rewrapped_oom_is_freed_before_the_cache_is_cleared() -> None:
    """A tensor pinned by the inner frame of a re-wrapped OOM is freed before clear_cache."""
    references: list[weakref.ref[torch.Tensor]] = []
    manager = RecordingManager()
    freed_at_clear: list[bool] = []
    real_clear = manager.clear_cache

    def clear_cache() -> None:
        freed_at_clear.append(references[0]() is None)
        real_clear()

    manager.clear_cache = clear_cache  # type: ignore[method-assign]

    def model_forward(batch_size: int) -> None:
        hidden = torch.ones(4096)
        references.append(weakref.ref(hidden))
        raise cuda_oom(batch_size)

    @adaptive_batch(start=2, manager=manager)
    def step(batch_size: int) -> int:
        if batch_size > 1:
            try:
                model_forward(batch_size)
            except RuntimeError as error:
                raise ValueError("forward failed") from error
        return batch_size

    assert step() == 1
    assert freed_at_clear == [True]


def test_memory_is_collected_then_cleared_between_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between attempts: gc.collect(), then the manager's clear_cache(), then the retry."""
    manager = RecordingManager()
    real_collect = gc.collect

    def collect(*args: int) -> int:
        manager.events.append("gc.collect")
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", collect)

    @adaptive_batch(start=4, manager=manager)
    def step(batch_size: int) -> int:
        manager.events.append(f"attempt {batch_size}")
        if batch_size > 1:
            raise cuda_oom(batch_size)
        return batch_size

    step()
    assert manager.events == [
        "attempt 4",
        "gc.collect",
        "clear_cache",
        "attempt 2",
        "gc.collect",
        "clear_cache",
        "attempt 1",
    ]


def test_failing_cache_clear_does_not_stop_the_retry(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """Cleanup failing is logged; the retry still happens and its result comes back."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("driver gone")
    step = adaptive_batch(start=4, manager=manager)(failing_above(2, []))
    assert step() == 2
    assert any(r.levelno == logging.WARNING and r.exc_info for r in memscope_log.records)


def test_default_manager_clears_the_devices_cache(own_default_managers: None) -> None:
    """Without a manager, the device's default manager clears the device's cache."""
    with FakeDevice("cuda") as fake:
        step = adaptive_batch(start=4, device="cuda")(failing_above(2, []))
        step()
    assert fake.count("torch.cuda.empty_cache") == 1


def test_inside_managed_batch_the_batchs_manager_is_used() -> None:
    """Calls inside managed_batch clear the cache through the batch's manager."""
    manager = RecordingManager()
    step = adaptive_batch(start=4)(failing_above(2, []))
    # A cadence that never comes due: the only cleanup is the recovery's.
    with managed_batch(manager=manager, every=100):
        manager.events.clear()
        step()
        assert manager.events == ["clear_cache"]


# What is learned --------------------------------------------------------------------------


def test_state_is_updated_in_place_and_can_be_reset() -> None:
    """The state object is the same before and after; reset() starts over."""
    step = adaptive_batch(start=8, device="cpu")(failing_above(2, []))
    state = step.adaptive_state
    assert isinstance(state, AdaptiveBatchState)
    step()
    assert step.adaptive_state is state
    assert state.current_size == 2
    state.reset()
    assert (state.current_size, state.oom_count, state.sizes_tried) == (8, 0, ())


def test_decorated_functions_are_adaptive_batch_functions_at_run_time() -> None:
    """isinstance() agrees with the types: functions and bound methods are
    AdaptiveBatchFunctions, with the state they learn in."""
    step = adaptive_batch(start=8, device="cpu")(failing_above(8, []))
    assert isinstance(step, AdaptiveBatchFunction)
    assert isinstance(Colorizer("c").method, AdaptiveBatchFunction)
    assert not isinstance(failing_above(8, []), AdaptiveBatchFunction)


def test_each_decoration_learns_separately() -> None:
    """The same function decorated twice keeps two states."""
    calls: list[int] = []
    function = failing_above(2, calls)
    small = adaptive_batch(start=8, device="cpu")(function)
    large = adaptive_batch(start=16, device="cpu")(function)
    small()
    assert large.adaptive_state.current_size == 16
    assert small.adaptive_state.current_size == 2


def test_methods_share_what_they_learn_across_instances() -> None:
    """For a method, the state belongs to the function, shared by all instances."""

    class Model:
        @adaptive_batch(start=8, device="cpu")
        def run(self, batch_size: int) -> int:
            if batch_size > 2:
                raise cuda_oom(batch_size)
            return batch_size

    Model().run()
    assert Model().run.adaptive_state.current_size == 2
    assert Model.run.adaptive_state.current_size == 2


def test_concurrent_calls_share_the_size_safely() -> None:
    """Many threads at once: counts add up and everyone ends at the size that fits."""
    lock = threading.Lock()
    ooms: list[int] = []
    barrier = threading.Barrier(8)

    @adaptive_batch(start=64, device="cpu")
    def step(batch_size: int) -> int:
        if batch_size > 4:
            with lock:
                ooms.append(batch_size)
            raise cuda_oom(batch_size)
        return batch_size

    results: list[int] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(25):
            value = step()
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = step.adaptive_state
    assert results == [4] * 200
    assert state.successes == 200
    assert state.oom_count == len(ooms)
    assert state.current_size == 4
    assert state.reductions == 4


# Regrowth ----------------------------------------------------------------------------------


class Memory:
    """How large a batch fits right now, changed by the test."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.calls: list[int] = []

    def step(self, batch_size: int) -> int:
        self.calls.append(batch_size)
        if batch_size > self.fits:
            raise cuda_oom(batch_size)
        return batch_size


def test_no_regrowth_by_default() -> None:
    """Without regrow_after the size never grows back."""
    memory = Memory(fits=4)
    step = adaptive_batch(start=16, device="cpu")(memory.step)
    step()
    memory.fits = 16
    for _ in range(10):
        assert step() == 4


def test_size_regrows_after_a_run_of_successes() -> None:
    """After regrow_after successes at a reduced size, a larger one is tried and kept."""
    memory = Memory(fits=4)
    step = adaptive_batch(start=16, regrow_after=2, device="cpu")(memory.step)
    assert step() == 4
    memory.fits = 16
    memory.calls.clear()
    results = [step() for _ in range(6)]
    # The call that worked at 4 already counts: one more success, then 8; two at 8 (the
    # call that grew counts), then 16.
    assert results == [4, 8, 8, 16, 16, 16]
    state = step.adaptive_state
    assert (state.current_size, state.regrowths) == (16, 2)


def test_regrowth_never_exceeds_start() -> None:
    """Growing stops at start."""
    memory = Memory(fits=3)
    step = adaptive_batch(start=12, regrow_after=1, device="cpu")(memory.step)
    step()
    memory.fits = 100
    results = [step() for _ in range(8)]
    assert max(results) == 12
    assert results[-3:] == [12, 12, 12]


def test_failed_regrowth_falls_back_and_waits_twice_as_long() -> None:
    """A regrowth that runs out of memory returns to the size that worked, within the call,
    and the next attempt at that size waits twice as many successes."""
    memory = Memory(fits=4)
    step = adaptive_batch(start=8, regrow_after=2, device="cpu")(memory.step)
    step()  # 8 fails, 4 works
    memory.calls.clear()
    results = [step() for _ in range(10)]
    assert results == [4] * 10
    # Two successes (the first call's included), then 8 is tried and fails within the second
    # call, which still succeeds at 4; four successes later, 8 again; next time, eight.
    assert memory.calls == [4, 8, 4, 4, 4, 4, 8, 4, 4, 4, 4, 4]
    state = step.adaptive_state
    assert (state.failed_regrowths, state.current_size, state.reductions) == (2, 4, 1)


# Async ---------------------------------------------------------------------------------


def test_async_function_shrinks_and_stays_async() -> None:
    """``async def`` functions stay coroutine functions and shrink the same way."""
    calls: list[int] = []

    @adaptive_batch(start=16, device="cpu")
    async def step(batch_size: int, label: str) -> str:
        calls.append(batch_size)
        await asyncio.sleep(0)
        if batch_size > 4:
            raise cuda_oom(batch_size)
        return f"{label}:{batch_size}"

    assert inspect.iscoroutinefunction(step)
    assert list(inspect.signature(step).parameters) == ["label"]
    assert asyncio.run(step("x")) == "x:4"
    assert calls == [16, 8, 4]


def test_async_misuse_fails_at_the_call_not_the_await() -> None:
    """Passing the size to an async function raises before any coroutine exists."""

    @adaptive_batch(start=16, device="cpu")
    async def step(batch_size: int) -> int:
        return batch_size

    with pytest.raises(TypeError, match="adaptive_batch supplies"):
        step(batch_size=3)  # type: ignore[call-arg, unused-coroutine]


def test_async_tensor_of_failed_attempt_is_freed_before_retry() -> None:
    """The traceback trap is avoided for coroutines too."""
    references: list[weakref.ref[torch.Tensor]] = []
    alive_when_retrying: list[bool] = []

    @adaptive_batch(start=2, manager=RecordingManager())
    async def step(batch_size: int) -> int:
        if references:
            alive_when_retrying.append(references[-1]() is not None)
        activations = torch.ones(4096)
        references.append(weakref.ref(activations))
        await asyncio.sleep(0)
        if batch_size > 1:
            raise cuda_oom(batch_size)
        return batch_size

    assert asyncio.run(step()) == 1
    assert alive_when_retrying == [False]


def test_async_exhaustion_raises_the_clear_error() -> None:
    """The async form raises BatchSizeExhaustedError too."""

    @adaptive_batch(start=2, device="cpu")
    async def step(batch_size: int) -> None:
        raise cuda_oom(batch_size)

    with pytest.raises(BatchSizeExhaustedError, match="sizes tried: 2, 1"):
        asyncio.run(step())
