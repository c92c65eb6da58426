"""The CPU leak of issue 6, for real: cycles holding big tensors that only memscope collects.

Python's automatic collector runs after a count of new container objects, not bytes. An
item that leaves one reference cycle holding a 16 MiB tensor creates only a couple of such
objects, so 100 items never trigger it and resident memory grows by 1.6 GB. A manager
watching the host against a budget collects as the budget fills up.

Resident memory is read here straight from psutil or /proc, not through memscope. The budget
is relative to the resident memory when each test starts, since the interpreter, pytest and
torch already hold a few hundred MiB.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from memscope import MemoryManager
from memscope.testing import MiB

ITEMS = 100
ITEM_BYTES = 16 * MiB
BUDGET_HEADROOM = 8 * ITEM_BYTES
"""The budget is the resident memory at the start of the test plus room for eight items."""


def _resident_reader() -> Callable[[], int] | None:
    try:
        process = importlib.import_module("psutil").Process()
    except ImportError:
        statm = Path("/proc/self/statm")
        if not statm.exists():
            return None
        page_size = os.sysconf("SC_PAGE_SIZE")
        return lambda: int(statm.read_text().split()[1]) * page_size
    return lambda: int(process.memory_info().rss)


resident_bytes = _resident_reader()
pytestmark = pytest.mark.skipif(
    resident_bytes is None, reason="needs psutil or /proc to read resident memory"
)


class LeakyItem:
    """What one image leaves behind: itself in a cycle, holding a filled tensor."""

    __slots__ = ("cycle", "tensor")

    def __init__(self) -> None:
        # torch.ones writes every page, so the memory is resident, not just reserved.
        self.tensor = torch.ones(ITEM_BYTES // 4, dtype=torch.float32)
        self.cycle = self


def process_one_item() -> float:
    item = LeakyItem()
    return float(item.tensor[0])


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Collect, then freeze what exists, so collections inside the test stay cheap.

    The freeze happens before the loop, so every cycle the loop leaves is collectable.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


def automatic_collections() -> int:
    return sum(generation["collections"] for generation in gc.get_stats())


def measure_resident() -> int:
    assert resident_bytes is not None
    return resident_bytes()


def test_without_memscope_the_cycles_grow_past_the_budget(frozen_heap: None) -> None:
    """The plain loop grows past budget plus one item: the automatic collector never runs.

    The loop stops as soon as it is past, to spare the machine the full 1.6 GB.
    """
    start = measure_resident()
    budget = start + BUDGET_HEADROOM
    peak = start
    collections_before = automatic_collections()
    for _ in range(ITEMS):
        process_one_item()
        peak = max(peak, measure_resident())
        if peak > budget + ITEM_BYTES:
            break
    assert peak > budget + ITEM_BYTES
    assert automatic_collections() == collections_before


def test_manager_with_host_budget_keeps_resident_memory_bounded(frozen_heap: None) -> None:
    """trigger_gc_if_needed after each item keeps the peak under budget plus one item."""
    start = measure_resident()
    budget = start + BUDGET_HEADROOM
    manager = MemoryManager("cpu", host=True, budget=budget)
    peak = start
    for _ in range(ITEMS):
        process_one_item()
        peak = max(peak, measure_resident())
        manager.trigger_gc_if_needed()
    assert peak <= budget + ITEM_BYTES, (
        f"peak {peak - start} bytes over the start, budget {BUDGET_HEADROOM}"
    )
    assert manager.stats.gc_runs >= 1
    assert manager.snapshot().budget_used is not None


def test_managed_batch_with_host_budget_keeps_resident_memory_bounded() -> None:
    """Inside managed_batch("cpu", budget=...), the issue's loop of 100 leaky
    items peaks under budget plus one item, and the report carries the host figures."""
    from memscope import managed_batch

    gc.collect()
    start = measure_resident()
    budget = start + BUDGET_HEADROOM
    peak = start
    with managed_batch("cpu", budget=budget) as batch:
        for _ in batch.track(range(ITEMS)):
            process_one_item()
            peak = max(peak, measure_resident())
    assert peak <= budget + ITEM_BYTES, (
        f"peak {peak - start} bytes over the start, budget {BUDGET_HEADROOM}"
    )
    report = batch.report
    assert report.items == ITEMS
    assert report.gc_runs >= 1
    assert report.budget == budget
    assert report.host_resident_start is not None
    assert report.host_resident_end is not None
    assert report.host_limit is not None
    assert "budget" in report.summary()
