"""The cleanup step's hot path: what a step reads, counts and builds, pinned by call counts."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from memscope import ClearWhenUseful, MemoryManager, auto_clear, managed_batch
from memscope.backends.cpu import CpuBackend
from memscope.host import HostMemoryMonitor
from memscope.manager import ManagerStats
from memscope.snapshot import MemorySnapshot
from memscope.testing import FakeDevice, GiB
from memscope.typing import ItemKey
from memscope.watch import CleanupStep, Hooks, Watcher


class Calls:
    """How often a counted method has been called."""

    count = 0


def _counted(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> type[Calls]:
    """Count the calls of ``owner.name`` (still calling it) for the test's duration."""
    original = getattr(owner, name)

    class Counter(Calls):
        pass

    def counting(self: Any) -> Any:
        Counter.count += 1
        return original(self)

    monkeypatch.setattr(owner, name, counting)
    return Counter


@pytest.fixture
def cpu_readings(monkeypatch: pytest.MonkeyPatch) -> type[Calls]:
    """Counts the CPU backend's readings."""
    return _counted(monkeypatch, CpuBackend, "read_memory")


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> type[Calls]:
    """Counts the host monitor's resident-memory reads."""
    return _counted(monkeypatch, HostMemoryMonitor, "resident_bytes")


def test_a_cpu_step_without_host_or_budget_figures_reads_nothing(cpu_readings: Any) -> None:
    """On the CPU, which reports no figures, a batch's steps never ask the backend for any
    (the threshold check knows usage is 0 without a reading)."""
    with managed_batch("cpu", every=1) as batch:
        before = cpu_readings.count
        for _ in batch.track(range(20)):
            pass
        during = cpu_readings.count - before
    assert during == 0
    assert batch.report.cleanups == 21


def test_a_cpu_step_with_a_budget_still_reads_the_host(host_reads: Any) -> None:
    """With a budget the CPU's usage is the host's: each step reads the host (the manager's
    check and the host watch share nothing, but neither is skipped)."""
    with managed_batch("cpu", every=1, budget="1GiB") as batch:
        before = host_reads.count
        for _ in batch.track(range(10)):
            pass
        during = host_reads.count - before
    assert during >= 10


class RecordingPolicy:
    """A cache policy that records the snapshots it is asked with, and always clears."""

    needs_snapshot: ClassVar[bool] = True

    def __init__(self) -> None:
        self.seen: list[MemorySnapshot | None] = []

    def __call__(self, snapshot: MemorySnapshot | None, memory_threshold: float) -> bool:
        self.seen.append(snapshot)
        return True


def test_a_cpu_step_with_nothing_to_do_does_nothing() -> None:
    """On the CPU without host or budget figures (no cache, usage always 0) a step asks no
    policy and changes no count: it gives the same empty outcome every time."""
    manager = MemoryManager("cpu")
    policy = RecordingPolicy()
    first, second = manager.clean_up(policy), manager.clean_up(policy)
    assert policy.seen == []
    assert first is second
    assert (first.cache_clears, first.gc_runs) == (0, 0)
    assert first.figures_after is not None
    assert first.figures_after.device == "cpu"


def test_a_cobra_subclass_on_the_cpu_still_has_its_methods_called() -> None:
    """A MemoryManager subclass overriding clear_cache (the Cobra API) gets its clear and the
    policy is asked, with no reading, since the CPU has none to give."""
    clears: list[str] = []

    class Cobra(MemoryManager):
        def clear_cache(self) -> None:
            clears.append("clear_cache")
            super().clear_cache()

    assert Cobra.overrides_cleanup
    assert not MemoryManager.overrides_cleanup
    policy = RecordingPolicy()
    Cobra("cpu").clean_up(policy)
    assert policy.seen == [None]
    assert clears == ["clear_cache"]


def test_a_step_reads_the_device_once_when_it_frees_nothing() -> None:
    """On a fake CUDA device a step that clears nothing makes one mem_get_info call and one
    statistics call, and its figures are the step's reading."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        manager = MemoryManager("cuda")
        manager.snapshot()  # the backend's one-time questions
        fake.calls.clear()
        outcome = manager.clean_up(ClearWhenUseful())
        names = sorted(call.function for call in fake.calls)
    assert names == ["torch.cuda.mem_get_info", "torch.cuda.memory_stats_as_nested_dict"]
    assert outcome.figures_after is not None
    assert outcome.figures_after.allocated == 1 * GiB


def test_a_count_only_batch_without_a_timeline_samples_the_host_only_at_its_ends(
    host_reads: Any,
) -> None:
    """Counting only, nothing reads the host per item (the leak watch has no new sample to
    judge and takes none of its own): one read at the start and one for the report."""
    with managed_batch("cpu", every=None) as batch:
        for _ in batch.track(range(100)):
            pass
    assert host_reads.count == 2
    assert batch.report.items == 100


def test_the_host_is_sampled_once_per_item_with_a_timeline_and_a_step_every_item(
    host_reads: Any,
) -> None:
    """With a step after every item and a timeline, the step's host sample is the one the
    timeline row uses: one read per item, not two."""
    with managed_batch("cpu", every=1, timeline=True) as batch:
        start = host_reads.count
        for _ in batch.track(range(50)):
            pass
        during = host_reads.count - start
    assert during == 50
    assert len(batch.report.timeline) == 50


def test_cleanup_stats_are_a_live_read_only_view() -> None:
    """A CleanupStats taken once follows the function's ledger and cannot be written."""

    @auto_clear(device="cpu", every=2)
    def work() -> None:
        pass

    stats = work.cleanup_stats
    for _ in range(5):
        work()
    assert stats.calls == 5
    assert stats.cleanups == 2
    assert stats.as_dict()["calls"] == 5
    with pytest.raises(AttributeError):
        stats.calls = 0  # type: ignore[misc]


def test_manager_stats_are_a_copy_of_its_ledger() -> None:
    """manager.stats is a value taken when read: later clears do not change it."""
    with FakeDevice("cuda", total=8 * GiB):
        manager = MemoryManager("cuda")
        before = manager.stats
        manager.clear_cache()
        assert before == ManagerStats(0, 0, 0.0)
        assert manager.stats.cache_clears == 1


def test_a_snapshot_is_a_tuple_with_its_dict() -> None:
    """A snapshot is an immutable tuple: _replace makes a changed copy, to_dict keeps the
    keys a plain device always had."""
    snapshot = MemorySnapshot("cuda:0", 0.5, allocated=1, reserved=2, free=3, total=4, used=2)
    changed = snapshot._replace(usage=0.25)
    assert (snapshot.usage, changed.usage) == (0.5, 0.25)
    assert set(snapshot.to_dict()) == {
        "device",
        "usage",
        "allocated",
        "reserved",
        "free",
        "total",
        "used",
        "peak_allocated",
        "peak_reserved",
    }


def test_a_watcher_can_read_the_counts_and_collect_through_the_batch() -> None:
    """batch.counts is live, and batch.collect() runs one collection counted in the report
    (what the leak watch asks for), without a cleanup step."""
    seen: list[int] = []

    class Reader(Watcher):
        def cleaned(self, batch: Any, step: CleanupStep) -> None:
            seen.append(batch.counts.items)

    with managed_batch("cpu", every=2, watchers=[Reader()]) as batch:
        for _ in batch.track(range(4)):
            pass
        batch.collect()
        collected = batch.counts.gc_runs
    assert seen[:2] == [2, 4]
    assert collected == 1
    assert batch.report.gc_runs == 1
    assert batch.report.cleanups == 3


def test_hooks_hold_only_what_the_watchers_define() -> None:
    """The batch's hook table has a hook only for watchers whose class defines it."""

    class OnlyCleaned(Watcher):
        def cleaned(self, batch: Any, step: CleanupStep) -> None:
            pass

    watcher = OnlyCleaned()
    hooks = Hooks([watcher])
    assert hooks.cleaned == (watcher.cleaned,)
    assert hooks.items_done == ()
    assert not hooks.keys_needed


def test_an_item_key_is_a_string_or_an_int() -> None:
    """ItemKey, the type of a journal's keys, is public in memscope.typing."""
    key: ItemKey = "image-1.png"
    assert isinstance(key, ItemKey)
    assert isinstance(3, ItemKey)


def test_a_batch_that_watches_no_host_has_no_host_hook_at_its_steps() -> None:
    """On a device with figures of its own and no host= (fake CUDA here), the host watch has
    no per-step hook; on the CPU, which the host watch measures, it has one."""
    with FakeDevice("cuda", total=8 * GiB), managed_batch("cuda", every=1) as on_gpu:
        gpu_hooks = {type(hook.__self__).__name__ for hook in on_gpu._hooks.cleaned}  # type: ignore[attr-defined]
    with managed_batch("cpu", every=1) as on_cpu:
        cpu_hooks = {type(hook.__self__).__name__ for hook in on_cpu._hooks.cleaned}  # type: ignore[attr-defined]
    assert "HostWatch" not in gpu_hooks
    assert "SteppedHostWatch" not in gpu_hooks
    assert "SteppedHostWatch" in cpu_hooks
