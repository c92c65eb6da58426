"""Byte budgets: parsing sizes, and usage and batch sizes measured against a budget."""

from __future__ import annotations

import json
import logging

import pytest

from memscope import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    parse_bytes,
)
from memscope.testing import FakeDevice, FakeHost, GiB, MiB

PER_IMAGE_1024 = 95_551_488

# parse_bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6GiB", 6 * GiB),
        ("512MB", 512_000_000),
        ("1.5 GB", 1_500_000_000),
        ("1.5gib", 1536 * MiB),
        ("1.5 GIB", 1536 * MiB),
        ("4Gi", 4 * GiB),
        ("  2 KiB ", 2048),
        ("100", 100),
        ("100 B", 100),
        ("100b", 100),
        ("1 kB", 1000),
        ("3 TB", 3 * 1000**4),
        ("1.1 TB", 1_100_000_000_000),
        ("1 PiB", 1024**5),
        (".5KB", 500),
        ("0.5 KiB", 512),
        ("1.1 KiB", 1126),
        ("0", 0),
        (1024, 1024),
        (0, 0),
    ],
)
def test_parse_bytes_reads_decimal_and_binary_units(text: object, expected: int) -> None:
    """KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024, any case, space optional."""
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a size"),
        ("lots", "is not a size"),
        ("1e9", "is not a size"),
        ("6 GX", "unknown unit"),
        ("1,5 GB", "is not a size"),
        ("6 GiB of RAM", "is not a size"),
        ("6G", "ambiguous"),
        ("512m", "ambiguous"),
        ("-1GB", "must not be negative"),
        (-5, "must not be negative"),
    ],
)
def test_parse_bytes_refuses_what_is_not_a_size(text: object, message: str) -> None:
    """Unparsable, ambiguous and negative sizes: ValueError naming the parameter and value."""
    with pytest.raises(InvalidArgumentError, match=message) as raised:
        parse_bytes(text, "limit")
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith("limit")
    assert repr(text) in str(raised.value)


@pytest.mark.parametrize("value", [True, 1.5, 6e9, None, b"6GB", [1024]])
def test_parse_bytes_refuses_other_types(value: object) -> None:
    """bool, float, None, bytes and lists are TypeErrors naming the parameter."""
    with pytest.raises(InvalidArgumentTypeError, match="limit must be a byte count") as raised:
        parse_bytes(value, "limit")
    assert isinstance(raised.value, TypeError)


def test_ambiguous_unit_suggests_both_spellings() -> None:
    """'6G' is refused with the two unambiguous ways to write it."""
    with pytest.raises(ValueError, match="'GB' for 1000\\*\\*n or 'GiB' for 1024\\*\\*n"):
        parse_bytes("6G")


# Invalid budgets -----------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, "0MB", "0.1 B", -1, "-1GiB", "lots", "6G"])
def test_invalid_budgets_are_value_errors_naming_them(budget: object) -> None:
    """Zero, negative and unparsable budgets fail at construction, naming budget and value."""
    with pytest.raises(InvalidArgumentError, match="budget") as raised:
        MemoryManager("cpu", budget=budget)  # type: ignore[arg-type]
    assert repr(budget) in str(raised.value)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("budget", [True, 2.5, 6e9, [GiB]])
def test_budget_of_the_wrong_type_is_a_type_error(budget: object) -> None:
    """A bool, a float or a list is not a budget."""
    with pytest.raises(TypeError, match="budget must be a byte count"):
        MemoryManager("cpu", budget=budget)  # type: ignore[arg-type]


def test_budget_larger_than_the_gpu_is_refused() -> None:
    """A budget above the device's total memory is a ValueError naming it; equal is fine."""
    with FakeDevice("cuda", total=8 * GiB):
        with pytest.raises(ValueError, match=r"budget '9GiB' \(9.0 GiB\) is larger than") as raised:
            MemoryManager("cuda", budget="9GiB")
        assert str(raised.value) == (
            "budget '9GiB' (9.0 GiB) is larger than the total memory of cuda:0 (8.0 GiB)"
        )
        assert MemoryManager("cuda", budget="8GiB").budget == 8 * GiB


def test_budget_larger_than_mps_working_set_is_refused() -> None:
    """On MPS the device's total is Metal's recommended working set."""
    with FakeDevice("mps", total=12 * GiB), pytest.raises(ValueError, match="budget"):
        MemoryManager("mps", budget=13 * GiB)


def test_cpu_budget_larger_than_the_container_is_refused() -> None:
    """On the CPU a budget above the host's effective limit names that limit, its size said
    once."""
    with (
        FakeHost(physical_memory=64 * GiB, cgroup_limit=4 * GiB),
        pytest.raises(ValueError, match="host's memory limit") as raised,
    ):
        MemoryManager("cpu", budget="6GiB")
    assert "cgroup" in str(raised.value)
    assert str(raised.value).count("4.0 GiB") == 1


def test_budget_unchecked_when_the_device_cannot_be_read(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """A failing capacity query at construction warns; the budget is kept unchecked."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.fail("torch.cuda.mem_get_info", RuntimeError("driver gone"))
        manager = MemoryManager("cuda", budget="64GiB")
    assert manager.budget == 64 * GiB
    warnings = [r.getMessage() for r in memscope_log.records if r.levelno == logging.WARNING]
    assert any("check the budget" in message for message in warnings)


# Usage under a budget -----------------------------------------------------------------------


def test_cuda_budget_counts_this_process_reserved_memory() -> None:
    """On CUDA the footprint counted is torch's reserved memory, cache included."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=3 * GiB)
        manager = MemoryManager("cuda", budget="4GiB")
        assert manager.check_memory_usage() == 0.75
        snapshot = manager.snapshot()
    assert snapshot.budget == 4 * GiB
    assert snapshot.budget_used == 3 * GiB


def test_other_processes_do_not_count_against_the_budget() -> None:
    """Sharing a GPU: another process's memory is not this process's footprint."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=2 * GiB, reserved=2 * GiB, other_processes=6 * GiB)
        manager = MemoryManager("cuda", budget="8GiB")
        assert manager.snapshot().budget_used == 2 * GiB
        # The device itself is half full, which is more than a quarter of the budget.
        assert manager.check_memory_usage() == 0.5


def test_budget_never_hides_a_full_device() -> None:
    """When the device is fuller than the budget, the device's usage wins."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=GiB, other_processes=14 * GiB)
        manager = MemoryManager("cuda", budget="12GiB")
        assert manager.check_memory_usage() == 15 / 16


def test_gc_under_budget_empties_the_cache_back_into_budget() -> None:
    """Over the threshold of the budget: collect, empty the cache, footprint back down."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=3 * GiB)
        manager = MemoryManager("cuda", memory_threshold=0.7, budget="4GiB")
        assert manager.trigger_gc_if_needed() is True
        assert fake.count("torch.cuda.empty_cache") == 1
        assert manager.check_memory_usage() == 0.25
        assert manager.trigger_gc_if_needed() is False
    assert manager.stats.gc_runs == 1


def test_mps_budget_counts_driver_allocated_memory() -> None:
    """On MPS the footprint is the Metal driver's allocation for this process."""
    with FakeDevice("mps", total=12 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=2 * GiB)
        manager = MemoryManager("mps", budget="4GiB")
        assert manager.check_memory_usage() == 0.5
        assert manager.snapshot().budget_used == 2 * GiB


def test_other_accelerator_budget() -> None:
    """Budgets work through torch.accelerator devices too."""
    with FakeDevice("xpu", total=16 * GiB) as fake:
        fake.set_memory(allocated=3 * GiB, reserved=3 * GiB)
        assert MemoryManager("xpu", budget="6 GiB").check_memory_usage() == 0.5


def test_cpu_budget_counts_resident_memory_and_turns_host_monitoring_on() -> None:
    """On the CPU a budget measures the process's resident memory."""
    with FakeHost(resident=3 * GiB, physical_memory=64 * GiB) as host:
        manager = MemoryManager("cpu", memory_threshold=0.8, budget="4GiB")
        assert manager.host_monitor is not None
        assert manager.check_memory_usage() == 0.75
        assert manager.trigger_gc_if_needed() is False
        host.set_resident(int(3.5 * GiB))
        assert manager.trigger_gc_if_needed() is True
        snapshot = manager.snapshot()
    assert snapshot.budget_used == snapshot.host_resident == int(3.5 * GiB)
    assert snapshot.host_usage == pytest.approx(3.5 / 64)


def test_budget_snapshot_dict_and_text() -> None:
    """The budget figures are in the JSON-safe dict and in the text."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=3 * GiB)
        snapshot = MemoryManager("cuda", budget="4GiB").snapshot()
    data = json.loads(json.dumps(snapshot.to_dict()))
    assert (data["budget"], data["budget_used"]) == (4 * GiB, 3 * GiB)
    assert "host_limit" not in data
    assert str(snapshot) == (
        "cuda:0: usage 75.0% (device 1.0 GiB of 16.0 GiB used), allocated 1.0 GiB, "
        "reserved 3.0 GiB, free 13.0 GiB, peak allocated 1.0 GiB, budget 3.0 GiB of 4.0 GiB"
    )


def test_repr_shows_the_budget() -> None:
    """repr shows the budget in bytes (and host monitoring, which it implies on the CPU)."""
    with FakeHost(physical_memory=64 * GiB):
        manager = MemoryManager("cpu", budget="1GiB")
    assert repr(manager) == (
        f"MemoryManager(device='cpu', memory_threshold=0.8, host=True, budget={GiB})"
    )


# max_batch_size under a budget --------------------------------------------------------------


def test_max_batch_size_under_budget_reuses_the_cache() -> None:
    """Images that fit = (budget - allocated) // estimate: cached blocks are reused."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=3 * GiB)
        manager = MemoryManager("cuda", budget="4GiB")
        assert manager.max_batch_size((1024, 1024)) == 3 * GiB // PER_IMAGE_1024


def test_max_batch_size_takes_the_device_when_it_is_tighter() -> None:
    """Other processes leave less than the budget: the device's free memory bounds it."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=GiB, other_processes=13 * GiB)
        manager = MemoryManager("cuda", budget="8GiB")
        assert manager.max_batch_size((1024, 1024)) == 2 * GiB // PER_IMAGE_1024


def test_max_batch_size_is_zero_over_budget() -> None:
    """A process past its budget fits no image."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=5 * GiB, reserved=5 * GiB)
        assert MemoryManager("cuda", budget="4GiB").max_batch_size((512, 512)) == 0


def test_cpu_max_batch_size_under_budget() -> None:
    """On the CPU: (budget - resident) // estimate."""
    with FakeHost(resident=GiB, physical_memory=64 * GiB):
        manager = MemoryManager("cpu", budget="4GiB")
        assert manager.max_batch_size((1024, 1024)) == 3 * GiB // PER_IMAGE_1024
