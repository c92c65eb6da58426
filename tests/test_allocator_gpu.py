"""A real card fragmented on purpose: the allocator's figures, the OOM note's remedy, the
observer's count, expandable segments, cudaMallocAsync and clears that start no CUDA.

Each check runs in a fresh Python process: the allocator reads its settings once, when CUDA
starts, and a fragmented cache must not leak into the other tests. The ``gpu`` marker skips
them without a CUDA device.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.fragmentation import WAYS, run_script, run_workload

pytestmark = pytest.mark.gpu

MiB = 1024**2

FRAGMENTED_OOM = r"""
import json
import torch
from memscope import MemoryManager, managed_batch
from memscope.oom import add_oom_note

MiB = 1024**2
device = torch.device("cuda", 0)
# A 1 GiB cap makes the card small enough to fill in a moment.
torch.cuda.set_per_process_memory_fraction(1024 * MiB / torch.cuda.mem_get_info(device)[1], 0)
manager = MemoryManager(device)
small, large = [], []
with managed_batch(device, every=None) as batch:
    try:
        while True:
            small.append(torch.empty(3 * MiB, dtype=torch.uint8, device=device))
            large.append(torch.empty(5 * MiB, dtype=torch.uint8, device=device))
    except torch.OutOfMemoryError:
        pass
    small.clear()  # every other tensor freed: the cache is full of 3 MiB holes
    try:
        torch.empty(12 * MiB, dtype=torch.uint8, device=device)
        note = None
    except torch.OutOfMemoryError as error:
        note = add_oom_note(error, manager)
    snapshot = manager.snapshot()
report = batch.report
print(json.dumps({
    "note": note,
    "inactive_split": snapshot.inactive_split,
    "cached_but_free": snapshot.cached_but_free,
    "reserved": snapshot.reserved,
    "allocator_ooms": report.allocator_ooms,
    "allocator_ooms_recovered": report.allocator_ooms_recovered,
    "largest_oom_request": report.largest_oom_request,
    "summary": report.summary(),
}))
"""


def run_python(script: str, *, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """``script``'s last line of output, as JSON, from a fresh process with no allocator
    settings but ``variables`` (the benchmark's runner)."""
    return run_script(script, variables=variables)


@pytest.fixture
def cuda(accelerator: str) -> str:
    """The real CUDA device type, or a skip on other accelerators."""
    if accelerator != "cuda":
        pytest.skip("needs CUDA")
    return accelerator


def test_a_fragmented_card_shows_in_the_figures_and_the_note(cuda: str) -> None:
    """Interleaved 3 and 5 MiB tensors, the 3 MiB ones freed: a 12 MiB request fails with
    hundreds of MiB in split blocks, and the note names fragmentation and its remedy; the
    observer counted both OOMs, both recovered (the code caught them)."""
    result = run_python(FRAGMENTED_OOM)
    assert result["inactive_split"] >= 100 * MiB
    assert result["cached_but_free"] >= result["inactive_split"]
    note = result["note"]
    assert note is not None
    assert "reserved but free in fragments" in note
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in note
    assert (result["allocator_ooms"], result["allocator_ooms_recovered"]) == (2, 2)
    assert result["largest_oom_request"] >= 12 * MiB
    assert "2 allocator OOMs, all recovered" in result["summary"]


def test_expandable_segments_reserve_less_than_the_native_allocator(cuda: str) -> None:
    """The same fragmenting workload peaks lower with expandable segments, set through the
    environment or memscope.configure_allocator, which agree."""
    figures = {
        name: run_workload(how, variables, 64, 12) for name, (how, variables) in WAYS.items()
    }
    native, through_environment, through_memscope = figures.values()
    assert native["inactive_split_after_freeing"] > 0
    assert through_environment["peak_reserved"] < native["peak_reserved"]
    assert through_memscope["peak_reserved"] == through_environment["peak_reserved"]


def test_a_clear_starts_no_cuda_and_late_settings_go_to_torch(cuda: str) -> None:
    """Making a manager for cuda:0 and clearing in a process without CUDA leave it
    uninitialised; after CUDA starts, a setting torch can change is applied at run time and
    the backend is refused."""
    result = run_python(
        r"""
import json
import torch
import memscope
from memscope.exceptions import AllocatorSettingsError

manager = memscope.MemoryManager("cuda:0")
manager.clear_cache()
untouched = not torch.cuda.is_initialized()  # neither making the manager nor the clear
torch.empty(1, device="cuda:0")
applied = memscope.configure_allocator(garbage_collection_threshold=0.6)
try:
    memscope.configure_allocator(backend="cudaMallocAsync")
    refused = ""
except AllocatorSettingsError as error:
    refused = str(error)
print(json.dumps({"untouched": untouched, "applied": applied, "refused": refused}))
"""
    )
    assert result["untouched"] is True
    assert result["applied"] == "garbage_collection_threshold:0.6"
    assert result["refused"].startswith("backend='cudaMallocAsync' cannot be applied")


def test_cuda_malloc_async_labels_its_figures_and_says_history_is_off(cuda: str) -> None:
    """Under cudaMallocAsync the allocator's statistics read None and recording history
    gives one WARNING instead of nothing."""
    result = run_python(
        r"""
import json, logging, tempfile
import torch
from memscope import MemoryManager
from memscope.oom import MemoryHistoryRecorder

records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("memscope").addHandler(handler)
logging.getLogger("memscope").setLevel(logging.INFO)
kept = torch.empty(64 * 1024**2, dtype=torch.uint8, device="cuda:0")
snapshot = MemoryManager("cuda:0").snapshot()
started = MemoryHistoryRecorder("cuda:0", tempfile.mkdtemp()).start()
warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
print(json.dumps({
    "backend": torch.cuda.get_allocator_backend(),
    "figures": [snapshot.inactive_split, snapshot.alloc_retries, snapshot.allocator_ooms],
    "reserved": snapshot.reserved,
    "started": started,
    "warnings": warnings,
}))
""",
        variables={"PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync"},
    )
    assert result["backend"] == "cudaMallocAsync"
    assert result["figures"] == [None, None, None]
    assert result["reserved"] > 0
    assert result["started"] is False
    assert len(result["warnings"]) == 1
    assert "cudaMallocAsync" in result["warnings"][0]
