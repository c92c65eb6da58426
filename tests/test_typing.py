"""Users' type checkers understand decorated functions: the usage files pass mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

USAGE = Path(__file__).parent / "typing" / "auto_clear_usage.py"


def test_auto_clear_usage_type_checks() -> None:
    """@auto_clear functions keep their signature, expose cleanup_stats, and misuse is caught."""
    pytest.importorskip("mypy", reason="mypy is in the lint extra: pip install -e '.[lint]'")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(USAGE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
