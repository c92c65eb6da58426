"""A device without memory figures is described in one wording, by the snapshot and by info."""

from __future__ import annotations

import pytest

from memscope import MemoryManager
from memscope.cli import main


def test_a_cpu_snapshot_says_its_usage_is_not_reported() -> None:
    """``str(MemoryManager("cpu").snapshot())`` says n/a and why, never a 0.0 % usage."""
    assert str(MemoryManager("cpu").snapshot()) == (
        "cpu: usage n/a (the device reports no memory figures)"
    )


def test_info_uses_the_snapshots_wording(capsys: pytest.CaptureFixture[str]) -> None:
    """``memscope info --device cpu`` explains its n/a cells with the snapshot's words."""
    assert main(["info", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[1] == "n/a"
    assert "n/a: the device reports no memory figures" in lines
