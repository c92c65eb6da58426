"""GC backoff and cache policies: cheap when nothing needs doing, prompt when it does."""

from __future__ import annotations

import dataclasses
import gc

import pytest

from memscope import (
    ClearAlways,
    ClearWhenUseful,
    GCBackoff,
    InvalidArgumentError,
    MemoryManager,
    MemorySnapshot,
    auto_clear,
    managed_batch,
)
from memscope.testing import FakeDevice, GiB, MiB, RecordingManager


@pytest.fixture
def counted_collections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count gc.collect() calls without running them (the policies decide, not the GC)."""
    calls: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append(1) or 0)
    return calls


def test_pinned_usage_collects_only_a_few_times(counted_collections: list[int]) -> None:
    """Usage pinned above the threshold for 100 checks collects 6 times, not 100."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_usage(0.9)
        manager = MemoryManager("cuda", gc_backoff=GCBackoff())
        collected = [manager.trigger_gc_if_needed() for _ in range(100)]
    # Collections at checks 1, 3, 7, 15, 31, 63: the wait doubles after each fruitless one.
    assert [index + 1 for index, ran in enumerate(collected) if ran] == [1, 3, 7, 15, 31, 63]
    assert len(counted_collections) == 6


def test_without_backoff_every_check_collects(counted_collections: list[int]) -> None:
    """As in the Cobra MemoryManager API, gc_backoff=None (the default) collects at every
    check."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_usage(0.9)
        manager = MemoryManager("cuda")
        for _ in range(100):
            manager.trigger_gc_if_needed()
    assert manager.gc_backoff is None
    assert len(counted_collections) == 100


def test_a_real_rise_rearms_the_collection(counted_collections: list[int]) -> None:
    """After a fruitless collection at 85 %, a rise to 91 % (past the 5 % margin) collects."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        manager = MemoryManager("cuda", gc_backoff=GCBackoff(margin=0.05))
        fake.set_usage(0.85)
        assert manager.trigger_gc_if_needed() is True
        fake.set_usage(0.88)
        assert manager.trigger_gc_if_needed() is False
        fake.set_usage(0.91)
        assert manager.trigger_gc_if_needed() is True
    assert len(counted_collections) == 2


def test_productive_collection_stays_armed(counted_collections: list[int]) -> None:
    """A collection that freed memory leaves the next check free to collect again."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        manager = MemoryManager("cuda", gc_backoff=GCBackoff())
        # Each collection reads usage before (0.95) and after (0.85): 10 % freed.
        fake.script_usage([0.95, 0.85, 0.95, 0.85, 0.95, 0.85])
        assert [manager.trigger_gc_if_needed() for _ in range(3)] == [True, True, True]
    assert len(counted_collections) == 3


def test_dropping_below_threshold_rearms(counted_collections: list[int]) -> None:
    """Once usage falls below the threshold, the next rise collects at once."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        manager = MemoryManager("cuda", gc_backoff=GCBackoff())
        fake.set_usage(0.9)
        assert manager.trigger_gc_if_needed() is True
        assert manager.trigger_gc_if_needed() is False
        fake.set_usage(0.5)
        assert manager.trigger_gc_if_needed() is False
        fake.set_usage(0.9)
        assert manager.trigger_gc_if_needed() is True
    assert len(counted_collections) == 2


def test_backoff_policy_is_immutable_and_validated() -> None:
    """GCBackoff is frozen, and bad settings name the parameter."""
    policy = GCBackoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.margin = 0.5  # type: ignore[misc]
    with pytest.raises(InvalidArgumentError, match="margin"):
        GCBackoff(margin=0)
    with pytest.raises(InvalidArgumentError, match="max_interval"):
        GCBackoff(max_interval=0)
    with pytest.raises(TypeError, match="gc_backoff"):
        MemoryManager("cpu", gc_backoff=True)  # type: ignore[arg-type]


def test_shared_default_manager_of_the_decorator_backs_off(
    counted_collections: list[int],
) -> None:
    """@auto_clear's default manager uses GCBackoff: 20 pinned cleanups collect 4 times
    (at cleanups 1, 3, 7 and 15)."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_usage(0.95)

        @auto_clear(every=1, device="cuda", memory_threshold=0.91)
        def work() -> None:
            pass

        for _ in range(20):
            work()
    assert work.cleanup_stats.gc_runs == 4  # type: ignore[attr-defined]


def _snapshot(*, usage: float, allocated: int, reserved: int) -> MemorySnapshot:
    return MemorySnapshot(
        device="cuda:0", usage=usage, allocated=allocated, reserved=reserved, total=16 * GiB
    )


@pytest.mark.parametrize(
    ("usage", "allocated", "reserved", "clears"),
    [
        (0.5, 2 * GiB, 2 * GiB + 100 * MiB, False),  # little cached: keep it for reuse
        (0.5, 2 * GiB, 3 * GiB, False),  # 1 GiB of 16: under the 10 % share
        (0.5, 2 * GiB, 4 * GiB, True),  # 2 GiB of 16 cached but unused: give it back
        (0.85, 2 * GiB, 2 * GiB, False),  # at the threshold, nothing reclaimable: no storm
        (0.85, 2 * GiB, 2 * GiB + 200 * MiB, True),  # at the threshold: 1 % reclaimable is
    ],
)
def test_clear_when_useful_decisions(
    usage: float, allocated: int, reserved: int, clears: bool
) -> None:
    """ClearWhenUseful clears with >= 10 % of the device cached but unused, or at or above the
    threshold with >= 1 % of it reclaimable."""
    policy = ClearWhenUseful()
    assert policy(_snapshot(usage=usage, allocated=allocated, reserved=reserved), 0.8) is clears


def test_clear_when_useful_clears_devices_without_figures() -> None:
    """A device that reports nothing is always cleared (the policy cannot tell)."""
    assert ClearWhenUseful()(MemorySnapshot(device="cpu", usage=0.0), 0.8) is True
    assert ClearWhenUseful()(None, 0.8) is True


def test_clear_always_needs_no_reading() -> None:
    """ClearAlways asks nothing of the device."""
    assert ClearAlways.needs_snapshot is False
    assert ClearAlways()(None, 0.8) is True


def test_batch_with_clear_when_useful_skips_needless_clears() -> None:
    """On a fake GPU with little cached memory, ClearWhenUseful empties the cache only when
    the cache grows past its limit."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=2 * GiB, reserved=2 * GiB)
        with managed_batch(
            "cuda", every=1, cache_policy=ClearWhenUseful(min_cached_bytes=GiB)
        ) as batch:
            for item in batch.track(range(6)):
                if item == 3:
                    fake.set_memory(reserved=4 * GiB)
        cleared = fake.count("torch.cuda.empty_cache")
    assert cleared == 1
    assert batch.report.cache_clears == 1


def test_cleanups_in_a_batch_follow_the_batch_cache_policy() -> None:
    """A decorated call in a batch drives the batch's cleanup, under the batch's policy."""
    manager = RecordingManager()

    @auto_clear(every=1, cache_policy=ClearAlways())
    def work() -> None:
        pass

    class NeverClear(ClearWhenUseful):
        def __call__(self, snapshot: MemorySnapshot | None, memory_threshold: float) -> bool:
            return False

    with managed_batch(manager=manager, every=1, cache_policy=NeverClear()):
        work()
    assert manager.events.count("clear_cache") == 0
    assert manager.events.count("trigger_gc_if_needed") == 2


def test_bad_cache_policy_is_refused() -> None:
    """Something that is not a cache policy fails at once, naming the parameter."""
    with pytest.raises(TypeError, match="cache_policy"):
        managed_batch(cache_policy="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache_policy"):
        auto_clear(cache_policy=lambda snapshot, threshold: True)  # type: ignore[arg-type]


def test_clear_when_useful_validates_its_limit() -> None:
    """A negative limit is refused."""
    with pytest.raises(ValueError, match="min_cached_bytes"):
        ClearWhenUseful(min_cached_bytes=-1)
