"""memscope.testing's fakes: plugged in through the backend registry, scoped to a context,
exact from many threads; and the torch-patching mode that tests the real backends."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from memscope import MemoryManager
from memscope.backends import (
    available_devices,
    create_backend,
    detect_device,
    registered_backends,
    registered_in_context,
)
from memscope.backends.cuda import CudaBackend
from memscope.exceptions import InvalidArgumentTypeError
from memscope.testing import FakeCall, FakeDevice, GiB, NoAccelerator

# The registry-based fake ---------------------------------------------------------------------


def test_the_registry_fake_leaves_torch_untouched() -> None:
    """FakeDevice replaces no torch function: memscope sees the fake through its registry."""
    originals = (torch.cuda.is_available, torch.cuda.mem_get_info, torch.cuda.empty_cache)
    with FakeDevice("cuda", device_count=2) as fake:
        assert (torch.cuda.is_available, torch.cuda.mem_get_info, torch.cuda.empty_cache) == (
            originals
        )
        assert available_devices() == ["cuda:0", "cuda:1", "cpu"]
        assert detect_device() == torch.device("cuda")
        MemoryManager("cuda:1").clear_cache()
    assert fake.count("torch.cuda.empty_cache") == 1
    assert available_devices() == ["cpu"]


def test_the_stand_in_is_memscope_s_own_backend_class() -> None:
    """The registry fake serves a subclass of the real CUDA backend, so its code runs."""
    with FakeDevice("cuda"):
        backend = create_backend(torch.device("cuda", 0))
        cuda_backends = [b for b in registered_backends() if b.device_type == "cuda"]
    assert isinstance(backend, CudaBackend)
    assert type(backend) is not CudaBackend
    assert len(cuda_backends) == 1


def test_two_threads_each_see_only_their_own_fake() -> None:
    """A fake entered in one thread is not the device of another thread that has its own."""
    entered = threading.Barrier(2)
    seen: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def run(name: str, device_type: str, count: int) -> None:
        try:
            with FakeDevice(device_type, device_count=count) as fake:
                entered.wait(timeout=10)
                seen[name] = available_devices()
                MemoryManager(device_type).check_memory_usage()
                entered.wait(timeout=10)
            assert fake.count("torch.accelerator.get_memory_info") == (device_type == "xpu")
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=("a", "cuda", 2)),
        threading.Thread(target=run, args=("b", "xpu", 3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen == {"a": ["cuda:0", "cuda:1", "cpu"], "b": ["xpu:0", "xpu:1", "xpu:2", "cpu"]}


def test_a_worker_thread_without_its_own_fake_sees_the_test_s() -> None:
    """A plain thread starts with an empty context, yet sees the fake the test entered."""
    with FakeDevice("cuda", device_count=3), ThreadPoolExecutor(2) as pool:
        assert pool.submit(available_devices).result() == ["cuda:0", "cuda:1", "cuda:2", "cpu"]


def test_asyncio_tasks_with_their_own_fakes_do_not_see_each_other() -> None:
    """Tasks copy their context, so each task's fake is that task's."""

    async def devices_in(device_type: str, count: int, started: asyncio.Event) -> list[str]:
        with FakeDevice(device_type, device_count=count):
            started.set()
            await asyncio.sleep(0)
            return available_devices()

    async def main() -> tuple[list[str], list[str]]:
        first, second = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(devices_in("cuda", 1, first), devices_in("xpu", 2, second))

    cuda_devices, xpu_devices = asyncio.run(main())
    assert cuda_devices == ["cuda:0", "cpu"]
    assert xpu_devices == ["xpu:0", "xpu:1", "cpu"]


def test_one_fake_used_from_many_threads_counts_exactly() -> None:
    """Eight threads clearing and reading through one fake: every call recorded once."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        manager = MemoryManager("cuda")
        manager.check_memory_usage()  # the first reading also asks which allocator runs
        fake.calls.clear()

        def work() -> None:
            for _ in range(250):
                manager.clear_cache()
                manager.check_memory_usage()

        with ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(work) for _ in range(8)]:
                future.result()
    assert fake.count("torch.cuda.empty_cache") == 2000
    assert fake.count("torch.cuda.mem_get_info") == 2000
    assert fake.count("torch.cuda.memory_stats_as_nested_dict") == 2000
    assert len(fake.calls) == 6000


def test_the_fake_s_functions_can_be_called_directly() -> None:
    """fake.function(name) is the recording fake, for code that calls torch itself."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=2 * GiB)
        assert fake.function("torch.cuda.mem_get_info")(0) == (6 * GiB, 8 * GiB)
    assert fake.calls == [FakeCall("torch.cuda.mem_get_info", (0,))]
    with pytest.raises(KeyError, match=r"torch\.cuda\.nothing"):
        fake.function("torch.cuda.nothing")


def test_no_accelerator_hides_backends_but_keeps_their_oom_messages() -> None:
    """Hidden backends report no device; a CUDA OOM message is still recognised."""
    from memscope import is_oom_error

    with NoAccelerator():
        assert available_devices() == ["cpu"]
        assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))


def test_registered_in_context_refuses_what_is_not_a_backend_class() -> None:
    """A stand-in that is not a backend class is a clear error naming it."""
    with (
        pytest.raises(InvalidArgumentTypeError, match="replacements"),
        registered_in_context({CudaBackend: object}),  # type: ignore[dict-item]
    ):
        pass


# The torch-patching suite: the real backends' torch calls -----------------------------------


def test_patched_torch_reading_makes_two_torch_calls() -> None:
    """The real CUDA backend reads mem_get_info and the nested statistics, nothing else."""
    with FakeDevice("cuda", device_count=2, total=80 * GiB, patch_torch=True) as fake:
        assert torch.cuda.mem_get_info is fake.function("torch.cuda.mem_get_info")
        fake.set_memory(1, allocated=20 * GiB, reserved=30 * GiB, other_processes=5 * GiB)
        manager = MemoryManager("cuda:1")
        assert type(create_backend(torch.device("cuda:1"))) is CudaBackend
        manager.check_memory_usage()  # the first reading also asks which allocator runs
        fake.calls.clear()
        usage = manager.check_memory_usage()
    assert usage == 25 / 80
    assert fake.calls == [
        FakeCall("torch.cuda.mem_get_info", (1,)),
        FakeCall("torch.cuda.memory_stats_as_nested_dict", (1,)),
    ]
    assert torch.cuda.mem_get_info is not fake.function("torch.cuda.mem_get_info")


def test_patched_torch_mode_is_restored_after_the_block() -> None:
    """Every function patch_torch replaced is torch's own again after the block."""
    before = {name: getattr(torch.cuda, name) for name in ("is_available", "memory_stats")}
    with FakeDevice("cuda", patch_torch=True, without=("memory_stats_as_nested_dict",)):
        assert not hasattr(torch.cuda, "memory_stats_as_nested_dict")
    assert {name: getattr(torch.cuda, name) for name in before} == before
    assert hasattr(torch.cuda, "memory_stats_as_nested_dict")


@pytest.mark.parametrize("patch_torch", [False, True])
def test_clearing_and_reading_in_a_managed_batch_step_is_at_most_two_torch_calls(
    patch_torch: bool,
) -> None:
    """A reading is two torch calls (mem_get_info + one statistics call) in both modes."""
    from memscope import managed_batch

    with FakeDevice("cuda", total=8 * GiB, patch_torch=patch_torch) as fake:
        fake.set_memory(allocated=GiB, reserved=GiB)
        with managed_batch("cuda", every=1) as batch:
            fake.calls.clear()
            for _ in range(5):
                batch.step()
            calls = [call.function for call in fake.calls]
    assert calls == ["torch.cuda.mem_get_info", "torch.cuda.memory_stats_as_nested_dict"] * 5
