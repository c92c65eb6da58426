"""``python -m benchmarks.gpu_check``: the one GPU command, as far as a CPU can try it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import (
    NO_GPU_STATUS,
    child_environment,
    count_outcomes,
    find_gpu,
    judge_tests,
    main,
)

ROOT = Path(__file__).parents[1]
no_gpu_here = pytest.mark.skipif(find_gpu() is not None, reason="this machine has a GPU")

# Stand-ins for the two runs, through the command's own --pytest and --benchmarks.
TESTS_PASS = "{python} -c \"print('==== 2 passed, 1 skipped in 0.10s ====')\""
TESTS_FAIL = "{python} -c \"print('==== 1 failed, 1 passed in 0.10s ===='); raise SystemExit(1)\""
TABLE = (
    "{python} -c \"print('| scenario | images/s |'); print('|---|---:|'); print('| (a) | 9.9 |')\""
)


def _check(tmp_path: Path, *arguments: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    return main(["--device", "cpu", "--out", str(out), *arguments]), out


@no_gpu_here
def test_without_a_gpu_it_says_so_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No GPU: one line says so and how to go on, the status is 3, no folder is made."""
    monkeypatch.chdir(tmp_path)
    assert main([]) == NO_GPU_STATUS
    assert main(["--device", "cuda"]) == NO_GPU_STATUS
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"gpu_check: no GPU here: torch {torch.__version__}")
    assert "--device cpu" in lines[0]
    assert lines[1].startswith("gpu_check: --device cuda: no GPU here")
    assert list(tmp_path.iterdir()) == []


@no_gpu_here
def test_the_module_exits_non_zero_without_a_gpu() -> None:
    """``python -m benchmarks.gpu_check`` itself exits 3 with the message on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == NO_GPU_STATUS
    assert "no GPU here" in result.stderr


def test_the_folder_holds_the_section_for_the_performance_page(tmp_path: Path) -> None:
    """Four files: the Markdown section, the facts as JSON, and both runs' output."""
    status, out = _check(tmp_path, "--pytest", TESTS_PASS, "--benchmarks", TABLE)
    assert status == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "benchmarks.md",
        "check.json",
        "performance.md",
        "pytest.txt",
    ]
    section = (out / "performance.md").read_text()
    assert section.startswith("### the CPU (")
    assert f"torch {torch.__version__}" in section
    assert "- gpu tests passed: 2 passed, 1 skipped (`python -c " in section
    assert "| (a) | 9.9 |" in section
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] is True
    assert check["machine"]["torch"] == torch.__version__
    assert check["machine"]["cuda"] == torch.version.cuda
    assert [run["name"] for run in check["runs"]] == ["gpu tests", "benchmarks"]
    assert [run["exit_status"] for run in check["runs"]] == [0, 0]
    assert "2 passed, 1 skipped" in (out / "pytest.txt").read_text()
    assert (out / "benchmarks.md").read_text().startswith("| scenario | images/s |")


def test_a_failing_run_fails_the_check_and_is_still_written(tmp_path: Path) -> None:
    """A failed test run makes the status 1; the folder still says what happened."""
    status, out = _check(tmp_path, "--pytest", TESTS_FAIL, "--benchmarks", TABLE)
    assert status == 1
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] is False
    assert check["runs"][0]["summary"] == ("gpu tests failed (pytest exited 1): 1 failed, 1 passed")
    assert "gpu tests failed" in (out / "performance.md").read_text()


def test_the_real_runs_on_the_cpu(tmp_path: Path) -> None:
    """The real pytest and benchmark commands, kept tiny, run and land in the folder."""
    status, out = _check(
        tmp_path,
        "--pytest",
        "{python} -m pytest -m gpu -p no:cacheprovider -q tests/test_demo.py",
        "--benchmarks",
        "{python} -m benchmarks --device {device} --items 2 --repeats 1 --size 32 "
        "--heap-objects 300 --calls 200",
    )
    assert status == 0, (out / "pytest.txt").read_text()
    check = json.loads((out / "check.json").read_text())
    assert check["runs"][0]["summary"].startswith("gpu tests: 1 skipped, ")
    assert check["runs"][0]["summary"].endswith("; on the CPU they skip, a dry run")
    assert "| (a) bare loop |" in (out / "performance.md").read_text()


def test_a_dry_run_on_the_cpu_hides_the_gpu_from_its_runs() -> None:
    """--device cpu runs its steps with no CUDA device visible; a GPU check leaves CUDA alone."""
    assert child_environment("cpu")["CUDA_VISIBLE_DEVICES"] == ""
    assert child_environment("cuda").get("CUDA_VISIBLE_DEVICES") == os.environ.get(
        "CUDA_VISIBLE_DEVICES"
    )


def test_an_output_folder_with_files_is_refused(tmp_path: Path) -> None:
    """--out naming a folder that holds files exits 2 before running anything."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        _check(tmp_path, "--pytest", TESTS_PASS, "--benchmarks", TABLE)
    assert exited.value.code == 2
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_counts_are_read_from_pytest_s_closing_line() -> None:
    """The last line with counts is pytest's summary; "1 error" counts as errors."""
    output = "PASSED tests/x.py::t\n===== 3 passed, 2 skipped, 1 error in 4.0s =====\n"
    assert count_outcomes(output) == {"passed": 3, "skipped": 2, "errors": 1}
    assert count_outcomes("no summary\n") == {}


def test_gpu_tests_that_all_skip_fail_the_check_on_a_gpu() -> None:
    """On a GPU, tests that all skipped did not see it: that fails; on the CPU it is expected."""
    assert judge_tests(0, {"skipped": 8, "deselected": 900}, "cuda") == (
        False,
        "gpu tests did not run (8 skipped, 900 deselected): the tests did not see the GPU",
    )
    assert judge_tests(0, {"passed": 8}, "cuda") == (True, "gpu tests passed: 8 passed")
    assert judge_tests(0, {"skipped": 8}, "cpu")[0] is True
    assert judge_tests(5, {}, "cuda") == (False, "gpu tests failed (pytest exited 5): none")
