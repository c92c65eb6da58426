"""The small core with sockets: watchers, option objects, one cadence per device, lifetimes."""

from __future__ import annotations

import asyncio
import gc
import pickle
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from memscope import (
    BatchStateError,
    ClearAlways,
    ClearWhenUseful,
    GCBackoff,
    ImageMemoryModel,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    auto_clear,
    managed_batch,
)
from memscope.batch import current_batch
from memscope.exceptions import DeviceUnavailableError, MemscopeError
from memscope.journal import Journal
from memscope.oom import MemoryHistory, is_oom_error
from memscope.testing import FakeDevice, GiB, RecordingManager, oom_error
from memscope.watch import CleanupStep, Watcher


class Steps(Watcher):
    """Records the cleanup steps it sees."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int]] = []

    def cleaned(self, batch: Any, step: CleanupStep) -> None:
        self.steps.append((step.item, step.cache_clears, step.gc_runs))


# Defect 1: one cadence per device, whatever the spelling or the manager object.


def test_decorator_with_the_batch_manager_runs_no_cadence_of_its_own() -> None:
    """@auto_clear(manager=m, every=1) inside managed_batch(manager=m, every=5) over 10 items
    clears the cache 3 times (two steps and the final one), not 13."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=2 * GiB)
        manager = MemoryManager("cuda")

        @auto_clear(manager=manager, every=1, cache_policy=ClearAlways())
        def colorize(item: int) -> int:
            return item

        with managed_batch(manager=manager, every=5, cache_policy=ClearAlways()) as batch:
            for item in range(10):
                colorize(item)
        assert fake.count("torch.cuda.empty_cache") == 3
        assert batch.report.items == 10


def test_decorator_naming_the_batch_device_by_index_shares_its_cadence() -> None:
    """@auto_clear(device="cuda:0") inside managed_batch("cuda") is the same device: the
    batch's cadence is the only one."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=2 * GiB)

        @auto_clear(device="cuda:0", every=1, cache_policy=ClearAlways())
        def colorize(item: int) -> int:
            return item

        with managed_batch("cuda", every=5, cache_policy=ClearAlways()) as batch:
            for item in range(10):
                colorize(item)
        assert fake.count("torch.cuda.empty_cache") == 3
        assert batch.report.cleanups == 3


def test_decorator_on_another_device_keeps_its_own_cadence() -> None:
    """A decorated function whose manager is on another device than the batch's cleans up
    on its own cadence, and reports its cleanups to the batch."""
    with FakeDevice("cuda", device_count=2, total=8 * GiB) as fake:
        fake.set_memory(0, allocated=1 * GiB, reserved=2 * GiB)
        fake.set_memory(1, allocated=1 * GiB, reserved=2 * GiB)

        @auto_clear(device="cuda:1", every=2, cache_policy=ClearAlways())
        def colorize(item: int) -> int:
            return item

        with managed_batch("cuda:0", every=5, cache_policy=ClearAlways()) as batch:
            for item in batch.track(range(4)):
                colorize(item)
        assert colorize.cleanup_stats.cleanups == 2
        assert batch.report.cleanups == 2 + 1


# Defect 2: an item is counted by the outermost memscope layer that sees it.


def test_nested_decorated_calls_outside_track_count_one_item_each() -> None:
    """Ten calls of a decorated function that calls another decorated function are ten
    items, and the cadence runs on those ten."""

    @auto_clear
    def inner(item: int) -> int:
        return item

    @auto_clear
    def outer(item: int) -> int:
        return inner(item) + inner(item)

    watcher = Steps()
    with managed_batch("cpu", every=5, watchers=[watcher]) as batch:
        for item in range(10):
            outer(item)
    assert batch.report.items == 10
    assert batch.report.calls == 30
    assert [step[0] for step in watcher.steps] == [5, 10, 10]


def test_nested_async_decorated_calls_count_one_item_each() -> None:
    """The same holds for coroutine functions."""

    @auto_clear
    async def inner(item: int) -> int:
        return item

    @auto_clear
    async def outer(item: int) -> int:
        return await inner(item)

    async def run() -> int:
        async with managed_batch("cpu", every=5) as batch:
            for item in range(6):
                await outer(item)
        return batch.report.items

    assert asyncio.run(run()) == 6


# Defect 3: batches left out of order.


def test_inner_batch_stays_current_when_the_outer_one_leaves_first() -> None:
    """An outer batch left before the batch nested in it leaves the inner one current, and
    calls still count into it; when it leaves too, no batch is current."""

    @auto_clear
    def colorize(item: int) -> int:
        return item

    outer = managed_batch("cpu", every=None)
    inner = managed_batch("cpu", every=None)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    assert current_batch() is inner
    colorize(1)
    colorize(2)
    inner.__exit__(None, None, None)
    assert current_batch() is None
    assert inner.report.items == 2
    assert outer.report.items == 0


def test_a_batch_entered_twice_stays_current_until_its_outer_with_ends() -> None:
    """``with batch:`` inside ``with batch:`` (a helper that enters the batch it is given):
    after the inner block the batch is still current and its calls still count; after the
    outer one the batch that was current before it is current again."""

    @auto_clear
    def colorize(item: int) -> int:
        return item

    with managed_batch("cpu", every=None) as outside:
        batch = managed_batch("cpu", every=None)
        with batch:
            with batch:
                colorize(1)
            assert current_batch() is batch
            colorize(2)
        assert current_batch() is outside
        colorize(3)
    assert current_batch() is None
    assert batch.report.items == 2
    assert outside.report.items == 1


def test_an_async_batch_entered_twice_stays_current_in_its_task() -> None:
    """The same with ``async with``, in a task, while another task enters the same batch
    once: each task's current batch follows its own blocks."""
    batch = managed_batch("cpu", every=None)
    seen: list[tuple[str, object]] = []

    async def twice() -> None:
        async with batch:
            async with batch:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(("twice, after the inner block", current_batch()))
        seen.append(("twice, after both", current_batch()))

    async def once() -> None:
        async with batch:
            await asyncio.sleep(0)
        seen.append(("once, after its block", current_batch()))

    async def main() -> None:
        await asyncio.gather(twice(), once())

    asyncio.run(main())
    assert sorted(seen, key=str) == sorted(
        [
            ("twice, after the inner block", batch),
            ("twice, after both", None),
            ("once, after its block", None),
        ],
        key=str,
    )
    assert not batch.active


# Defect 4: calls that outlive their batch.


def test_generator_finished_after_its_batch_keeps_its_result_and_counts_nowhere(
    tmp_path: Any,
) -> None:
    """A decorated generator still running when its journaled batch ends gives its result
    whole and counts into no batch."""

    @auto_clear
    def numbers() -> Iterator[int]:
        yield 1
        yield 2

    with managed_batch("cpu", journal=tmp_path / "run.jsonl") as batch:
        running = numbers()
        first = next(running)
    rest = list(running)
    assert [first, *rest] == [1, 2]
    assert batch.report.items == 0
    assert numbers.cleanup_stats.calls == 1


def test_coroutine_awaited_after_its_batch_counts_nowhere() -> None:
    """A decorated coroutine made inside a batch but awaited after it ends returns its
    result and leaves the ended batch's report as it was."""

    @auto_clear
    async def colorize() -> str:
        return "done"

    async def run() -> tuple[str, int]:
        with managed_batch("cpu") as batch:
            pending = colorize()
        return await pending, batch.report.items

    assert asyncio.run(run()) == ("done", 0)


# Defect 5: a recovery whose cache clear fails still counts its collection.


def test_recovery_whose_cache_clear_fails_still_counts_its_collection() -> None:
    """An OOM retry whose cache clear raises counts its gc.collect() in gc_runs and a
    cleanup failure, and the retry still runs."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        attempts: list[int] = []

        @auto_clear(oom_retries=1)
        def colorize() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise oom_error("cuda")
            return "ok"

        with managed_batch("cuda", every=None) as batch:
            fake.fail("torch.cuda.empty_cache", RuntimeError("driver gone"))
            assert colorize() == "ok"
            fake.clear_failures()
        assert batch.report.gc_runs == 1
        assert batch.report.cleanup_failures == 1
        assert batch.report.oom_retries == 1


# Defect 7: an exception group is an OOM only when all its errors are.


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in Python 3.11")
def test_group_of_an_oom_and_another_error_is_not_retried() -> None:
    """An ExceptionGroup holding an OOM and a ValueError is not an OOM: no retry, and the
    ValueError comes out inside the group."""
    calls: list[int] = []

    @auto_clear(oom_retries=3)
    def colorize() -> None:
        calls.append(1)
        raise ExceptionGroup(  # noqa: F821 (a 3.11 builtin)
            "tasks", [torch.OutOfMemoryError("out"), ValueError("bad")]
        )

    with pytest.raises(ExceptionGroup) as raised:  # noqa: F821
        colorize()
    assert len(calls) == 1
    assert any(isinstance(error, ValueError) for error in raised.value.exceptions)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in Python 3.11")
def test_group_of_ooms_only_is_an_oom() -> None:
    """A group whose every error is an OOM is one; one with another error is not."""
    group = ExceptionGroup  # noqa: F821 (a 3.11 builtin)
    assert is_oom_error(group("g", [torch.OutOfMemoryError("a"), MemoryError()]))
    assert not is_oom_error(group("g", [torch.OutOfMemoryError("a"), KeyError()]))


# Defect 8: validation names the parameter and the value.


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: MemoryManager(2**63), DeviceUnavailableError),
        (lambda: MemoryManager("cpu", memory_threshold=10**400), InvalidArgumentError),
        (lambda: MemoryManager("cpu", budget=10**400), InvalidArgumentError),
        (lambda: MemoryManager("cpu", memory_model="fp16"), InvalidArgumentTypeError),
        (lambda: GCBackoff(margin=10**400), InvalidArgumentError),
        (lambda: ClearWhenUseful(min_reclaimable=10**400), InvalidArgumentError),
        (lambda: ImageMemoryModel(activation_factor=10**400), InvalidArgumentError),
        (lambda: auto_clear(42), InvalidArgumentTypeError),  # type: ignore[call-overload]
        (lambda: managed_batch("cpu", memory_threshold=10**400), InvalidArgumentError),
    ],
)
def test_bad_values_get_clear_errors_at_once(make: Any, error: type[Exception]) -> None:
    """Huge numbers, wrong types and impossible devices are refused when given, with
    memscope's errors, never OverflowError or a late AttributeError."""
    with pytest.raises(error):
        make()


def test_budget_beyond_any_float_is_refused_with_a_readable_message() -> None:
    """A budget too large for a float is refused as larger than the host's limit."""
    with pytest.raises(InvalidArgumentError, match="budget"):
        MemoryManager("cpu", budget=10**400)


# Options that cannot apply are errors naming both.


@pytest.mark.parametrize("option", ["memory_threshold", "budget", "device"])
def test_manager_and_its_own_options_cannot_be_combined(option: str) -> None:
    """managed_batch(manager=m, memory_threshold=...) and the like name both parts."""
    manager = MemoryManager("cpu")
    values: dict[str, Any] = {"memory_threshold": 0.5, "budget": "1GiB", "device": "cpu"}
    kwargs = {option: values[option]}
    with pytest.raises(InvalidArgumentError, match=f"pass manager= or {option}=, not both"):
        managed_batch(manager=manager, **kwargs)


def test_journal_takes_an_option_object_or_a_path(tmp_path: Any) -> None:
    """journal= accepts a Journal with its options, or a path for one with defaults."""
    journal = Journal(tmp_path / "run.jsonl", job="colorize", sync_every=10, retry_failed=True)
    assert managed_batch("cpu", journal=journal).options.journal is journal
    from_path = managed_batch("cpu", journal=tmp_path / "other.jsonl").options.journal
    assert isinstance(from_path, Journal)
    assert from_path.sync_every == 1
    with pytest.raises(InvalidArgumentTypeError, match="journal"):
        managed_batch("cpu", journal=42)  # type: ignore[arg-type]


def test_history_takes_an_option_object_or_true() -> None:
    """history=True means MemoryHistory(); anything else but an option object is refused."""
    assert isinstance(managed_batch("cpu", history=True).options.history, MemoryHistory)
    with pytest.raises(InvalidArgumentTypeError, match="history"):
        managed_batch("cpu", history="yes")  # type: ignore[arg-type]


def test_managed_batch_keeps_about_ten_keywords() -> None:
    """The batch's signature stays small: options live in option objects."""
    import inspect

    keywords = [
        name
        for name, parameter in inspect.signature(managed_batch).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert len(keywords) <= 11


# Watchers.


def test_watcher_hooks_see_the_batch_life() -> None:
    """A watcher's hooks are called at start, per item, per cleanup and at the end, and its
    report part is the report's."""
    seen: list[str] = []

    class Everything(Watcher):
        def started(self, batch: Any) -> None:
            seen.append("started")

        def items_done(self, batch: Any, item: int, count: int) -> None:
            seen.append(f"item {item}")

        def cleaned(self, batch: Any, step: CleanupStep) -> None:
            seen.append(f"cleaned at {step.item}")

        def report_part(self, batch: Any, figures: Mapping[str, Any]) -> Mapping[str, Any]:
            return {"skipped": 7}

        def finished(self, batch: Any, error: BaseException | None) -> None:
            seen.append("finished")

    with managed_batch("cpu", every=2, watchers=[Everything()]) as batch:
        for _ in batch.track(range(3)):
            pass
    assert seen == [
        "started",
        "item 1",
        "cleaned at 2",
        "item 2",
        "item 3",
        "cleaned at 3",
        "finished",
    ]
    assert batch.report.skipped == 7


def test_a_watcher_is_called_only_for_the_hooks_it_defines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watcher that defines only ``cleaned`` is never called per item: the base class's
    hooks are not called at all."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a hook the watcher does not define was called")

    watcher = Steps()
    assert Steps.defined_hooks == frozenset({"cleaned"})
    for hook in ("items_done", "started", "finished", "iterating", "report_part"):
        monkeypatch.setattr(Watcher, hook, never)
    with managed_batch("cpu", every=2, watchers=[watcher]) as batch:
        for _ in batch.track(range(4)):
            pass
    assert [step[0] for step in watcher.steps] == [2, 4, 4]


def test_watcher_failing_at_the_end_never_masks_the_users_exception() -> None:
    """A watcher whose ``finished`` raises leaves the user's exception in charge, with a
    note naming the failure; without a user exception its error is raised."""

    class Broken(Watcher):
        def __repr__(self) -> str:
            return "Broken()"

        def finished(self, batch: Any, error: BaseException | None) -> None:
            raise OSError("disk full")

    with pytest.raises(KeyError) as raised, managed_batch("cpu", watchers=[Broken()]):
        raise KeyError("the user's")
    assert any("Broken()" in note for note in raised.value.__notes__)
    with pytest.raises(OSError, match="disk full"), managed_batch("cpu", watchers=[Broken()]):
        pass


def test_watcher_failing_in_the_final_cleanup_never_masks_the_users_exception() -> None:
    """A watcher whose ``cleaned`` raises during the final cleanup, or whose ``oom_seen``
    raises for the OOM ending the batch, leaves the user's exception in charge with a note,
    and the report is made; without a user exception the final cleanup's failure is raised
    once the report is made, and the report says what ended it."""

    class BrokenCleaned(Watcher):
        def cleaned(self, batch: Any, step: CleanupStep) -> None:
            raise OSError("disk full")

    class BrokenOomSeen(Watcher):
        def oom_seen(self, batch: Any, error: BaseException, *, leaving: bool) -> None:
            raise OSError("no room for the snapshot")

    batch = managed_batch("cpu", watchers=[BrokenCleaned()])
    with pytest.raises(KeyError, match="the user's") as raised, batch:
        raise KeyError("the user's")
    assert any("final cleanup" in note for note in raised.value.__notes__)
    assert batch.report.ended_by == "KeyError"

    with FakeDevice("cuda"):
        batch = managed_batch("cuda", watchers=[BrokenOomSeen()])
        user_oom = oom_error()
        with pytest.raises(torch.cuda.OutOfMemoryError) as caught, batch:
            raise user_oom
    assert caught.value is user_oom
    assert any("no room for the snapshot" in note for note in user_oom.__notes__)
    assert batch.report.ooms == 1

    batch = managed_batch("cpu", watchers=[BrokenCleaned()])
    with pytest.raises(OSError, match="disk full"), batch:
        pass
    assert batch.report.ended_by == "OSError"


def test_a_report_part_naming_no_field_is_a_clear_error() -> None:
    """A watcher contributing a field the report does not have is told so, by name."""

    class Unknown(Watcher):
        def report_part(self, batch: Any, figures: Mapping[str, Any]) -> Mapping[str, Any]:
            return {"colour": "blue"}

    with pytest.raises(MemscopeError, match="colour"), managed_batch("cpu", watchers=[Unknown()]):
        pass


def test_watchers_must_be_watchers() -> None:
    """watchers= refuses what has no hook at once."""
    with pytest.raises(InvalidArgumentTypeError, match="watchers"):
        managed_batch("cpu", watchers=[object()])


# The public lifecycle for integrations.


def test_open_close_and_clean_up_keep_one_batch_across_calls() -> None:
    """open() starts a batch without making it current, bind() runs calls in it, clean_up()
    runs a counted step, close() ends it with its report."""

    @auto_clear
    def colorize(item: int) -> int:
        return item

    batch = managed_batch("cpu", every=None).open()
    assert current_batch() is None
    run = batch.bind(colorize)
    run(1)
    run(2)
    batch.clean_up("between calls")
    assert batch.report_so_far().items == 2
    batch.close()
    assert batch.report.items == 2
    assert batch.report.cleanups == 1
    with pytest.raises(BatchStateError):
        batch.close()


# CPU figures and the cache.


def test_cpu_batch_counts_no_cache_clears() -> None:
    """The CPU has no cache: a CPU batch reports 0 clears, whatever the policy."""
    for policy in (ClearAlways(), ClearWhenUseful()):
        with managed_batch("cpu", every=1, cache_policy=policy) as batch:
            for _ in batch.track(range(10)):
                pass
        assert batch.report.cache_clears == 0
        assert batch.report.cleanups == 11


def test_cache_clears_back_off_under_sustained_pressure() -> None:
    """With usage pinned above the threshold for 100 steps and nothing reclaimable, the
    cache is emptied at most 8 times; new reclaimable cache is cleared at the next step."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.9)
        with managed_batch("cuda", every=1) as batch:
            for _ in batch.track(range(100)):
                pass
            assert fake.count("torch.cuda.empty_cache") <= 8
            before = fake.count("torch.cuda.empty_cache")
            fake.set_memory(allocated=7 * GiB, reserved=7 * GiB + GiB // 2)
            batch.step()
            assert fake.count("torch.cuda.empty_cache") == before + 1


def test_a_cleanup_step_reads_the_device_once_with_the_timeline() -> None:
    """With a timeline and every=1, each item costs one reading: the step's is shared with
    the timeline and the leak watch."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        with managed_batch("cuda", every=1, timeline=True) as batch:
            before = fake.count("torch.cuda.mem_get_info")
            for _ in batch.track(range(10)):
                pass
            assert fake.count("torch.cuda.mem_get_info") - before == 10
        assert len(batch.report.timeline) == 10


def test_default_cadence_is_every_five_items() -> None:
    """managed_batch's default cadence is the decorator's: every 5 items."""
    watcher = Steps()
    with managed_batch("cpu", watchers=[watcher]) as batch:
        for _ in batch.track(range(10)):
            pass
    assert batch.every == 5
    assert [step[0] for step in watcher.steps] == [5, 10, 10]


def test_cobra_api_overrides_are_called_by_the_cleanup_template() -> None:
    """A MemoryManager subclass overriding the Cobra API's trigger_gc_if_needed is called
    at every step of a batch."""
    manager = RecordingManager()
    with managed_batch(manager=manager, every=2) as batch:
        for _ in batch.track(range(4)):
            pass
    assert manager.events.count("trigger_gc_if_needed") == 3
    assert batch.report.cleanups == 3


def test_map_lets_stop_iteration_out_as_the_function_raised_it() -> None:
    """A StopIteration the mapped function raises comes out of next() as itself, not as
    RuntimeError('generator raised StopIteration')."""

    def stop(item: int) -> int:
        raise StopIteration(item)

    with managed_batch("cpu") as batch:
        mapped = batch.map(stop, [1, 2])
        with pytest.raises(StopIteration):
            next(mapped)


def test_journal_keys_are_made_as_items_are_reached(tmp_path: Any) -> None:
    """Keys of a list are made one item at a time, so a bad key fails at its own item after
    the items before it ran and were journaled."""
    done: list[object] = []
    with managed_batch("cpu", journal=tmp_path / "run.jsonl") as batch:
        loop = batch.track([1, 2, object()])
        done.extend([next(loop), next(loop)])
        with pytest.raises(InvalidArgumentTypeError):
            next(loop)
    assert done == [1, 2]
    assert batch.report.items == 2


def test_batch_memory_history_option_reaches_the_recorder(tmp_path: Any) -> None:
    """history=MemoryHistory(folder) records on CUDA and writes a snapshot when an OOM ends
    the batch, named in the report and in the error's note."""
    with FakeDevice("cuda", total=8 * GiB):
        batch = managed_batch("cuda", history=MemoryHistory(tmp_path))
        with pytest.raises(torch.OutOfMemoryError) as raised, batch:
            raise oom_error("cuda")
        assert len(batch.report.memory_snapshots) == 1
        assert any(batch.report.memory_snapshots[0] in note for note in raised.value.__notes__)


def test_a_watcher_object_survives_pickling_of_the_report() -> None:
    """The report a watcher contributed to pickles like any report."""
    with managed_batch("cpu", watchers=[Steps()]) as batch:
        batch.step()
    assert pickle.loads(pickle.dumps(batch.report)) == batch.report


def test_garbage_a_collection_reclaims_is_no_leak_through_the_batch() -> None:
    """Memory that grows between collections but goes when one runs (garbage in reference
    cycles) raises no alarm: the batch runs the collection the leak watch asks for."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=GiB)

        def collected(phase: str, info: dict[str, int]) -> None:
            if phase == "stop":
                fake.set_memory(allocated=GiB, reserved=GiB)

        gc.callbacks.append(collected)
        try:
            with managed_batch("cuda", every=1) as batch:
                for _ in batch.track(range(300)):
                    grown = fake.memory[0].allocated + 64 * 1024**2
                    fake.set_memory(allocated=grown, reserved=grown)
        finally:
            gc.callbacks.remove(collected)
    assert batch.report.leak is None
    assert batch.report.gc_runs >= 1


def test_chunked_work_calling_decorated_functions_counts_its_items_once() -> None:
    """Ten calls of a decorated function that calls another, then process_in_chunks over 8
    items whose function calls it: 18 items of work, and the report says 18."""
    from memscope import process_in_chunks

    @auto_clear
    def inner(item: int) -> int:
        return item

    @auto_clear
    def outer(item: int) -> int:
        return inner(item)

    def chunk(items: list[int]) -> list[int]:
        return [outer(item) for item in items]

    with managed_batch("cpu", every=5) as batch:
        for item in range(10):
            outer(item)
        assert process_in_chunks(chunk, list(range(8)), start=4) == list(range(8))
    assert batch.report.items == 18


def test_async_chunked_work_counts_its_items_once() -> None:
    """The same for process_in_chunks_async: decorated coroutines a chunk awaits are part of
    the chunk's items."""
    from memscope import process_in_chunks_async

    @auto_clear
    async def colorize(item: int) -> int:
        return item

    async def chunk(items: list[int]) -> list[int]:
        return [await colorize(item) for item in items]

    async def run() -> int:
        async with managed_batch("cpu", every=5) as batch:
            await process_in_chunks_async(chunk, list(range(8)), start=4)
        return batch.report.items

    assert asyncio.run(run()) == 8
