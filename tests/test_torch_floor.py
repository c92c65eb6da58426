"""torch 2.1 is memscope's floor: every newer call the backends make is looked up and has a
fallback, proved here by hiding it; and the allocator figures a reading carries."""

from __future__ import annotations

import types

import pytest
import torch

from memscope import MemoryManager
from memscope.backends import available_devices, create_backend, registered_in_context
from memscope.backends.accelerator import AcceleratorBackend
from memscope.backends.cuda import CudaBackend
from memscope.testing import FakeCall, FakeDevice, GiB


def _reading(device: str):  # type: ignore[no-untyped-def]
    return create_backend(torch.device(device)).read_memory()


# CUDA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_torch", [False, True])
def test_cuda_without_nested_statistics_falls_back_to_memory_stats(patch_torch: bool) -> None:
    """Without memory_stats_as_nested_dict the flattened memory_stats gives the same figures."""
    figures = {}
    for without in ((), ("memory_stats_as_nested_dict",)):
        with FakeDevice("cuda", total=16 * GiB, without=without, patch_torch=patch_torch) as fake:
            fake.set_memory(allocated=3 * GiB, reserved=5 * GiB, inactive_split=GiB)
            fake.set_memory(alloc_retries=2, allocator_ooms=1)
            backend = create_backend(torch.device("cuda:0"))
            fake.calls.clear()
            figures[without] = backend.read_memory()
            calls = [call.function for call in fake.calls]
        expected = (
            "torch.cuda.memory_stats" if without else "torch.cuda.memory_stats_as_nested_dict"
        )
        # The first reading of a backend also asks, once, which allocator runs.
        assert calls == ["torch.cuda.mem_get_info", expected, "torch.cuda.get_allocator_backend"]
    assert figures[()] == figures[("memory_stats_as_nested_dict",)]


def test_cuda_reading_carries_the_allocator_s_fragmentation_figures() -> None:
    """inactive_split, alloc_retries and allocator_ooms come from the same statistics call."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(
            allocated=GiB,
            reserved=9 * GiB,
            inactive_split=7 * GiB,
            alloc_retries=3,
            allocator_ooms=2,
        )
        reading = _reading("cuda")
    assert (reading.inactive_split, reading.alloc_retries, reading.allocator_ooms) == (
        7 * GiB,
        3,
        2,
    )
    assert reading.cached_but_free == 8 * GiB
    assert reading.used == 16 * GiB - 7 * GiB - 8 * GiB


def test_cuda_allocator_backend_is_asked_once_and_none_before_torch_2_0() -> None:
    """get_allocator_backend is asked once per backend; without it the answer is None."""
    with FakeDevice("cuda", allocator_backend="cudaMallocAsync") as fake:
        backend = create_backend(torch.device("cuda:0"))
        assert isinstance(backend, CudaBackend)
        assert [backend.allocator_backend(), backend.allocator_backend()] == ["cudaMallocAsync"] * 2
    assert fake.count("torch.cuda.get_allocator_backend") == 1
    with FakeDevice("cuda", without=("get_allocator_backend",)):
        backend = create_backend(torch.device("cuda:0"))
        assert isinstance(backend, CudaBackend)
        assert backend.allocator_backend() is None


def test_cuda_memory_history_is_off_under_cuda_malloc_async(tmp_path: object) -> None:
    """Under cudaMallocAsync torch records no history: memscope says it cannot, and asks not."""
    with FakeDevice("cuda", allocator_backend="cudaMallocAsync") as fake:
        backend = create_backend(torch.device("cuda:0"))
        assert backend.start_memory_history(1000) is False
        assert backend.dump_memory_history(f"{tmp_path}/x.pickle") is False
        backend.stop_memory_history()
    assert fake.count("torch.cuda.memory._record_memory_history") == 0


def test_cuda_without_the_history_recorder_records_nothing() -> None:
    """A torch without _record_memory_history / _dump_snapshot: False, no error."""
    with FakeDevice("cuda", without=("_record_memory_history", "_dump_snapshot")):
        backend = create_backend(torch.device("cuda:0"))
        assert backend.start_memory_history(1000) is False
        assert backend.dump_memory_history("never-written.pickle") is False
        backend.stop_memory_history()


# MPS -----------------------------------------------------------------------------------------


def test_mps_capacity_is_asked_once() -> None:
    """recommended_max_memory is fixed for the process: two readings, one call, two calls each."""
    with FakeDevice("mps", total=12 * GiB) as fake:
        manager = MemoryManager("mps")
        fake.calls.clear()
        manager.check_memory_usage()
        manager.check_memory_usage()
    assert fake.count("torch.mps.recommended_max_memory") == 1
    assert len(fake.calls) == 5


def test_mps_without_driver_allocated_memory_reports_no_usage() -> None:
    """Without driver_allocated_memory there is no usage to read: 0.0, allocated still known."""
    with FakeDevice("mps", without=("driver_allocated_memory",)) as fake:
        fake.set_memory(allocated=2 * GiB)
        manager = MemoryManager("mps")
        assert manager.check_memory_usage() == 0.0
        assert manager.snapshot().allocated == 2 * GiB


def test_mps_without_empty_cache_clears_nothing() -> None:
    """A torch without torch.mps.empty_cache: clear_cache does nothing and raises nothing."""
    with FakeDevice("mps", without=("empty_cache",)) as fake:
        fake.set_memory(allocated=GiB, reserved=3 * GiB)
        MemoryManager("mps").clear_cache()
        assert fake.memory[0].reserved == 3 * GiB
    assert fake.count("torch.mps.empty_cache") == 0


@pytest.mark.parametrize(
    "hidden", ["recommended_max_memory", "driver_allocated_memory", "empty_cache"]
)
def test_mps_with_a_newer_call_hidden_in_torch_itself(
    hidden: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real MPS backend on a torch.mps without the call: no AttributeError."""
    with FakeDevice("mps", patch_torch=True, without=(hidden,)) as fake:
        assert not hasattr(torch.mps, hidden)
        manager = MemoryManager("mps")
        manager.clear_cache()
        manager.check_memory_usage()
    assert fake.count(f"torch.mps.{hidden}") == 0


# Other accelerators --------------------------------------------------------------------------


def test_accelerator_without_memory_calls_reports_no_figures() -> None:
    """torch 2.6-2.7 have torch.accelerator but not its memory calls: no figures, no error."""
    missing = ("get_memory_info", "memory_stats", "empty_cache", "reset_peak_memory_stats")
    with FakeDevice("xpu", without=missing) as fake:
        manager = MemoryManager("xpu")
        assert manager.check_memory_usage() == 0.0
        manager.clear_cache()
        manager.reset_peak_memory_stats()
    assert {call.function for call in fake.calls} <= {
        "torch.accelerator.is_available",
        "torch.accelerator.current_accelerator",
        "torch.accelerator.current_device_index",
        "torch.accelerator.device_count",
    }


def test_before_torch_accelerator_an_xpu_is_found_through_torch_xpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without torch.accelerator (torch < 2.6) torch.xpu serves detection and readings."""
    calls: list[str] = []

    def recorded(name: str, answer: object) -> object:
        def function(*args: object) -> object:
            calls.append(name)
            return answer

        return function

    stats = {"allocated_bytes.all.current": GiB, "reserved_bytes.all.current": 2 * GiB}
    xpu = types.SimpleNamespace(
        is_available=recorded("is_available", True),
        device_count=recorded("device_count", 1),
        current_device=recorded("current_device", 0),
        mem_get_info=recorded("mem_get_info", (6 * GiB, 8 * GiB)),
        memory_stats=recorded("memory_stats", stats),
    )
    monkeypatch.setattr(AcceleratorBackend, "accelerator", None)
    monkeypatch.setattr(torch, "xpu", xpu, raising=False)
    with registered_in_context({AcceleratorBackend: AcceleratorBackend}):
        assert available_devices() == ["xpu:0", "cpu"]
        manager = MemoryManager("xpu")
        calls.clear()
        usage = manager.check_memory_usage()
    # free 6 of 8, 1 GiB cached but free: 8 - 6 - 1 = 1 GiB used.
    assert usage == 1 / 8
    assert calls == ["mem_get_info", "memory_stats"]


# The fake's model ----------------------------------------------------------------------------


def test_a_neighbour_cannot_take_what_the_process_reserves() -> None:
    """A simulated neighbour gets at most total - reserved; free is what the card has."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(allocated=4 * GiB, reserved=10 * GiB)
        fake.set_memory(other_processes=20 * GiB)
        memory = fake.memory[0]
        assert (memory.other_processes, memory.free) == (6 * GiB, 0)
        assert fake.function("torch.cuda.mem_get_info")(0) == (0, 16 * GiB)
        MemoryManager("cuda").clear_cache()
        assert memory.free == 6 * GiB


def test_the_process_cannot_reserve_what_a_neighbour_holds() -> None:
    """Reserving past total - other_processes is refused, naming the figures."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_memory(other_processes=10 * GiB)
        with pytest.raises(ValueError, match="other_processes"):
            fake.set_memory(allocated=8 * GiB)
        assert (fake.memory[0].allocated, fake.memory[0].reserved) == (0, 0)


def test_a_backend_makes_its_torch_device_once() -> None:
    """device is built once per backend, not on every reading."""
    with FakeDevice("cuda"):
        backend = create_backend(torch.device("cuda:0"))
    assert backend.device is backend.device
    assert backend.device == torch.device("cuda", 0)


def test_a_reading_is_a_tuple() -> None:
    """Readings are NamedTuples: cheap to build on every step."""
    with FakeDevice("cuda"):
        reading = _reading("cuda:0")
    assert isinstance(reading, tuple)
    assert FakeCall("x") == ("x", (), ())
