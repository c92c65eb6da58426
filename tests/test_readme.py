"""The README's quick start is what CI runs; its snippets run; the docs name no "seed"."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest

import memscope
from memscope.cli._command import main

ROOT = Path(__file__).parents[1]

# "The seed" as a name for the system memscope replaces: user-facing text calls it "the
# MemoryManager API of the Cobra batch-processing system". The demo's --seed option, a
# random seed ("the same seed") and the tests/seed_examples folder are fine.
SEED_AS_A_NAME = re.compile(
    r"\bthe\s+seed\b(?!\s*=)|\bseed(?:'s|\u2019s)|\bseed\s+(?:README|programs?|examples?|`)",
    re.IGNORECASE,
)
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


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


def test_use_snippets_run_as_pasted(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Use section runs top to bottom as written, on whatever device is here."""
    section = (ROOT / "README.md").read_text().split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) >= 2
    namespace: dict[str, Any] = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "20 items in " in printed
    # One clear per image (clear_cache() always clears), more if usage reached the threshold;
    # the CPU has no cache, and a clear there counts as none.
    manager = namespace["manager"]
    expected = 20 if manager.backend.caches_memory else 0
    assert manager.stats.cache_clears >= expected


def test_seed_example_names_are_allowed() -> None:
    """The pattern leaves the demo's option, a random seed and the examples folder alone."""
    allowed = "--seed S, seed=3, the same seed draws the same images, tests/seed_examples/"
    assert SEED_AS_A_NAME.search(allowed) is None
    for named in ("the seed did", "The seed's contract", "seed README", "the seed `MemoryManager`"):
        assert SEED_AS_A_NAME.search(named) is not None, named


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_documents_never_call_the_compatibility_target_the_seed(document: Path) -> None:
    """README.md and docs/*.md name the Cobra MemoryManager API, never "the seed"."""
    text = document.read_text()
    found = [
        f"line {text.count(chr(10), 0, match.start()) + 1}: {match.group()!r}"
        for match in SEED_AS_A_NAME.finditer(text)
    ]
    assert found == []


@pytest.mark.parametrize(
    "command", [[], ["info"], ["estimate"], ["demo"], ["report"], ["calibrate"]]
)
def test_help_never_calls_the_compatibility_target_the_seed(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``memscope --help`` and each command's ``--help`` never say "the seed"."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: memscope")
    assert SEED_AS_A_NAME.findall(help_text) == []


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return True


def _api_reference() -> tuple[set[str], dict[str, set[str] | None]]:
    """docs/api.md's top-level entries, and each namespace's members (None: all of them)."""
    top_level: set[str] = set()
    namespaces: dict[str, set[str] | None] = {}
    namespace: str | None = None
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        directive = re.fullmatch(r"::: (memscope\.\w+)", line)
        member = re.fullmatch(r" {8}- (\w+)", line)
        if directive is not None:
            path = directive.group(1)
            namespace = path if _is_module(path) else None
            if namespace is None:
                top_level.add(path.removeprefix("memscope."))
            else:
                namespaces[namespace] = None
        elif member is not None and namespace is not None:
            namespaces[namespace] = (namespaces[namespace] or set()) | {member.group(1)}
    return top_level, namespaces


# Namespaces whose every name is also at the top level, and the command line, which is no API.
_NOT_IN_THE_REFERENCE = {
    "memscope.cli",
    "memscope.snapshot",
    "memscope.units",
}


def test_api_reference_documents_every_public_name() -> None:
    """Every name of the top level and of each public namespace has an entry in docs/api.md."""
    top_level, namespaces = _api_reference()
    assert top_level == set(memscope.__all__) - {"__version__"}
    documented_at_top = [getattr(memscope, name) for name in top_level]
    missing = []
    public_namespaces = [
        f"memscope.{module.name}"
        for module in pkgutil.iter_modules(memscope.__path__)
        if not module.name.startswith("_")
    ]
    assert "memscope.oom" in public_namespaces
    for module_name in public_namespaces:
        if module_name in _NOT_IN_THE_REFERENCE:
            continue
        module = importlib.import_module(module_name)
        documented = namespaces.get(module_name, set())
        for name in module.__all__:
            at_top = any(getattr(module, name) is entry for entry in documented_at_top)
            if not at_top and documented is not None and name not in documented:
                missing.append(f"{module_name}.{name}")
    assert missing == []


def test_api_reference_opens_with_the_main_entry_point_and_ends_with_types() -> None:
    """The reference starts at managed_batch, then auto_clear; the type aliases come last."""
    directives = re.findall(
        r"^::: (memscope[\w.]*)$", (ROOT / "docs" / "api.md").read_text(), flags=re.MULTILINE
    )
    assert directives[:3] == [
        "memscope.managed_batch",
        "memscope.ManagedBatch",
        "memscope.auto_clear",
    ]
    assert directives[-1] == "memscope.typing"


def test_docstring_literal_blocks_render_as_code() -> None:
    """No docstring shows reST's "::" on the site: each literal block becomes fenced code."""
    pytest.importorskip("griffe")
    extension = importlib.import_module("docs._extensions.sphinx_roles")
    converted = extension.literal_blocks_as_code(
        "Gather.\n\n::\n\n    batch = 1\n\nUse it so::\n\n    go()\n\nEnd ::\n\n    x\n"
    )
    assert converted == (
        "Gather.\n\n```python\nbatch = 1\n```\n\nUse it so:\n\n```python\ngo()\n```\n\n"
        "End\n\n```python\nx\n```\n"
    )
    for path in (ROOT / "memscope").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                continue
            docstring = ast.get_docstring(node)
            if docstring is None:
                continue
            outside_code = re.sub(
                r"```python.*?```", "", extension.literal_blocks_as_code(docstring), flags=re.DOTALL
            )
            assert not re.search(r"::\s*$", outside_code, flags=re.MULTILINE), path
