"""Several GPUs in one machine: every query targets the manager's own device, and under
torchrun auto-detection picks the process's own GPU from LOCAL_RANK."""

from __future__ import annotations

import pytest
import torch

from memscope import DeviceUnavailableError, MemoryManager, managed_batch
from memscope.testing import FakeCall, FakeDevice, GiB

INDEXED_CUDA_FUNCTIONS = (
    "torch.cuda.mem_get_info",
    "torch.cuda.memory_stats_as_nested_dict",
    "torch.cuda.reset_peak_memory_stats",
)
"""Every torch.cuda function memscope calls that takes a device index."""


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without a launcher's variables, whatever runs the suite."""
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def two_gpus_current_zero() -> FakeDevice:
    """Two 10 GiB GPUs with different loads; cuda:0 is the current device."""
    return FakeDevice("cuda", device_count=2, total=10 * GiB, current_device=0)


def assert_only_index(fake: FakeDevice, index: int) -> None:
    """Every index-taking call went to ``index``, each was made, and no call went without."""
    for function in INDEXED_CUDA_FUNCTIONS:
        arguments = {call.args for call in fake.calls_to(function)}
        assert arguments == {(index,)}, function


def test_every_query_and_reset_of_a_cuda_1_manager_targets_cuda_1() -> None:
    """A cuda:1 manager passes index 1 to all six index-taking calls while cuda:0 is current."""
    with two_gpus_current_zero() as fake:
        fake.set_memory(0, allocated=1 * GiB, reserved=2 * GiB)
        fake.set_memory(1, allocated=7 * GiB, reserved=8 * GiB)
        manager = MemoryManager("cuda:1")
        manager.check_memory_usage()  # the first reading also asks which allocator runs
        fake.calls.clear()
        snapshot = manager.snapshot()
        manager.reset_peak_memory_stats()
        manager.clear_cache()
    assert fake.calls == [
        FakeCall("torch.cuda.mem_get_info", (1,)),
        FakeCall("torch.cuda.memory_stats_as_nested_dict", (1,)),
        FakeCall("torch.cuda.reset_peak_memory_stats", (1,)),
        FakeCall("torch.cuda.empty_cache"),
    ]
    assert (snapshot.device, snapshot.allocated, snapshot.reserved) == ("cuda:1", 7 * GiB, 8 * GiB)
    assert snapshot.peak_allocated == 7 * GiB
    assert snapshot.usage == 0.7


def test_managed_batch_on_cuda_1_resets_and_reads_cuda_1_only() -> None:
    """managed_batch("cuda:1") resets, reads and reports cuda:1's peak, never cuda:0's."""
    with two_gpus_current_zero() as fake:
        fake.set_memory(0, allocated=9 * GiB)
        fake.set_memory(1, allocated=1 * GiB)
        with managed_batch("cuda:1") as batch:
            fake.set_memory(1, allocated=3 * GiB)
            fake.set_memory(1, allocated=2 * GiB)
            batch.step()
    assert_only_index(fake, 1)
    assert batch.report.device == "cuda:1"
    assert batch.report.peak_allocated == 3 * GiB
    # cuda:0's peak was left alone by the batch on cuda:1.
    assert fake.memory[0].peak_allocated == 9 * GiB


def test_empty_cache_releases_cached_blocks_of_every_device() -> None:
    """clear_cache on cuda:1 is torch.cuda.empty_cache(), which empties cuda:0's cache too."""
    with two_gpus_current_zero() as fake:
        fake.set_memory(0, allocated=1 * GiB, reserved=4 * GiB)
        fake.set_memory(1, allocated=2 * GiB, reserved=6 * GiB)
        MemoryManager("cuda:1").clear_cache()
    assert fake.calls_to("torch.cuda.empty_cache") == [FakeCall("torch.cuda.empty_cache")]
    assert [memory.reserved for memory in fake.memory] == [1 * GiB, 2 * GiB]


def test_none_under_torchrun_picks_local_rank_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With LOCAL_RANK=1, device=None means cuda:1 even though cuda:0 is current."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    with two_gpus_current_zero() as fake:
        fake.set_memory(1, allocated=4 * GiB)
        manager = MemoryManager()
        usage = manager.check_memory_usage()
    assert manager.device == torch.device("cuda", 1)
    assert manager.resolved_device == torch.device("cuda", 1)
    assert usage == 0.4
    assert fake.calls_to("torch.cuda.mem_get_info") == [FakeCall("torch.cuda.mem_get_info", (1,))]


def test_managed_batch_under_torchrun_targets_local_rank_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """managed_batch() with LOCAL_RANK=1 makes every index-taking call with index 1."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    with two_gpus_current_zero() as fake, managed_batch() as batch:
        batch.step()
    assert_only_index(fake, 1)
    assert batch.report.device == "cuda:1"


def test_explicit_cuda_follows_current_device_not_local_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``"cuda"`` keeps torch's meaning, the current device, even when LOCAL_RANK differs."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    with two_gpus_current_zero():
        manager = MemoryManager("cuda")
    assert manager.resolved_device == torch.device("cuda", 0)


def test_without_local_rank_none_stays_index_free() -> None:
    """Outside torchrun, device=None is ``cuda`` resolved to the current device, as before."""
    with FakeDevice("cuda", device_count=2, current_device=1):
        manager = MemoryManager()
    assert manager.device == torch.device("cuda")
    assert manager.resolved_device == torch.device("cuda", 1)


def test_local_rank_picks_index_of_other_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCAL_RANK also picks the index of torch.accelerator devices such as XPU."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    with FakeDevice("xpu", device_count=2) as fake:
        manager = MemoryManager()
        manager.check_memory_usage()
        # The accelerator's type is only known while the fake is active.
        assert manager.resolved_device == torch.device("xpu", 1)
    assert fake.calls_to("torch.accelerator.get_memory_info")[0].args == (1,)


@pytest.mark.parametrize("device_type", ["mps", None])
def test_local_rank_is_ignored_by_devices_without_index(
    monkeypatch: pytest.MonkeyPatch, device_type: str | None
) -> None:
    """MPS and the CPU have one device that every process shares, so LOCAL_RANK is ignored."""
    if device_type is None and (torch.cuda.is_available() or torch.backends.mps.is_available()):
        pytest.skip("this machine has an accelerator")
    monkeypatch.setenv("LOCAL_RANK", "3")
    if device_type is None:
        assert MemoryManager().resolved_device == torch.device("cpu")
        return
    with FakeDevice(device_type):
        assert MemoryManager().resolved_device == torch.device(device_type)


@pytest.mark.parametrize("value", ["one", "1.5", "", "-1"])
def test_malformed_local_rank_names_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A LOCAL_RANK that is not an index >= 0 fails at construction, quoting it."""
    monkeypatch.setenv("LOCAL_RANK", value)
    with two_gpus_current_zero(), pytest.raises(DeviceUnavailableError) as raised:
        MemoryManager()
    assert f"LOCAL_RANK={value!r}" in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_local_rank_beyond_device_count_names_variable_and_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LOCAL_RANK=2 on a two-GPU machine names the variable, its value and the GPUs there."""
    monkeypatch.setenv("LOCAL_RANK", "2")
    with two_gpus_current_zero(), pytest.raises(DeviceUnavailableError) as raised:
        MemoryManager()
    message = str(raised.value)
    assert "LOCAL_RANK='2'" in message
    assert "cuda:0, cuda:1, cpu" in message
    assert "device='cuda'" in message
