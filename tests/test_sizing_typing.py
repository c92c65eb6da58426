"""The types users rely on: ``tests/typing/adaptive_usage.py`` passes ``mypy --strict``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USAGE = Path("tests") / "typing" / "adaptive_usage.py"


def test_adaptive_batch_usage_type_checks() -> None:
    """mypy --strict accepts the documented usage of @adaptive_batch and still reports every
    mistake the file marks with a type: ignore (an ignore left unused is an error)."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install 'memscope[lint]'); the types are unchecked")
    # From the repository root, so pyproject.toml's mypy settings (python_version) apply.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores", str(USAGE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (ROOT / USAGE).read_text().count("# type: ignore[") >= 10
