"""``memscope --version`` and ``--help`` answer without importing torch (a second or more)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import memscope

# What the child prints: the modules loaded after the command line answered.
_PROBE = """
import contextlib, io, json, sys
from memscope.cli import main
output = io.StringIO()
with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
    main({arguments!r})
print(json.dumps({{"output": output.getvalue(), "torch": "torch" in sys.modules}}))
"""


def _answer(*arguments: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE.format(arguments=list(arguments))],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answer: dict[str, object] = json.loads(completed.stdout.splitlines()[-1])
    return answer


@pytest.mark.parametrize(
    "arguments", [["--version"], ["--help"], ["demo", "--help"], ["calibrate", "--help"]]
)
def test_version_and_help_do_not_import_torch(arguments: list[str]) -> None:
    """``--version`` and every ``--help`` print their answer with torch never imported."""
    answer = _answer(*arguments)
    assert answer["output"]
    assert answer["torch"] is False


def test_version_names_the_package_version() -> None:
    """``memscope --version`` prints the package's version, 0.2.0."""
    answer = _answer("--version")
    assert answer["output"] == f"memscope {memscope.__version__}\n"
    assert memscope.__version__ == "0.2.0"


_PARSER_ONLY_PROBE = """
import importlib.machinery, importlib.util, json, sys
# The package without its __init__ (which imports the toolkit): what the command line's own
# modules import, and nothing else.
spec = importlib.util.find_spec("memscope")
package = importlib.util.module_from_spec(
    importlib.machinery.ModuleSpec("memscope", None, is_package=True)
)
package.__path__ = list(spec.submodule_search_locations)
sys.modules["memscope"] = package
from memscope.cli._command import build_parser
build_parser().format_help()
print(json.dumps("torch" in sys.modules))
"""


def test_the_command_line_modules_build_the_parser_without_torch() -> None:
    """Building the parser, every subcommand's included, imports no torch."""
    completed = subprocess.run(
        [sys.executable, "-c", _PARSER_ONLY_PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(completed.stdout.splitlines()[-1]) is False
