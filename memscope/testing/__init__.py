"""Test memory-managed code without a GPU.

:class:`FakeDevice` stands in for a CUDA, MPS or other accelerator device: while it is
active, memscope's backend of that type is served, through memscope's backend registry, by a
subclass whose torch calls go to recording fakes that answer from figures you set, so a test
can assert both what memscope asked torch and what it made of the answers::

    from memscope import MemoryManager
    from memscope.testing import FakeDevice, GiB

    def test_collects_when_memory_is_tight():
        with FakeDevice("cuda", total=8 * GiB) as fake:
            fake.set_memory(allocated=7 * GiB, reserved=7 * GiB)
            manager = MemoryManager("cuda", memory_threshold=0.8)
            assert manager.trigger_gc_if_needed() is True
            assert fake.count("torch.cuda.empty_cache") == 1

While a fake is active, the faked type is the only accelerator memscope sees: a real CUDA,
MPS or other device of another type looks absent, so a test gives the same answers on a GPU
workstation as on a laptop. :class:`NoAccelerator` hides every real accelerator, for tests of
what happens on a CPU-only machine.

The fakes patch nothing in torch (unless ``FakeDevice(..., patch_torch=True)`` asks for it, to
test memscope's real backends): they apply to the thread or task that entered them and to
threads without a fake of their own. Entering and leaving one also drops the default managers
``@auto_clear`` shares, so none of them outlives the fake device it was made for.

:class:`FakeHost` does the same for the host's memory figures, so that host monitoring and
CPU budgets can be tested without filling the machine's RAM.
"""

from memscope.testing._device import FakeDevice, NoAccelerator
from memscope.testing._errors import RecordingManager, oom_error
from memscope.testing._host import FakeHost
from memscope.testing._records import FakeCall, FakeMemory, GiB, MiB

__all__ = [
    "FakeCall",
    "FakeDevice",
    "FakeHost",
    "FakeMemory",
    "GiB",
    "MiB",
    "NoAccelerator",
    "RecordingManager",
    "oom_error",
]
