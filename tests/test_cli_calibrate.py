"""``memscope calibrate`` is part of the command: it fits a model and prints it."""

from __future__ import annotations

import json

import pytest

from memscope.cli import main


def test_calibrate_runs_through_the_command_and_prints_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``memscope calibrate --json`` measures the demo model and prints the fitted model."""
    arguments = ["calibrate", "--sizes", "32", "64", "--batch-sizes", "1", "--repeats", "1"]
    assert main([*arguments, "--predict", "128", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["device"] == "cpu"
    assert data["model"]["bytes_per_pixel"] > 0
    assert len(data["model"]["samples"]) == 2


def test_calibrate_appears_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``memscope --help`` lists calibrate beside the other commands."""
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "calibrate" in capsys.readouterr().out
