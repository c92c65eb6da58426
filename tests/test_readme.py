"""The README's quick start is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_quick_start_is_two_commands() -> None:
    """The quick start is exactly two commands: the main job and the tests."""
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("python -m memscope demo")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs the README's test command word for word (less the quiet flag)."""
    ci = (ROOT / ".ci" / "run").read_text().replace("pip install -q ", "pip install ")
    assert _quick_start_commands()[1] in ci


def test_readme_images_exist_and_are_small() -> None:
    """Every image the README shows is in the repository and under 200 KB."""
    readme = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert images
    for image in images:
        path = ROOT / image
        assert path.is_file(), image
        assert path.stat().st_size < 200_000, image
