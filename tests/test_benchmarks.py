"""The benchmark suite still runs (a smoke run with tiny sizes; it asserts no timings)."""

from __future__ import annotations

from pathlib import Path

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


def _overhead_arguments() -> list[str]:
    return [
        "overhead",
        "--no-callgrind",
        "--wall-items",
        "10",
        "--rounds",
        "2",
        "--warmup",
        "5",
        "--heap-objects",
        "100",
        "--lengths",
        "5",
        "10",
        "--timeline-rows",
        "1000",
    ]


def test_overhead_benchmark_prints_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks overhead` prints a wall-time row for every mode and each table."""
    from benchmarks import overhead

    assert main(_overhead_arguments()) == 0
    out = capsys.readouterr().out
    assert "instruction counts skipped (--no-callgrind)" in out
    for mode in overhead.modes():
        assert f"| {mode.name} | " in out
    assert '| managed_batch("cuda" (fake), every=1) | 2 | torch.cuda.mem_get_info 1' in out
    assert "| Timeline (compact columns) | " in out
    assert "| list of TimelineEntry (before) | " in out
    assert heap_is_unfrozen()


def test_overhead_modes_cover_the_issue_table_on_both_devices() -> None:
    """Every mode of issue 23's table is measured on the CPU and on the fake CUDA device."""
    from benchmarks import overhead

    names = [mode.name for mode in overhead.modes()]
    assert names[0] == "bare loop"
    for device in ('"cpu"', '"cuda" (fake)'):
        assert f"managed_batch({device}, every=None)" in names
        assert f"managed_batch({device}) defaults" in names
        assert f"managed_batch({device}, every=1)" in names
        assert f"managed_batch({device}, every=5)" in names
        assert f"managed_batch({device}, timeline=True)" in names
        assert f"@auto_clear(device={device}) defaults, outside a batch" in names


def test_overhead_per_item_is_the_difference_of_two_lengths() -> None:
    """Per item = (long total - short total) / (long - short); a mode missing a dump is left out."""
    from benchmarks import overhead

    totals = {"bare loop|20": 10_000 + 20 * 436, "bare loop|60": 10_000 + 60 * 436}
    every_none = 'managed_batch("cpu", every=None)'
    totals[f"{every_none}|20"] = 5_000 + 20 * 8_255
    totals[f"{every_none}|60"] = 5_000 + 60 * 8_255
    totals['managed_batch("cpu", every=1)|20'] = 1  # its long loop's dump is missing
    assert overhead.per_item(totals, (20, 60)) == {"bare loop": 436.0, every_none: 8255.0}


def test_overhead_reads_callgrind_dumps_by_label(tmp_path: Path) -> None:
    """Each dump's total is read under the label of the client request that dumped it."""
    from benchmarks import overhead

    for number, (label, total) in enumerate((("bare loop|20", 9_000), ("bare loop|60", 27_000))):
        (tmp_path / f"callgrind.out.{number + 1}").write_text(
            "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 1\ncmd: python\n"
            f"part: {number + 1}\n\ndesc: I1 cache: \ndesc: Timerange: Basic block 0 - 9\n"
            f"desc: Trigger: Client Request: {label}\n\npositions: line\nevents: Ir\n"
            f"summary: {total}\n\n\ntotals: {total}\n"
        )
    (tmp_path / "callgrind.out").write_text("events: Ir\ntotals: 5\n")  # the exit dump
    assert overhead.parse_dumps(tmp_path) == {"bare loop|20": 9_000, "bare loop|60": 27_000}


def test_overhead_without_valgrind_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where valgrind is missing the counts are replaced by a sentence saying so."""
    from benchmarks import overhead

    monkeypatch.setattr("shutil.which", lambda name: None)
    found = overhead.instructions_per_item((5, 10), 5, 100, 60)
    assert found == "valgrind is not installed: no instruction counts, wall-time ratios only"


def test_overhead_worker_runs_every_mode_with_client_requests(tmp_path: Path) -> None:
    """The callgrind worker's loop runs natively (client requests are no-ops outside valgrind)."""
    from benchmarks import overhead

    if not Path("/usr/include/valgrind/callgrind.h").exists():
        pytest.skip("valgrind's callgrind.h is not installed")
    library = overhead.compile_client_requests(tmp_path)
    if isinstance(library, str):
        pytest.skip(library)
    measured: list[int] = []
    requests = overhead.ClientRequests(library)
    requests.measure("a loop|3", measured.append, 3)
    assert measured == [3]
    labels = overhead.run_worker(library, (5, 10), 5, 100)
    names = [mode.name for mode in overhead.modes()]
    assert labels == [f"{name}|{items}" for name in names for items in (5, 10)]
    assert heap_is_unfrozen()
