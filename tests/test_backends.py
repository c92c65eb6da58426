"""Each backend's exact torch calls and the arithmetic memscope makes of the answers."""

from __future__ import annotations

import logging

import pytest

from memscope import MemoryManager
from memscope.backends import registered_backends
from memscope.backends.mps import FALLBACK_FRACTION_OF_HOST_MEMORY, _host_memory_bytes
from memscope.testing import FakeCall, FakeDevice, GiB, MiB


def test_cuda_usage_counts_other_processes_and_treats_cache_as_free() -> None:
    """CUDA usage is (total - free - (reserved - allocated)) / total on the manager's index."""
    with FakeDevice("cuda", device_count=2, total=80 * GiB) as fake:
        # 20 GiB live, 30 GiB reserved (10 GiB cached but free), 5 GiB held by others:
        # the driver reports 80 - 30 - 5 = 45 GiB free, so 80 - 45 - 10 = 25 GiB is used.
        fake.set_memory(1, allocated=20 * GiB, reserved=30 * GiB, other_processes=5 * GiB)
        manager = MemoryManager("cuda:1")
        manager.check_memory_usage()  # the first reading also asks which allocator runs
        fake.calls.clear()
        usage = manager.check_memory_usage()
    assert usage == 25 / 80
    assert fake.calls == [
        FakeCall("torch.cuda.mem_get_info", (1,)),
        FakeCall("torch.cuda.memory_stats_as_nested_dict", (1,)),
    ]


def test_cuda_queries_target_own_index_not_current_device() -> None:
    """A manager for cuda:1 reports cuda:1 while the current device is cuda:0."""
    with FakeDevice("cuda", device_count=2, total=10 * GiB, current_device=0) as fake:
        fake.set_memory(0, allocated=1 * GiB)
        fake.set_memory(1, allocated=9 * GiB)
        manager = MemoryManager("cuda:1")
        snapshot = manager.snapshot()
        manager.reset_peak_memory_stats()
    assert snapshot.usage == 0.9
    assert snapshot.allocated == 9 * GiB
    queried = {call.args for call in fake.calls if call.function != "torch.cuda.device_count"}
    assert queried <= {(), (1,)}
    assert fake.calls[-1] == FakeCall("torch.cuda.reset_peak_memory_stats", (1,))


def test_cuda_clear_cache_calls_empty_cache_once() -> None:
    """clear_cache is exactly one torch.cuda.empty_cache() and frees the cached blocks."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_memory(allocated=2 * GiB, reserved=6 * GiB)
        manager = MemoryManager("cuda")
        fake.calls.clear()
        manager.clear_cache()
    assert fake.calls == [FakeCall("torch.cuda.empty_cache")]
    assert fake.memory[0].reserved == 2 * GiB
    assert manager.stats.cache_clears == 1


def test_mps_usage_is_driver_allocation_over_recommended_maximum() -> None:
    """MPS usage is driver_allocated_memory() / recommended_max_memory()."""
    with FakeDevice("mps", total=12 * GiB) as fake:
        fake.set_memory(allocated=4 * GiB, reserved=9 * GiB)
        manager = MemoryManager("mps")
        fake.calls.clear()
        snapshot = manager.snapshot()
    assert snapshot.usage == 9 / 12
    assert snapshot.allocated == 4 * GiB
    assert snapshot.reserved == 9 * GiB
    assert snapshot.free == 3 * GiB
    assert snapshot.total == 12 * GiB
    assert snapshot.peak_allocated is None
    assert fake.calls == [
        FakeCall("torch.mps.current_allocated_memory"),
        FakeCall("torch.mps.driver_allocated_memory"),
        FakeCall("torch.mps.recommended_max_memory"),
    ]


def test_mps_clear_cache_calls_mps_empty_cache() -> None:
    """On MPS clear_cache is torch.mps.empty_cache()."""
    with FakeDevice("mps") as fake:
        manager = MemoryManager("mps")
        fake.calls.clear()
        manager.clear_cache()
    assert fake.calls == [FakeCall("torch.mps.empty_cache")]


def test_mps_without_recommended_maximum_uses_conservative_host_fraction() -> None:
    """Without recommended_max_memory, capacity is a documented share of host RAM."""
    host = _host_memory_bytes()
    assert host is not None
    with FakeDevice("mps", recommended_max_memory=False) as fake:
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        usage = MemoryManager("mps").check_memory_usage()
    assert fake.count("torch.mps.recommended_max_memory") == 0
    assert fake.count("torch.mps.driver_allocated_memory") == 1
    assert usage == pytest.approx(GiB / int(host * FALLBACK_FRACTION_OF_HOST_MEMORY))


def test_other_accelerator_goes_through_torch_accelerator() -> None:
    """An XPU (or any torch.accelerator device) is queried through torch.accelerator."""
    with FakeDevice("xpu", device_count=2, total=48 * GiB) as fake:
        fake.set_memory(1, allocated=12 * GiB, reserved=20 * GiB, other_processes=4 * GiB)
        manager = MemoryManager("xpu:1")
        fake.calls.clear()
        usage = manager.check_memory_usage()
        manager.clear_cache()
        manager.reset_peak_memory_stats()
    # free = 48 - 20 - 4 = 24; used = 48 - 24 - 8 = 16
    assert usage == 16 / 48
    assert fake.calls == [
        FakeCall("torch.accelerator.get_memory_info", (1,)),
        FakeCall("torch.accelerator.memory_stats", (1,)),
        FakeCall("torch.accelerator.empty_cache"),
        FakeCall("torch.accelerator.reset_peak_memory_stats", (1,)),
    ]


def test_cpu_reports_zero_and_clear_cache_is_a_no_op() -> None:
    """The CPU reports 0.0 usage, no figures, and clear_cache touches nothing."""
    with FakeDevice("cuda") as fake:
        manager = MemoryManager("cpu")
        manager.clear_cache()
        assert manager.check_memory_usage() == 0.0
        snapshot = manager.snapshot()
    assert fake.calls == []
    assert (snapshot.allocated, snapshot.total, snapshot.free) == (None, None, None)


@pytest.mark.parametrize(
    ("allocated", "reserved", "other", "expected"),
    [
        (0, 0, 0, 0.0),
        (10 * GiB, 10 * GiB, 0, 1.0),
        (0, 10 * GiB, 0, 0.0),
        (5 * GiB, 5 * GiB, 5 * GiB, 1.0),
    ],
)
def test_usage_is_between_zero_and_one(
    allocated: int, reserved: int, other: int, expected: float
) -> None:
    """Empty, full, all-cache and shared devices give usages within [0, 1]."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_memory(allocated=allocated, reserved=reserved, other_processes=other)
        assert MemoryManager("cuda").check_memory_usage() == expected


def test_usage_is_clamped_when_figures_disagree() -> None:
    """Inconsistent driver figures never push usage outside [0, 1]."""
    with FakeDevice("cuda", total=10 * GiB) as fake:
        fake.set_memory(allocated=0, reserved=0, other_processes=30 * GiB)
        assert MemoryManager("cuda").check_memory_usage() == 1.0
        fake.set_memory(allocated=0, reserved=30 * GiB, other_processes=0)
        assert MemoryManager("cuda").check_memory_usage() == 0.0


def test_failing_query_logs_one_warning_and_reports_zero(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """A failing backend query returns 0.0 and warns once, not once per call."""
    with FakeDevice("cuda") as fake:
        manager = MemoryManager("cuda")
        fake.fail("torch.cuda.mem_get_info", RuntimeError("driver gone"))
        assert [manager.check_memory_usage() for _ in range(3)] == [0.0, 0.0, 0.0]
        assert manager.trigger_gc_if_needed() is False
    warnings = [record for record in memscope_log.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "driver gone" in warnings[0].getMessage()
    assert "cuda:0" in warnings[0].getMessage()


def test_query_failure_after_recovery_warns_again(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """Once queries work again, a new failure is worth a new warning."""
    with FakeDevice("cuda") as fake:
        manager = MemoryManager("cuda")
        fake.fail("torch.cuda.mem_get_info", RuntimeError("flaky"))
        manager.check_memory_usage()
        fake.clear_failures()
        manager.check_memory_usage()
        fake.fail("torch.cuda.mem_get_info", RuntimeError("flaky again"))
        manager.check_memory_usage()
    warnings = [record for record in memscope_log.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2


def test_backends_are_registered_in_detection_order() -> None:
    """CUDA, then MPS, then other accelerators, then the CPU."""
    order = [backend.device_type for backend in registered_backends()]
    assert order == ["cuda", "mps", "accelerator", "cpu"]


def test_snapshot_str_reads_in_binary_units() -> None:
    """A snapshot prints as usage, sizes in MiB/GiB, and the device name."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=512 * MiB, reserved=GiB)
        text = str(MemoryManager("cuda").snapshot())
    assert text == (
        "cuda:0: 6.2% used (512.0 MiB of 8.0 GiB), allocated 512.0 MiB, "
        "reserved 1.0 GiB, free 7.0 GiB, peak allocated 512.0 MiB"
    )
