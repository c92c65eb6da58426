"""MemoryManager's threshold GC, snapshots, batch sizing and statistics."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging

import pytest

from memscope import ImageMemoryModel, MemoryManager, MemorySnapshot
from memscope.exceptions import MemoryFiguresUnavailableError
from memscope.manager import ManagerStats
from memscope.testing import FakeCall, FakeDevice, GiB, MiB


@pytest.fixture
def recorded_gc(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record gc.collect() calls in the same list order as the fake's calls."""
    events: list[str] = []
    real_collect = gc.collect

    def collect(*args: int) -> int:
        events.append("gc.collect")
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", collect)
    return events


def test_no_gc_below_threshold(recorded_gc: list[str]) -> None:
    """Usage below the threshold: no collection, no cache clear, returns False."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_usage(0.79)
        manager = MemoryManager("cuda", memory_threshold=0.8)
        assert manager.trigger_gc_if_needed() is False
    assert recorded_gc == []
    assert fake.count("torch.cuda.empty_cache") == 0
    assert manager.stats == ManagerStats()


def test_gc_at_threshold_collects_then_clears(monkeypatch: pytest.MonkeyPatch) -> None:
    """Usage equal to the threshold collects, then empties the cache, and returns True."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        real_collect = gc.collect

        def collect(*args: int) -> int:
            fake.calls.append(FakeCall("gc.collect"))
            return real_collect(*args)

        monkeypatch.setattr(gc, "collect", collect)
        fake.set_usage(0.8)
        manager = MemoryManager("cuda", memory_threshold=0.8)
        fake.calls.clear()
        assert manager.trigger_gc_if_needed() is True
    functions = [call.function for call in fake.calls]
    assert functions == [
        "torch.cuda.mem_get_info",
        "torch.cuda.memory_stats_as_nested_dict",
        "torch.cuda.get_allocator_backend",  # asked once, at the backend's first reading
        "gc.collect",
        "torch.cuda.empty_cache",
    ]
    assert manager.stats.gc_runs == 1
    assert manager.stats.cache_clears == 1
    assert manager.stats.gc_seconds > 0


def test_gc_clears_the_cache_exactly_once() -> None:
    """A collection empties the cache once, after its usage query."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_usage(0.95)
        manager = MemoryManager("cuda")
        fake.calls.clear()
        manager.trigger_gc_if_needed()
    functions = [call.function for call in fake.calls]
    assert functions.count("torch.cuda.empty_cache") == 1
    assert functions.index("torch.cuda.empty_cache") > functions.index("torch.cuda.mem_get_info")


def test_gc_logs_usage_before_and_after_at_debug(memscope_log: pytest.LogCaptureFixture) -> None:
    """The debug line names the usage that triggered it and the usage after."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.script_usage([0.9, 0.3])
        MemoryManager("cuda").trigger_gc_if_needed()
    debug = [r.getMessage() for r in memscope_log.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1
    assert "usage 90.0%" in debug[0]
    assert "usage now 30.0%" in debug[0]


def test_gc_on_cpu_never_runs() -> None:
    """The CPU reports 0.0, so threshold GC never fires there (as in the Cobra
    MemoryManager API)."""
    manager = MemoryManager("cpu", memory_threshold=0.01)
    assert manager.trigger_gc_if_needed() is False
    assert manager.stats.gc_runs == 0


def test_stats_accumulate_and_are_immutable_copies() -> None:
    """stats counts clears and GC runs; the object read is a frozen copy."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        manager = MemoryManager("cuda")
        before = manager.stats
        manager.clear_cache()
        manager.clear_cache()
        fake.set_usage(0.9)
        manager.trigger_gc_if_needed()
    assert before == ManagerStats(0, 0, 0.0)
    assert manager.stats.cache_clears == 3
    assert manager.stats.gc_runs == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        manager.stats.gc_runs = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), 23_887_872), ((1024, 1024), 95_551_488), ((2048, 2048), 382_205_952)],
)
def test_default_estimates_match_the_seed(size: tuple[int, int], expected: int) -> None:
    """The Cobra MemoryManager API's three example estimates, to the byte."""
    assert MemoryManager("cpu").estimate_memory_required(size) == expected


def test_estimate_of_a_rectangle_follows_the_formula() -> None:
    """A non-square image: each term of the model, by hand."""
    width, height = 640, 480
    pixels = width * height
    image = pixels * 3 * 4
    latent = (pixels // 64) * 4 * 4
    expected = int(1.5 * (image + latent + 2 * latent + 4 * image))
    assert MemoryManager("cpu").estimate_memory_required((width, height)) == expected


def test_custom_model_describes_an_fp16_pipeline() -> None:
    """fp16 with twelve half-resolution references, by hand."""
    model = ImageMemoryModel(bytes_per_element=2, references=12, reference_scale=0.5)
    pixels = 1024 * 1024
    image = pixels * 3 * 2
    latent = (pixels // 64) * 4 * 2
    references = 12 * (512 * 512 * 3 * 2)
    expected = int(1.5 * (image + latent + 2 * latent + references))
    manager = MemoryManager("cpu", memory_model=model)
    assert manager.estimate_memory_required((1024, 1024)) == expected
    assert model((1024, 1024)) == expected


def test_memory_model_is_immutable_and_validated() -> None:
    """The model cannot be changed in place, and bad assumptions are refused by name."""
    model = ImageMemoryModel()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.references = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="references"):
        ImageMemoryModel(references=-1)
    with pytest.raises(ValueError, match="overhead"):
        ImageMemoryModel(overhead=0)
    with pytest.raises(TypeError, match="bytes_per_element"):
        ImageMemoryModel(bytes_per_element=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "error"),
    [
        ((0, 512), ValueError),
        ((512, -1), ValueError),
        ((512,), ValueError),
        ((1, 2, 3), ValueError),
        ((512.0, 512), TypeError),
        ((True, 512), TypeError),
        (None, TypeError),
        ("512x512", TypeError),
        (512, TypeError),
    ],
)
def test_bad_image_sizes_name_the_parameter(size: object, error: type[Exception]) -> None:
    """Zero, negative, non-integer, bool, wrong-length and missing sizes are refused."""
    with pytest.raises(error, match="image_size"):
        MemoryManager("cpu").estimate_memory_required(size)  # type: ignore[arg-type]


def test_list_image_size_is_accepted() -> None:
    """A [width, height] list works like a tuple."""
    assert MemoryManager("cpu").estimate_memory_required([512, 512]) == 23_887_872  # type: ignore[arg-type]


def test_max_batch_size_divides_available_memory() -> None:
    """Images that fit = (total - used) // estimate, cached-but-free memory counting as free."""
    per_image = 95_551_488
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=3 * GiB, reserved=5 * GiB)
        fits = MemoryManager("cuda").max_batch_size((1024, 1024))
    assert fits == (8 * GiB - 3 * GiB) // per_image


def test_max_batch_size_is_zero_when_full() -> None:
    """A full device fits no image."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(1.0)
        assert MemoryManager("cuda").max_batch_size((512, 512)) == 0


def test_max_batch_size_on_cpu_is_a_clear_error() -> None:
    """The CPU reports no capacity, so the question has no answer there."""
    with pytest.raises(MemoryFiguresUnavailableError, match="cpu"):
        MemoryManager("cpu").max_batch_size((512, 512))


def test_snapshot_is_immutable_and_serialisable() -> None:
    """A snapshot is frozen and its dict survives JSON."""
    with FakeDevice("cuda", total=4 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=2 * GiB)
        snapshot = MemoryManager("cuda").snapshot()
    assert isinstance(snapshot, MemorySnapshot)
    with pytest.raises(AttributeError):
        snapshot.usage = 0.0  # type: ignore[misc]
    data = json.loads(json.dumps(snapshot.to_dict()))
    assert data == {
        "device": "cuda:0",
        "usage": 0.25,
        "allocated": GiB,
        "reserved": 2 * GiB,
        "free": 2 * GiB,
        "total": 4 * GiB,
        "used": GiB,
        "peak_allocated": GiB,
        "peak_reserved": 2 * GiB,
        "inactive_split": 0,
        "alloc_retries": 0,
        "allocator_ooms": 0,
    }


def test_snapshot_peak_follows_reset() -> None:
    """reset_peak_memory_stats starts the peak afresh on the manager's device."""
    with FakeDevice("cuda", total=4 * GiB) as fake:
        manager = MemoryManager("cuda")
        fake.set_memory(allocated=3 * GiB)
        fake.set_memory(allocated=GiB, reserved=GiB)
        assert manager.snapshot().peak_allocated == 3 * GiB
        manager.reset_peak_memory_stats()
        assert manager.snapshot().peak_allocated == GiB
    assert FakeCall("torch.cuda.reset_peak_memory_stats", (0,)) in fake.calls


def test_cpu_snapshot_str_says_no_figures() -> None:
    """A CPU snapshot says plainly that there are no figures."""
    assert "no memory figures" in str(MemoryManager("cpu").snapshot())


def test_repr_names_device_and_threshold() -> None:
    """repr shows the concrete device and the threshold."""
    assert repr(MemoryManager("cpu", 0.7)) == "MemoryManager(device='cpu', memory_threshold=0.7)"


def test_mib_constant() -> None:
    """The testing module's size constants are binary units."""
    assert MiB * 1024 == GiB
