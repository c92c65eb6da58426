"""``memscope calibrate``: the subcommand fits a model to the demo colorizer's measured peaks
and prints it, as tables or JSON; bad arguments exit with status 2. On the CPU the peaks are
torch's allocations (the profiler's memory events), measurable wherever torch runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import memscope._peak
from memscope.cli import build_parser
from memscope.cli._calibrate import run_calibrate

# Large enough that the colorizer's growth (megabytes) stands well above the noise of the C
# allocator in a process that has run many tests (hundreds of kilobytes).
SMALL_RUN = ["--sizes", "128", "256x192", "--batch-sizes", "1", "2", "--repeats", "1"]


def parser() -> argparse.ArgumentParser:
    """The memscope parser as far as calibrate is concerned."""
    return build_parser()


def run(*arguments: str) -> int:
    return run_calibrate(parser().parse_args(["calibrate", *arguments]))


def test_calibrate_prints_the_fit_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the fitted model, its samples and the predictions, one per size."""
    assert run("--device", "cpu", "--json", *SMALL_RUN, "--predict", "64", "128") == 0
    data = json.loads(capsys.readouterr().out)
    model = data["model"]
    assert model["device"] == "cpu"
    assert "profiler" in model["method"]
    assert model["bytes_per_pixel"] > 0
    measured = [
        (sample["width"], sample["height"], sample["batch_size"]) for sample in model["samples"]
    ]
    assert measured == [(128, 128, 1), (128, 128, 2), (256, 192, 1), (256, 192, 2)]
    estimates = data["estimates"]
    assert [(estimate["width"], estimate["height"]) for estimate in estimates] == [
        (64, 64),
        (128, 128),
    ]
    assert estimates[0]["bytes"] < estimates[1]["bytes"]


def test_calibrate_prints_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: the samples, the fitted formula and its quality, the predictions."""
    assert run("--device", "cpu", *SMALL_RUN) == 0
    out = capsys.readouterr().out
    assert "calibrated the demo colorizer on cpu" in out
    assert "fitted: " in out
    assert "bytes per pixel (R^2" in out
    for size in ("512x512", "1024x1024", "2048x2048"):
        assert size in out


def test_a_device_that_is_not_there_exits_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unknown device is a bad argument: one line on stderr, status 2."""
    with pytest.raises(SystemExit) as exit_info:
        run("--device", "cuda:7")
    assert exit_info.value.code == 2
    assert "cuda:7" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments", [["--sizes", "0x64"], ["--batch-sizes", "0"], ["--repeats", "two"]]
)
def test_bad_sizes_and_counts_exit_with_status_2(arguments: list[str]) -> None:
    """Sizes and counts are checked while parsing."""
    with pytest.raises(SystemExit) as exit_info:
        run(*arguments)
    assert exit_info.value.code == 2


def test_a_cpu_without_clear_refs_still_calibrates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CPU whose peak resident memory cannot be reset (no clear_refs) still calibrates: the
    CPU's peaks come from torch's allocator, not from the resident memory."""
    monkeypatch.setattr(memscope._peak, "host_peak", memscope._peak._HostPeak(tmp_path))
    assert run("--device", "cpu", "--json", *SMALL_RUN) == 0
    assert "profiler" in json.loads(capsys.readouterr().out)["model"]["method"]
