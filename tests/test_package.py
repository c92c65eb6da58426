"""Packaging promises: the public API, typing marker, logging and version."""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import memscope

PACKAGE = Path(memscope.__file__).parent


def test_all_is_sorted_and_importable() -> None:
    """Every name in ``__all__`` is importable from the top level, and the list is sorted."""
    assert memscope.__all__ == sorted(memscope.__all__)
    for name in memscope.__all__:
        assert hasattr(memscope, name), name


TOP_LEVEL_API = [
    "BatchReport",
    "BatchSizeExhaustedError",
    "BatchStateError",
    "ClearAlways",
    "ClearWhenUseful",
    "DeviceUnavailableError",
    "GCBackoff",
    "ImageMemoryModel",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ManagedBatch",
    "MemoryManager",
    "MemorySnapshot",
    "MemscopeError",
    "Sizing",
    "__version__",
    "adaptive_batch",
    "auto_clear",
    "configure_allocator",
    "format_bytes",
    "is_oom_error",
    "managed_batch",
    "parse_bytes",
    "process_in_chunks",
    "process_in_chunks_async",
]

PUBLIC_NAMESPACES = [
    "memscope.allocator",
    "memscope.backends",
    "memscope.batch",
    "memscope.cli",
    "memscope.container",
    "memscope.decorator",
    "memscope.distributed",
    "memscope.estimation",
    "memscope.exceptions",
    "memscope.host",
    "memscope.journal",
    "memscope.leaks",
    "memscope.manager",
    "memscope.oom",
    "memscope.policies",
    "memscope.pytest_plugin",
    "memscope.ray",
    "memscope.reports",
    "memscope.sizing",
    "memscope.snapshot",
    "memscope.testing",
    "memscope.typing",
    "memscope.units",
    "memscope.watch",
]


def test_top_level_api_is_small_and_exact() -> None:
    """The top level exports exactly the toolkit, the core types and the main errors."""
    assert memscope.__all__ == TOP_LEVEL_API
    assert len(memscope.__all__) <= 25


def test_namespaces_export_importable_names() -> None:
    """Each public namespace has one ``__all__`` (ruff keeps it sorted) whose names all exist."""
    for name in PUBLIC_NAMESPACES:
        module = importlib.import_module(name)
        exported = module.__all__
        assert len(set(exported)) == len(exported), name
        for attribute in exported:
            assert hasattr(module, attribute), f"{name}.{attribute}"


def test_toolkit_hooks_are_private() -> None:
    """The hooks only the toolkit calls are not part of the batch's public surface."""
    batch = memscope.ManagedBatch
    for hook in ("record_call", "record_oom", "record_cleanup", "observe_peak"):
        assert not hasattr(batch, hook), hook


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(
    path: Path, module: str, modules: set[str], *, type_checking: bool = False
) -> set[str]:
    """The memscope modules ``path`` imports, deferred imports included; TYPE_CHECKING ones
    only with ``type_checking``. (The old ``memscope.oom`` and ``memscope.estimation`` paths
    of names that moved are served by ``memscope._homes``, which imports the new home by name
    when such a name is first asked for: no dependency of one layer on another.)"""
    tree = ast.parse(path.read_text())
    type_checking_only: set[int] = set()
    if not type_checking:
        type_checking_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {base})
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (module -> the modules it imports), one per back edge."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return cycles


def _graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    # A module imports its package's __init__ implicitly; only explicit edges count.
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {
            target
            for target in _imports(path, name, set(modules), type_checking=type_checking)
            if target in modules and target != name
        }
        for name, path in modules.items()
    }


def test_import_graph_has_no_cycles() -> None:
    """No chain of imports among memscope's modules leads back to where it started."""
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_annotations_make_no_import_cycle_but_the_moved_names() -> None:
    """Imports made only for type checkers close no cycle either (watchers see the batch,
    the loops their batch and the plot its report through protocols), except the typed
    re-exports that let the old paths of moved names (memscope._homes.MOVED) keep their
    types: the names moved to a higher layer, which the old module must name to type them."""
    from memscope._homes import MOVED

    graph = _graph(type_checking=True)
    for old_module, homes in MOVED.items():
        graph[old_module] -= set(homes.values())
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_is_over_500_lines() -> None:
    """Every module of the library is short enough to read whole: 500 lines at most."""
    long = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert long == {}


def test_no_package_imports_another_packages_private_module() -> None:
    """A private module inside a subpackage (``memscope.oom._detection``) is imported only
    from its own package; the rest of memscope goes through the package's public names or a
    private top-level module meant for sharing (``memscope._recovery``)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    crossings = []
    for name, path in sorted(modules.items()):
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in _imports(path, name, set(modules)):
            target_package, _, leaf = target.rpartition(".")
            private = leaf.startswith("_") and target_package != "memscope"
            if private and target in modules and not package.startswith(target_package):
                crossings.append(f"{name} -> {target}")
    assert crossings == []


def test_the_cli_and_the_demo_use_public_names_only() -> None:
    """memscope.cli (the demo included) imports memscope as a user would: no private module
    of memscope outside the CLI's own, but the version string's (``memscope.__version__``
    itself, read where it is defined so that ``--version`` needs no more of the package)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    private = []
    for name, path in sorted(modules.items()):
        if not name.startswith("memscope.cli"):
            continue
        for target in _imports(path, name, set(modules)) - {"memscope._version"}:
            theirs = target.startswith("memscope") and not target.startswith("memscope.cli")
            if theirs and any(part.startswith("_") for part in target.split(".")):
                private.append(f"{name} -> {target}")
    assert private == []


def test_version_is_a_string() -> None:
    """``memscope.__version__`` is set."""
    assert isinstance(memscope.__version__, str)
    assert memscope.__version__.count(".") == 2


def test_version_is_the_one_the_docs_describe() -> None:
    """The package is 0.2.0, as the changelog's newest section and the installed metadata."""
    assert memscope.__version__ == "0.2.0"
    changelog = (PACKAGE.parent / "docs" / "changelog.md").read_text()
    assert "\n## 0.2.0" in changelog
    assert importlib.metadata.version("memscope") == memscope.__version__


def test_setup_cfg_declares_the_floors() -> None:
    """torch 2.1 and wrapt 1.14.1 are the floors; the ray extra is a range, not a pin."""
    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    requires = config["options"]["install_requires"].split()
    assert requires == ["torch>=2.1", "wrapt>=1.14.1"]
    ray = config["options.extras_require"]["ray"].split()
    assert ray == ["ray[data]>=2.60,<2.61"]


def test_the_clones_parent_folder_finds_the_package_not_a_namespace(tmp_path: Path) -> None:
    """From a folder holding the clone as ``memscope/``, ``import memscope`` finds the package
    (its ``__init__``), not an empty namespace package made of the clone's folder."""
    (tmp_path / "memscope").symlink_to(PACKAGE.parent, target_is_directory=True)
    probe = "import importlib.util; print(importlib.util.find_spec('memscope').origin)"
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(completed.stdout.strip()) == PACKAGE / "__init__.py"


def test_mypy_finds_the_installed_package_from_outside_the_clone(tmp_path: Path) -> None:
    """``mypy --strict`` on a user's file outside the clone finds memscope (no "Cannot find
    implementation or library stub"): the editable install is a path entry, not a hook."""
    pytest.importorskip("mypy")
    (tmp_path / "job.py").write_text("import memscope\n\nversion: str = memscope.__version__\n")
    # skip: memscope is found and not analysed (torch's stubs would take minutes here);
    # .ci/run checks a user's file against memscope's types in full.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=skip",
            "--no-incremental",
            "job.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "Cannot find implementation" not in completed.stdout, completed.stdout
    assert completed.returncode == 0, completed.stdout


def test_py_typed_is_shipped() -> None:
    """The package carries the PEP 561 marker."""
    assert (PACKAGE / "py.typed").exists()


def test_library_code_never_prints() -> None:
    """No module but the command line calls print() or writes to stdout."""
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
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
