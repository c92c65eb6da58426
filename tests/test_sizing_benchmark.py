"""The sizing benchmark still runs (a smoke run on a few cards; it asserts no figures)."""

from __future__ import annotations

import pytest

from benchmarks.__main__ import main


def test_sizing_benchmark_prints_a_row_per_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    """python -m benchmarks sizing on three cards prints the table with every strategy, a
    library that is not installed included (its row says so)."""
    assert main(["sizing", "--trials", "3", "--calls", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 cards whose largest batch is 3 to 100" in out
    for row in (
        "| memscope `@adaptive_batch`, headroom 3 % (default) |",
        "| memscope, `measure=False` (halving) |",
        "| accelerate `find_executable_batch_size` (x0.9) |",
        "| toma `toma.batch` (halving) |",
    ):
        assert row in out
