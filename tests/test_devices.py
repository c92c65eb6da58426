"""How MemoryManager turns what callers pass as ``device`` into a device it can query."""

from __future__ import annotations

import pytest
import torch

from memscope import DeviceUnavailableError, InvalidArgumentTypeError, MemoryManager, MemscopeError
from memscope.backends import available_devices
from memscope.testing import FakeDevice, NoAccelerator


def test_torch_device_is_kept_as_given() -> None:
    """``manager.device`` is the torch.device the caller passed."""
    assert MemoryManager(torch.device("cpu")).device == torch.device("cpu")


def test_string_device_becomes_torch_device() -> None:
    """A device string is parsed into the equal torch.device."""
    manager = MemoryManager("cpu")
    assert manager.device == torch.device("cpu")
    assert isinstance(manager.device, torch.device)


def test_none_detects_cpu_without_accelerators() -> None:
    """Auto-detection falls back to the CPU when no accelerator is present."""
    assert MemoryManager().device == torch.device("cpu")


@pytest.fixture
def real_looking_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch reports two CUDA devices, as on a GPU workstation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.usefixtures("real_looking_cuda")
def test_no_accelerator_makes_a_gpu_machine_look_cpu_only() -> None:
    """Inside NoAccelerator a machine with CUDA offers only the CPU; after it, CUDA again."""
    with NoAccelerator():
        assert available_devices() == ["cpu"]
        assert MemoryManager().device == torch.device("cpu")
    assert torch.cuda.is_available()
    assert torch.cuda.device_count() == 2


@pytest.mark.usefixtures("real_looking_cuda")
def test_a_fake_device_hides_a_real_accelerator_of_another_type() -> None:
    """A fake MPS device on a CUDA machine is the only accelerator auto-detection sees."""
    with FakeDevice("mps") as fake:
        assert available_devices() == ["mps", "cpu"]
        assert MemoryManager().device == torch.device("mps")
    assert "torch.cuda.is_available" not in {call.function for call in fake.calls}
    assert torch.cuda.is_available()


@pytest.mark.real_devices
def test_a_fake_device_hides_a_real_accelerator_of_the_other_kind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake CUDA device on a machine whose torch.accelerator is a real XPU hides the XPU."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("xpu"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 0)
    assert "xpu:0" in available_devices()
    with FakeDevice("cuda"):
        assert available_devices() == ["cuda:0", "cpu"]
    assert "xpu:0" in available_devices()


def test_a_fake_inside_another_keeps_the_outer_device() -> None:
    """Fakes of two families entered together both stay visible, and leave nothing behind."""
    with FakeDevice("cuda"), FakeDevice("xpu", device_count=2):
        assert available_devices() == ["cuda:0", "xpu:0", "xpu:1", "cpu"]
    assert available_devices() == ["cpu"]


def test_none_prefers_cuda_over_everything() -> None:
    """Auto-detection picks CUDA first."""
    with FakeDevice("cuda"):
        assert MemoryManager().device.type == "cuda"


def test_none_picks_mps_without_cuda() -> None:
    """Auto-detection picks MPS when there is no CUDA."""
    with FakeDevice("mps"):
        assert MemoryManager().device.type == "mps"


def test_none_picks_other_accelerator_without_cuda_or_mps() -> None:
    """Auto-detection picks another torch.accelerator device when there is no CUDA or MPS."""
    with FakeDevice("xpu"):
        assert MemoryManager().device == torch.device("xpu")


def test_cuda_without_index_keeps_device_and_resolves_current_index() -> None:
    """``"cuda"`` stays index-free in ``device``; queries target the current device's index."""
    with FakeDevice("cuda", device_count=2, current_device=1) as fake:
        manager = MemoryManager("cuda")
        manager.check_memory_usage()
    assert manager.device == torch.device("cuda")
    assert manager.resolved_device == torch.device("cuda", 1)
    assert fake.calls_to("torch.cuda.mem_get_info")[0].args == (1,)


def test_int_means_cuda_index() -> None:
    """An int names a CUDA device by index."""
    with FakeDevice("cuda", device_count=2):
        manager = MemoryManager(1)
    assert manager.device == torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("device", "named"),
    [
        ("cuda", "'cuda'"),
        ("mps", "'mps'"),
        ("xpu", "'xpu'"),
        ("gpu", "'gpu'"),
        ("cuda:x", "'cuda:x'"),
        (3, "'cuda:3'"),
    ],
)
def test_absent_device_fails_at_construction_naming_it(device: object, named: str) -> None:
    """A device that is not there raises at construction, naming it and what is available."""
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    with pytest.raises(DeviceUnavailableError) as raised:
        MemoryManager(device)  # type: ignore[arg-type]
    message = str(raised.value)
    assert named in message
    assert "available devices: cpu" in message
    assert isinstance(raised.value, MemscopeError)
    assert isinstance(raised.value, ValueError)


def test_index_beyond_device_count_fails() -> None:
    """``cuda:5`` on a two-GPU machine names the device and lists the two that exist."""
    with FakeDevice("cuda", device_count=2), pytest.raises(DeviceUnavailableError) as raised:
        MemoryManager("cuda:5")
    assert "'cuda:5'" in str(raised.value)
    assert "cuda:0, cuda:1, cpu" in str(raised.value)


def test_negative_index_fails() -> None:
    """A negative CUDA index is refused."""
    with pytest.raises(DeviceUnavailableError, match="-1"):
        MemoryManager(-1)


def test_mps_has_no_second_device() -> None:
    """``mps:1`` does not exist: MPS has one device."""
    with FakeDevice("mps"), pytest.raises(DeviceUnavailableError, match="'mps:1'"):
        MemoryManager("mps:1")


@pytest.mark.parametrize("device", [True, 1.5, ["cuda"], object()])
def test_wrong_device_type_is_type_error(device: object) -> None:
    """A device of a type memscope does not accept is a TypeError naming the value."""
    with pytest.raises(InvalidArgumentTypeError, match="device"):
        MemoryManager(device)  # type: ignore[arg-type]
