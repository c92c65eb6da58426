"""``python -m memscope``: the README's main job."""

from __future__ import annotations

import subprocess
import sys

import pytest

from memscope.cli import main


def test_main_job_prints_device_and_seed_estimates() -> None:
    """The command runs as a module and prints the device and the three seed estimates."""
    result = subprocess.run(
        [sys.executable, "-m", "memscope"], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "device: " in out
    assert "512x512:    23,887,872 bytes (22.8 MiB)" in out
    assert "1024x1024:    95,551,488 bytes (91.1 MiB)" in out
    assert "2048x2048:   382,205,952 bytes (364.5 MiB)" in out


def test_bad_device_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown device is a usage error: exit status 2 and a message naming it."""
    with pytest.raises(SystemExit) as exited:
        main(["--device", "gpu"])
    assert exited.value.code == 2
    assert "'gpu'" in capsys.readouterr().err


def test_explicit_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cpu`` inspects the CPU."""
    assert main(["--device", "cpu"]) == 0
    assert "device: cpu" in capsys.readouterr().out
