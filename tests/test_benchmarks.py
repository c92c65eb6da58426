"""The benchmark suite still runs (a smoke run with tiny sizes; it asserts no timings)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.__main__ import main
from memscope._heap import heap_is_unfrozen


def test_benchmark_runs_and_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny run prints the scenario table, the collection timings and the call overheads."""
    arguments = ["--items", "2", "--repeats", "1", "--size", "32"]
    threads = torch.get_num_threads()
    try:
        assert main([*arguments, "--heap-objects", "300", "--calls", "200"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for row in (
        "(a) bare loop",
        "(b) naive gc.collect() + empty_cache() per item",
        "(c) @auto_clear, defaults",
        "(d) managed_batch, threshold GC every 5 items",
        "(e) as (d) with freeze_heap=False",
        "heap frozen (inside managed_batch)",
        "@auto_clear, no cleanup due",
    ):
        assert row in out
    assert heap_is_unfrozen()
