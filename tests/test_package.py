"""Packaging promises: the public API, typing marker, logging and version."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import memscope

PACKAGE = Path(memscope.__file__).parent


def test_all_is_sorted_and_importable() -> None:
    """Every name in ``__all__`` is importable from the top level, and the list is sorted."""
    assert memscope.__all__ == sorted(memscope.__all__)
    for name in memscope.__all__:
        assert hasattr(memscope, name), name


def test_public_names_of_modules_are_reexported() -> None:
    """Every module's ``__all__`` is available from ``memscope`` directly."""
    import memscope.adaptive
    import memscope.batch
    import memscope.cleanup
    import memscope.cli
    import memscope.context
    import memscope.decorator
    import memscope.demo
    import memscope.diagnosis
    import memscope.distributed
    import memscope.estimation
    import memscope.exceptions
    import memscope.export
    import memscope.history
    import memscope.host
    import memscope.manager
    import memscope.oom
    import memscope.plot
    import memscope.report
    import memscope.snapshot
    import memscope.timeline
    import memscope.units

    for module in (
        memscope.adaptive,
        memscope.batch,
        memscope.cleanup,
        memscope.cli,
        memscope.context,
        memscope.decorator,
        memscope.diagnosis,
        memscope.distributed,
        memscope.estimation,
        memscope.exceptions,
        memscope.history,
        memscope.host,
        memscope.manager,
        memscope.oom,
        memscope.demo,
        memscope.estimation,
        memscope.exceptions,
        memscope.export,
        memscope.manager,
        memscope.plot,
        memscope.report,
        memscope.snapshot,
        memscope.timeline,
        memscope.units,
    ):
        for name in module.__all__:
            assert name in memscope.__all__, f"{module.__name__}.{name}"


def test_version_is_a_string() -> None:
    """``memscope.__version__`` is set."""
    assert isinstance(memscope.__version__, str)
    assert memscope.__version__.count(".") == 2


def test_py_typed_is_shipped() -> None:
    """The package carries the PEP 561 marker."""
    assert (PACKAGE / "py.typed").exists()


def test_library_code_never_prints() -> None:
    """No module but the command line calls print() or writes to stdout."""
    for path in PACKAGE.rglob("*.py"):
        if path.name in {"cli.py", "__main__.py"}:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "print", f"print() in {path}"
            if isinstance(node, ast.Attribute) and node.attr == "stdout":
                raise AssertionError(f"sys.stdout in {path}")


def test_library_logs_through_the_memscope_logger() -> None:
    """Every logger the package creates is ``logging.getLogger("memscope")``."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
            ):
                assert [ast.literal_eval(arg) for arg in node.args] == ["memscope"], path


def test_import_does_not_initialise_cuda() -> None:
    """Importing memscope touches no device: torch.cuda stays uninitialised."""
    code = (
        "import torch, memscope, memscope.testing\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
