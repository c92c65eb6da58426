"""A real leak on the CPU: 16 MiB tensors appended to a module-level list, seen in the
process's resident memory, named by a LeakWatch, and traced back to the list.

Resident memory is read with :class:`memscope.host.HostMemoryMonitor` (psutil or /proc). The
capacity is the resident memory at the start plus 2 GiB, as a budget would be, so that the
test needs the same few hundred MiB on any machine. The heap is frozen as ``managed_batch``
freezes it, so the list is found by its name even where ``gc.get_referrers`` cannot see it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch

from memscope.exceptions import HostMemoryUnavailableError
from memscope.host import HostMemoryMonitor
from memscope.leaks import LeakWatch
from memscope.reports import LeakFinding
from memscope.testing import GiB, MiB

ITEM_BYTES = 16 * MiB
ITEM_SHAPE = (ITEM_BYTES // 4,)
MAX_ITEMS = 60
"""The leak must be named, and its suspects found, within this many items (960 MiB)."""

LEAKED_OUTPUTS: list[torch.Tensor] = []
"""The list a colorization loop appends its outputs to by mistake."""


def _monitor() -> HostMemoryMonitor | None:
    try:
        return HostMemoryMonitor()
    except HostMemoryUnavailableError:
        return None


MONITOR = _monitor()
pytestmark = pytest.mark.skipif(
    MONITOR is None, reason="needs psutil or /proc to read resident memory"
)


def resident_bytes() -> int:
    assert MONITOR is not None
    return MONITOR.resident_bytes()


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Collect and freeze what exists, as managed_batch does; the list ends up frozen."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        LEAKED_OUTPUTS.clear()
        gc.collect()


def colorize_and_keep(item: int) -> float:
    """One item whose 16 MiB output is appended to LEAKED_OUTPUTS by mistake."""
    # torch.full writes every page, so the memory is resident, not just reserved.
    output = torch.full(ITEM_SHAPE, float(item), dtype=torch.float32)
    LEAKED_OUTPUTS.append(output)
    return float(output[0])


def colorize_and_drop(item: int) -> float:
    """One healthy item: its 16 MiB output is gone when it returns."""
    output = torch.full(ITEM_SHAPE, float(item), dtype=torch.float32)
    return float(output[0])


def run_items(process: object, watch: LeakWatch, *, until_suspects: bool) -> int:
    """Run up to MAX_ITEMS items, collecting and sampling after each; returns items run."""
    assert callable(process)
    for item in range(1, MAX_ITEMS + 1):
        process(item)
        gc.collect()
        finding = watch.observe(item, resident_bytes())
        if until_suspects and finding is not None and finding.suspects:
            return item
    return MAX_ITEMS


@pytest.mark.usefixtures("frozen_heap")
def test_a_real_leak_is_named_and_traced_to_the_list_that_holds_it() -> None:
    """Resident memory growing 16 MiB per item is named with a rate near 16 MiB, and the
    suspects name LEAKED_OUTPUTS with every tensor in it, their shape, dtype and bytes."""
    capacity = resident_bytes() + 2 * GiB
    watch = LeakWatch("cpu", capacity=capacity, sampled="resident")
    items = run_items(colorize_and_keep, watch, until_suspects=True)
    finding = watch.finding
    assert isinstance(finding, LeakFinding), f"not named in {items} items"
    assert finding.active
    assert finding.detected_at_item <= 40
    assert finding.growth_per_item == pytest.approx(ITEM_BYTES, rel=0.15)
    assert finding.exhausted_at_item is not None
    assert finding.exhausted_at_item > items
    assert finding.suspects, f"no suspects after {items} items"
    suspect = finding.suspects[0]
    assert suspect.holder == f"list `LEAKED_OUTPUTS` in module {__name__}"
    assert (suspect.device, suspect.shape, suspect.dtype) == ("cpu", ITEM_SHAPE, "float32")
    assert suspect.count == len(LEAKED_OUTPUTS) == items
    assert suspect.nbytes == items * ITEM_BYTES
    assert finding.search_seconds is not None
    assert 0 < finding.search_seconds < 30


@pytest.mark.usefixtures("frozen_heap")
def test_a_real_loop_that_frees_its_outputs_is_not_a_leak() -> None:
    """The same 16 MiB per item, freed each time, names nothing over the same items."""
    capacity = resident_bytes() + 2 * GiB
    watch = LeakWatch("cpu", capacity=capacity, sampled="resident")
    run_items(colorize_and_drop, watch, until_suspects=False)
    assert watch.finding is None
    growth = watch.growth_per_item
    assert growth is not None
    assert growth < 1 * MiB
