"""``memscope calibrate`` is part of the command: it fits a model and prints it."""

from __future__ import annotations

import json

import pytest

from memscope.cli import main
from memscope.cli._calibrate import poor_fit_caution
from memscope.estimation import CalibratedImageMemoryModel


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


def test_calibrate_refuses_a_size_that_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sizes 99999`` exits 2 with one line naming the size, before anything is allocated."""
    with pytest.raises(SystemExit) as exited:
        main(["calibrate", "--device", "cpu", "--sizes", "99999", "--repeats", "1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--sizes 99999x99999 at batch size 2 needs at least" in err
    assert "use smaller sizes or batch sizes" in err


def _fitted(miss: float, r_squared: float) -> CalibratedImageMemoryModel:
    return CalibratedImageMemoryModel(
        fixed_bytes=1000,
        bytes_per_pixel=10.0,
        samples=(),
        r_squared=r_squared,
        max_relative_error=miss,
        device="cpu",
        method="test",
    )


def test_a_poor_fit_gets_a_caution() -> None:
    """A largest miss above 10 % (65 % was once printed silently) or a low R^2 is cautioned."""
    assert poor_fit_caution(_fitted(0.05, 0.999)) is None
    caution = poor_fit_caution(_fitted(0.65, 0.999))
    assert caution is not None
    assert "by up to 65%" in caution
    low_r_squared = poor_fit_caution(_fitted(0.05, 0.9))
    assert low_r_squared is not None
    assert "R^2 0.900" in low_r_squared


def test_the_caution_goes_to_stderr_after_the_fit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command prints the fit, then one ``warning:`` line on stderr when it fits poorly."""
    monkeypatch.setattr(
        "memscope.estimation.calibrate", lambda *args, **kwargs: _fitted(0.65, 0.95)
    )
    arguments = ["calibrate", "--device", "cpu", "--sizes", "32", "--batch-sizes", "1"]
    assert main([*arguments, "--predict", "64"]) == 0
    captured = capsys.readouterr()
    assert "fitted:" in captured.out
    assert captured.err.startswith("memscope calibrate: warning: the fit misses its own samples")
    assert captured.err.count("\n") == 1
