"""``@auto_clear``: forms, cadence, transparency, binding, async, generators, threads."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Generator
from typing import Any

import pytest

from memscope import (
    ClearAlways,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    auto_clear,
    managed_batch,
)
from memscope.testing import FakeDevice, GiB, RecordingManager


def cleanup_pairs(events: list[str]) -> int:
    """How many clear_cache + trigger_gc_if_needed cleanups the events hold."""
    assert events.count("clear_cache") == events.count("trigger_gc_if_needed")
    return events.count("clear_cache")


# Forms and options ---------------------------------------------------------------------


def test_bare_form_uses_default_every_of_five() -> None:
    """Outside a batch, ``@auto_clear`` cleans up after every fifth call."""
    cleanups_after: list[int] = []

    @auto_clear
    def work() -> None:
        pass

    for call in range(1, 11):
        before = work.cleanup_stats.cleanups
        work()
        if work.cleanup_stats.cleanups > before:
            cleanups_after.append(call)
    assert cleanups_after == [5, 10]
    assert work.cleanup_stats.calls == 10


def test_empty_call_form_behaves_like_bare_form() -> None:
    """``@auto_clear()`` is the same as ``@auto_clear``."""

    @auto_clear()
    def work() -> None:
        pass

    for _ in range(10):
        work()
    assert work.cleanup_stats.cleanups == 2


@pytest.mark.parametrize("every", [1, 3, 7])
def test_every_sets_the_cadence(every: int) -> None:
    """With ``every=N`` the cleanup runs after calls N, 2N, ... and never in between."""
    events: list[str] = []
    manager = RecordingManager(events=events)

    @auto_clear(every=every, manager=manager)
    def work(index: int) -> None:
        events.append(f"call {index}")

    for index in range(1, 22):
        work(index)
    cleaned_after = [
        int(events[position - 1].split()[1])
        for position, event in enumerate(events)
        if event == "clear_cache"
    ]
    assert cleaned_after == list(range(every, 22, every))
    assert cleanup_pairs(events) == 21 // every


def test_every_option_is_honoured_with_a_fake_cuda_device() -> None:
    """Cadence arithmetic against the fake device: every=4 over 10 calls empties the cache
    twice, and each threshold check reads memory on the manager's device."""
    with FakeDevice("cuda", device_count=2, total=8 * GiB) as fake:
        fake.set_usage(0.5, index=1)
        manager = MemoryManager("cuda:1")

        @auto_clear(every=4, manager=manager, cache_policy=ClearAlways())
        def work() -> None:
            pass

        fake.calls.clear()
        for _ in range(10):
            work()
    assert fake.count("torch.cuda.empty_cache") == 2
    assert [call.args for call in fake.calls_to("torch.cuda.mem_get_info")] == [(1,), (1,)]


def test_device_and_threshold_options_choose_the_default_manager() -> None:
    """Without a manager or batch, ``device`` and ``memory_threshold`` make the default one."""
    with FakeDevice("cuda", device_count=2, total=8 * GiB) as fake:
        fake.set_usage(0.65, index=1)

        @auto_clear(every=1, device="cuda:1", memory_threshold=0.6)
        def collects() -> None:
            pass

        @auto_clear(every=1, device="cuda:1", memory_threshold=0.7)
        def does_not_collect() -> None:
            pass

        collects()
        does_not_collect()
    assert collects.cleanup_stats.gc_runs == 1
    assert does_not_collect.cleanup_stats.gc_runs == 0
    assert {call.args for call in fake.calls_to("torch.cuda.mem_get_info")} == {(1,)}


def test_default_manager_is_shared_per_device_and_made_at_first_cleanup() -> None:
    """Decorating only checks that the device exists; the first cleanup makes one manager
    shared by all."""
    with FakeDevice("cuda") as fake:

        @auto_clear(every=1, device="cuda", cache_policy=ClearAlways())
        def first() -> None:
            pass

        @auto_clear(every=1, device="cuda", cache_policy=ClearAlways())
        def second() -> None:
            pass

        assert {call.function for call in fake.calls} <= {
            "torch.cuda.is_available",
            "torch.cuda.device_count",
        }
        first()
        second()
    assert fake.count("torch.cuda.empty_cache") == 2
    # One manager made: availability and the current device are asked once.
    assert fake.count("torch.cuda.current_device") == 1


@pytest.mark.parametrize("every", [0, -1])
def test_every_below_one_is_refused_when_decorating(every: int) -> None:
    """``every`` < 1 is a ValueError at decoration time, in both forms."""
    with pytest.raises(InvalidArgumentError, match=f"every must be an int >= 1, got {every}"):
        auto_clear(every=every)
    with pytest.raises(ValueError, match="every"):
        auto_clear(every=every)(lambda: None)


@pytest.mark.parametrize("every", [True, 2.0, "5", None])
def test_every_of_wrong_type_is_type_error(every: object) -> None:
    """A bool, float, string or None for ``every`` is a TypeError when decorating."""
    with pytest.raises(InvalidArgumentTypeError, match="every"):
        auto_clear(every=every)  # type: ignore[call-overload]


def test_bad_threshold_and_manager_are_refused_when_decorating() -> None:
    """A bad threshold, manager or enabled flag fails at decoration, naming the parameter."""
    with pytest.raises(ValueError, match="memory_threshold must be between 0 and 1"):
        auto_clear(memory_threshold=2)
    with pytest.raises(TypeError, match="manager"):
        auto_clear(manager="cuda")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="enabled"):
        auto_clear(enabled="yes")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="'gpu'"):
        auto_clear(device="gpu")


@pytest.mark.parametrize(
    ("name", "value"), [("device", "cpu"), ("memory_threshold", 0.5), ("memory_threshold", 0.8)]
)
def test_options_of_the_default_manager_are_refused_with_a_manager(
    name: str, value: object
) -> None:
    """With ``manager=``, ``device`` and ``memory_threshold`` (even the default's 0.8) would be
    ignored, so decorating refuses them, naming both, in both forms."""
    manager = MemoryManager("cpu")
    message = f"pass manager= or {name}=, not both: {name} belongs to the manager"
    with pytest.raises(InvalidArgumentError, match=message):
        auto_clear(manager=manager, **{name: value})
    with pytest.raises(InvalidArgumentError, match=message):
        auto_clear(lambda: None, manager=manager, **{name: value})
    assert auto_clear(manager=manager)(lambda: 7)() == 7


def test_decorating_an_async_generator_is_refused() -> None:
    """Async generator functions get a clear TypeError when decorated."""

    async def stream() -> Any:
        yield 1

    with pytest.raises(TypeError, match="async generator"):
        auto_clear(stream)


def test_enabled_false_passes_calls_straight_through() -> None:
    """``enabled=False`` keeps the decorator but does no cleanup and counts nothing."""
    manager = RecordingManager()

    @auto_clear(every=1, manager=manager, enabled=False)
    def work() -> int:
        return 3

    assert [work() for _ in range(3)] == [3, 3, 3]
    assert manager.events == []
    assert work.cleanup_stats.calls == 0


def test_enabled_callable_is_asked_at_every_call() -> None:
    """A callable ``enabled`` switches cleanup on and off between calls."""
    manager = RecordingManager()
    switch = {"on": False}

    @auto_clear(every=1, manager=manager, enabled=lambda: switch["on"])
    def work() -> None:
        pass

    work()
    assert manager.events == []
    switch["on"] = True
    work()
    assert cleanup_pairs(manager.events) == 1


# Transparency --------------------------------------------------------------------------


def test_result_comes_back_unchanged() -> None:
    """The decorated function's return value is returned as is."""
    marker = object()

    @auto_clear(every=1, manager=RecordingManager())
    def work() -> object:
        return marker

    assert work() is marker


def test_exception_is_the_same_object_with_its_traceback_intact() -> None:
    """The raised exception is the original object, and its traceback reaches its raise."""
    original = ValueError("bad image")

    @auto_clear(every=100, manager=RecordingManager())
    def work() -> None:
        raise original

    with pytest.raises(ValueError, match="bad image") as raised:
        work()
    assert raised.value is original
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert frames[-1] == "work"
    assert raised.value.__context__ is None


def test_a_call_that_raises_cleans_up_whatever_the_cadence() -> None:
    """A failing call cleans up at once even when the cadence is not due."""
    manager = RecordingManager()

    @auto_clear(every=100, manager=manager)
    def work() -> None:
        raise RuntimeError("out of luck")

    with pytest.raises(RuntimeError):
        work()
    assert manager.events == ["clear_cache", "trigger_gc_if_needed"]
    assert work.cleanup_stats.errors == 1
    assert work.cleanup_stats.cleanups == 1


def test_cleanup_runs_outside_the_except_block() -> None:
    """During cleanup no exception is being handled: the failed call's frame is not pinned
    by an active ``except`` clause."""
    seen: list[object] = []

    class Probe(RecordingManager):
        def clear_cache(self) -> None:
            seen.append(sys.exc_info()[1])
            super().clear_cache()

    @auto_clear(every=1, manager=Probe())
    def work() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        work()
    assert seen == [None]


def test_keyboard_interrupt_cleans_up_and_propagates() -> None:
    """A KeyboardInterrupt in the call still triggers cleanup and is not swallowed."""
    manager = RecordingManager()

    @auto_clear(every=100, manager=manager)
    def work() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work()
    assert cleanup_pairs(manager.events) == 1


def test_failing_cleanup_never_replaces_the_result(memscope_log: pytest.LogCaptureFixture) -> None:
    """A cleanup that raises is logged as a warning; the result still comes back."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("driver hiccup")

    @auto_clear(every=1, manager=manager)
    def work() -> str:
        return "colorized"

    assert work() == "colorized"
    warnings = [r for r in memscope_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "work" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None
    assert "driver hiccup" in str(warnings[0].exc_info[1])
    assert work.cleanup_stats.cleanup_failures == 1


def test_failing_cleanup_never_replaces_the_exception() -> None:
    """When both the call and the cleanup fail, the call's exception propagates."""
    manager = RecordingManager()
    manager.cleanup_error = RuntimeError("cleanup failed")
    original = ValueError("call failed")

    @auto_clear(every=1, manager=manager)
    def work() -> None:
        raise original

    with pytest.raises(ValueError, match="call failed") as raised:
        work()
    assert raised.value is original


# Metadata and binding ------------------------------------------------------------------


def test_metadata_and_signature_are_preserved() -> None:
    """Name, qualname, docstring, signature and ``__wrapped__`` are the function's."""

    def colorize(image: str, *, strength: float = 1.0) -> str:
        """Colorize one image."""
        return image

    decorated = auto_clear(colorize)
    assert decorated.__name__ == "colorize"
    assert decorated.__qualname__ == colorize.__qualname__
    assert decorated.__doc__ == "Colorize one image."
    assert inspect.signature(decorated) == inspect.signature(colorize)
    assert decorated.__wrapped__ is colorize


class Colorizer:
    """A class with every kind of method decorated."""

    def __init__(self, name: str) -> None:
        self.name = name

    @auto_clear(every=2, manager=RecordingManager())
    def method(self, image: str) -> str:
        return f"{self.name}:{image}"

    @auto_clear(every=1, manager=RecordingManager())
    @classmethod
    def outer_classmethod(cls, image: str) -> str:
        return f"{cls.__name__}:{image}"

    @classmethod
    @auto_clear(every=1, manager=RecordingManager())
    def inner_classmethod(cls, image: str) -> str:
        return f"{cls.__name__}:{image}"

    @auto_clear(every=1, manager=RecordingManager())
    @staticmethod
    def static(image: str) -> str:
        return f"static:{image}"


def test_methods_bind_to_their_instance_and_share_one_count() -> None:
    """``self`` is each caller's instance; the count is per function, shared by instances."""
    first, second = Colorizer("a"), Colorizer("b")
    assert first.method("x") == "a:x"
    assert second.method("y") == "b:y"
    assert first.method.cleanup_stats is second.method.cleanup_stats
    assert Colorizer.method.cleanup_stats.calls == 2
    assert Colorizer.method.cleanup_stats.cleanups == 1


def test_unbound_method_call_through_the_class() -> None:
    """Calling the method through the class with an explicit instance works."""
    assert Colorizer.method(Colorizer("c"), "z") == "c:z"


def test_classmethods_bind_to_the_class_in_either_order() -> None:
    """auto_clear above or below @classmethod receives the class."""

    class Special(Colorizer):
        pass

    assert Colorizer.outer_classmethod("x") == "Colorizer:x"
    assert Special.outer_classmethod("x") == "Special:x"
    assert Special("s").inner_classmethod("y") == "Special:y"
    assert Colorizer.outer_classmethod.cleanup_stats.calls == 2


def test_staticmethod_gets_no_instance() -> None:
    """A decorated staticmethod is called with its own arguments only."""
    assert Colorizer.static("x") == "static:x"
    assert Colorizer("a").static("y") == "static:y"


def test_callable_object() -> None:
    """An instance with ``__call__`` can be decorated and keeps working."""

    class Model:
        def __call__(self, image: str) -> str:
            return image.upper()

    manager = RecordingManager()
    decorated = auto_clear(every=1, manager=manager)(Model())
    assert decorated("abc") == "ABC"
    assert cleanup_pairs(manager.events) == 1


# Async and generators ------------------------------------------------------------------


def test_async_cleanup_runs_after_the_awaited_body() -> None:
    """For ``async def``, creating the coroutine does nothing; cleanup follows the body."""
    events: list[str] = []
    manager = RecordingManager(events=events)

    @auto_clear(every=1, manager=manager)
    async def work() -> str:
        events.append("body start")
        await asyncio.sleep(0)
        events.append("body end")
        return "done"

    assert inspect.iscoroutinefunction(work)
    coroutine = work()
    assert events == []
    assert asyncio.run(coroutine) == "done"
    assert events == ["body start", "body end", "clear_cache", "trigger_gc_if_needed"]


def test_async_exception_identity_and_cleanup() -> None:
    """An async failure comes back as the same object, after cleanup."""
    manager = RecordingManager()
    original = ValueError("async failure")

    @auto_clear(every=100, manager=manager)
    async def work() -> None:
        await asyncio.sleep(0)
        raise original

    with pytest.raises(ValueError, match="async failure") as raised:
        asyncio.run(work())
    assert raised.value is original
    assert cleanup_pairs(manager.events) == 1


def test_async_method() -> None:
    """An ``async def`` method binds its instance."""
    manager = RecordingManager()

    class Worker:
        @auto_clear(every=1, manager=manager)
        async def run(self, value: int) -> int:
            return value * 2

    assert asyncio.run(Worker().run(4)) == 8
    assert cleanup_pairs(manager.events) == 1


def test_generator_cleans_up_when_it_finishes_not_before() -> None:
    """A decorated generator function cleans up once, after its last item."""
    events: list[str] = []
    manager = RecordingManager(events=events)

    @auto_clear(every=1, manager=manager)
    def frames(count: int) -> Generator[int, None, str]:
        events.append("body start")
        yield from range(count)
        return "finished"

    generator = frames(2)
    assert events == []
    assert next(generator) == 0
    assert next(generator) == 1
    assert events == ["body start"]
    with pytest.raises(StopIteration) as stopped:
        next(generator)
    assert stopped.value.value == "finished"
    assert events == ["body start", "clear_cache", "trigger_gc_if_needed"]


def test_generator_closed_early_cleans_up_once() -> None:
    """Closing a started generator cleans up; it is not counted as an error."""
    manager = RecordingManager()

    @auto_clear(every=1, manager=manager)
    def frames() -> Generator[int, None, None]:
        yield from range(10)

    generator = frames()
    next(generator)
    generator.close()
    assert cleanup_pairs(manager.events) == 1
    assert frames.cleanup_stats.errors == 0


def test_generator_never_started_never_cleans_up() -> None:
    """A generator that is created and dropped runs no body and no cleanup."""
    manager = RecordingManager()

    @auto_clear(every=1, manager=manager)
    def frames() -> Generator[int, None, None]:
        yield 1

    generator = frames()
    del generator
    gc.collect()
    assert manager.events == []


def test_generator_error_cleans_up_and_propagates() -> None:
    """An exception inside the generator body cleans up and reaches the consumer."""
    manager = RecordingManager()

    @auto_clear(every=100, manager=manager)
    def frames() -> Generator[int, None, None]:
        yield 1
        raise RuntimeError("bad frame")

    generator = frames()
    next(generator)
    with pytest.raises(RuntimeError, match="bad frame"):
        next(generator)
    assert cleanup_pairs(manager.events) == 1
    assert frames.cleanup_stats.errors == 1


def test_generator_forwards_send() -> None:
    """Values sent into the decorated generator reach the original."""

    @auto_clear(every=1, manager=RecordingManager())
    def echo() -> Generator[int, int, None]:
        received = yield 0
        while True:
            received = yield received * 10

    generator = echo()
    next(generator)
    assert generator.send(3) == 30


# Threads and statistics ----------------------------------------------------------------


def test_counts_are_exact_across_eight_threads() -> None:
    """8 threads x 1000 calls give exactly 8000 calls and 8000 / every cleanups."""
    manager = RecordingManager()

    @auto_clear(every=7, manager=manager)
    def work() -> None:
        pass

    def run() -> None:
        for _ in range(1000):
            work()

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = work.cleanup_stats
    assert stats.calls == 8000
    assert stats.cleanups == 8000 // 7
    assert cleanup_pairs(manager.events) == 8000 // 7


def test_stats_object_is_updated_in_place() -> None:
    """The statistics object never changes identity, so references taken early stay live."""

    @auto_clear(every=1, manager=RecordingManager())
    def work() -> None:
        pass

    stats = work.cleanup_stats
    work()
    work()
    assert work.cleanup_stats is stats
    assert (stats.calls, stats.cleanups) == (2, 2)


def test_outer_decorator_sees_the_stats() -> None:
    """A decorator stacked on top can still reach ``cleanup_stats`` through the proxy."""
    inner = auto_clear(every=1, manager=RecordingManager())(lambda: None)

    def outer(function: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            function()

        call.cleanup_stats = function.cleanup_stats
        return call

    decorated = outer(inner)
    decorated()
    assert decorated.cleanup_stats.calls == 1


def test_gc_runs_are_counted_from_the_threshold_check() -> None:
    """A cleanup that collected counts a GC run; one below threshold does not."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        manager = MemoryManager("cuda", memory_threshold=0.8)

        @auto_clear(every=1, manager=manager)
        def work() -> None:
            pass

        fake.set_usage(0.9)
        work()
        fake.set_usage(0.1)
        work()
    stats = work.cleanup_stats
    assert (stats.cleanups, stats.gc_runs) == (2, 1)


# Which manager -------------------------------------------------------------------------


def test_a_manager_on_the_batch_device_defers_to_the_batch_cadence() -> None:
    """``manager=`` naming another manager object on the batch's device adds no cadence:
    same device means same device, so only the batch's final cleanup runs."""
    own, batch_manager = RecordingManager(), RecordingManager()

    @auto_clear(every=1, manager=own)
    def work() -> None:
        pass

    with managed_batch(manager=batch_manager, every=1000):
        work()
    assert own.events == []
    assert cleanup_pairs(batch_manager.events) == 1  # the batch's own final cleanup only


def test_batch_manager_is_used_without_an_explicit_one() -> None:
    """Inside a batch, decorated calls are the batch's items and its manager does the
    cleaning, on the batch's cadence: with every=1000, only the final cleanup."""
    batch_manager = RecordingManager()

    @auto_clear(every=1)
    def work() -> None:
        pass

    with managed_batch(manager=batch_manager, every=1000) as batch:
        work()
        work()
    assert cleanup_pairs(batch_manager.events) == 1
    assert (batch.report.calls, batch.report.items) == (2, 2)
    assert batch.report.cache_clears == 0  # the CPU has no cache: its clear counts as none
    assert work.cleanup_stats.cleanups == 0


def test_concurrent_asyncio_tasks_see_their_own_batch() -> None:
    """Each asyncio task's decorated calls count into the batch that task entered."""

    @auto_clear(every=1)
    async def work() -> None:
        await asyncio.sleep(0)

    async def run_batch(calls: int) -> int:
        async with managed_batch(manager=RecordingManager()) as batch:
            for _ in range(calls):
                await work()
        return batch.report.calls

    async def main() -> list[int]:
        return list(await asyncio.gather(run_batch(3), run_batch(5)))

    assert asyncio.run(main()) == [3, 5]


def test_new_threads_do_not_inherit_the_batch_but_a_copied_context_does() -> None:
    """A plain thread sees no batch; one run in a copied context does."""

    @auto_clear(every=1, manager=RecordingManager())
    def work() -> None:
        pass

    with managed_batch(manager=RecordingManager()) as plain_batch:
        plain = threading.Thread(target=work)
        plain.start()
        plain.join()
    with managed_batch(manager=RecordingManager()) as copied_batch:
        copied = contextvars.copy_context()
        thread = threading.Thread(target=copied.run, args=(work,))
        thread.start()
        thread.join()
    assert plain_batch.report.calls == 0
    assert copied_batch.report.calls == 1


def test_shared_default_managers_do_not_outlive_a_fake_device() -> None:
    """A default manager made under one FakeDevice is not reused under the next one."""

    @auto_clear(every=1, memory_threshold=0.5)
    def work() -> None:
        pass

    with FakeDevice("cuda", device_count=1) as first:
        work()
    with FakeDevice("cuda", device_count=2, current_device=1) as second:
        work()
    assert {call.args for call in first.calls_to("torch.cuda.mem_get_info")} == {(0,)}
    assert {call.args for call in second.calls_to("torch.cuda.mem_get_info")} == {(1,)}
