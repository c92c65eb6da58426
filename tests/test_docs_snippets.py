"""Every ```python block of README.md and docs/*.md runs as written.

How a page runs:

- Its blocks run top to bottom in one namespace, as a reader takes them: a block may use what
  an earlier block on the same page defined. An example test a block defines
  (``def test_...``) is called right after it.
- A block that names an accelerator in a string (``"cuda"``, ``"cuda:1"``, ``"mps"``) runs
  inside ``memscope.testing.FakeDevice`` of that type, so it runs on a machine without one;
  a block that names none runs on the devices that are really there (the CPU here).
- The pages a new user reads first (``AS_PASTED``: the README, getting-started and the guide)
  run exactly as pasted: no prelude, no fake devices. Their blocks define every name they
  use and let memscope detect the device, so they run on a CPU-only machine as written.
- On the other pages, placeholders a page uses without defining them, such as ``images`` or
  ``colorize``, come from that page's prelude in ``PRELUDES`` below, and nowhere else; those
  pages say so where they show GPU-only behaviour. A prelude defines
  stand-ins, never what a reader needs to copy (an import the snippet forgot is a bug of the
  snippet).
- A block that cannot run here is marked by an HTML comment on the line just before its
  fence, with the reason: ``<!-- not-run: needs torchrun -->``. Use it sparingly.
- A block that imports an optional package that is not installed (``ray``) ends its page's
  run there, and the test is skipped, saying which package; what ran before must pass.
- Blocks run in a temporary folder, so the files they write go nowhere.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memscope.testing import FakeDevice

ROOT = Path(__file__).parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
ACCELERATOR = re.compile(r"^(cuda|mps|xpu)(?::(\d+))?$")

_IMAGES = "images = [torch.rand(3, 64, 64) for _ in range(8)]\n"

AS_PASTED = frozenset({"README.md", "getting-started.md", "guide.md"})
"""Pages whose blocks run as a reader pastes them: no prelude, no fake devices."""

PRELUDES: dict[str, str] = {
    "host-memory.md": (
        "import torch\n"
        + _IMAGES
        + "def colorize(image):\n"
        + "    return image.flip(0)  # stands in for the model\n"
    ),
    "leaks.md": (
        "import torch\n"
        "import memscope as _memscope\n"
        "images = [torch.rand(1, 1, 64, 64) for _ in range(8)]\n"
        'with _memscope.managed_batch("cpu") as batch:  # a batch that has ended\n'
        "    pass\n"
        "del _memscope\n"
        "def alert(message):\n"
        "    pass\n"
        "def run_some_items():\n"
        "    pass\n"
        "run_some_more_items = run_some_items\n"
    ),
    "oom.md": (
        "import torch\n"
        "from memscope import MemoryManager\n"
        + _IMAGES
        + "Image = torch.Tensor  # a colorized image\n"
        + 'paths = [f"line-art-{index}.png" for index in range(10)]\n'
        + "line_art = torch.rand(6, 1, 32, 32)\n"
        + "manager = MemoryManager()\n"
        + "def colorize(images, batch_size):\n"
        + "    return images[:batch_size]\n"
        + "def colorize_tensor(chunk):\n"
        + "    return chunk.expand(-1, 3, -1, -1)\n"
        + "def run_the_batch():\n"
        + "    pass\n"
        + "def pipeline(image):\n"
        + "    return image\n"
    ),
}
"""Per page, the stand-ins for what its snippets use without defining."""

PAGES_AWAITING_FIXES: dict[str, str] = {}
"""Pages whose snippets are known not to run, with what they lack; each is an expected
failure until its page is fixed, and an unexpected pass then says to remove it here."""


@dataclass(frozen=True)
class Snippet:
    """One ```python block: where it starts, its code, and why it does not run, if it does not."""

    page: str
    line: int
    code: str
    not_run: str | None


def snippets(page: Path) -> list[Snippet]:
    """The page's ```python blocks, in order."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.fullmatch(before.strip())
        found.append(
            Snippet(
                page=page.name,
                line=text.count("\n", 0, match.start()) + 1,
                code=match.group(1),
                not_run=None if reason is None else reason.group(1),
            )
        )
    return found


def accelerators(code: str) -> dict[str, int]:
    """The accelerator types the code names in its strings, with how many devices each needs."""
    named: dict[str, int] = {}
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    for token in tokens:
        if token.type != tokenize.STRING:
            continue
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(token.string)
            if isinstance(value, str) and (match := ACCELERATOR.match(value)) is not None:
                index = int(match.group(2) or 0)
                named[match.group(1)] = max(named.get(match.group(1), 1), index + 1)
    return named


@contextlib.contextmanager
def faked(devices: dict[str, int]) -> Iterator[None]:
    """FakeDevice for each named accelerator type, with enough devices for every index."""
    with contextlib.ExitStack() as stack:
        for device_type, count in sorted(devices.items()):
            stack.enter_context(
                FakeDevice(device_type, device_count=max(count, 2), patch_torch=True)
            )
        yield


@dataclass
class PageRun:
    """What running a page found: failures, and a package it needs that is not installed."""

    failures: list[str]
    missing: str | None = None


def _not_installed(error: Exception) -> str | None:
    """The third-party package an import failed for, when it is simply not installed."""
    if not isinstance(error, ModuleNotFoundError) or error.name is None:
        return None
    package = error.name.partition(".")[0]
    if package == "memscope" or importlib.util.find_spec(package) is not None:
        return None
    return package


def _shown(page: Path) -> str:
    """The page's path as tracebacks name it: from the repository's root where it is there."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def run_page(page: Path) -> PageRun:
    """Run the page's runnable blocks in order in one namespace; call the tests they define.

    An example test runs right after its block, with the same fake devices. A failure does
    not stop what follows; a block that imports an optional package that is not installed
    (``ray``, say) stops the page there, as the blocks after it may build on it.
    """
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    as_pasted = page.name in AS_PASTED
    prelude = None if as_pasted else PRELUDES.get(page.name)
    if prelude is not None:
        exec(compile(prelude, f"{page.name} (prelude)", "exec"), namespace)
    failures: list[str] = []
    for snippet in snippets(page):
        if snippet.not_run is not None:
            continue
        before = dict(namespace)
        # Line numbers in a traceback are the page's own.
        source = "\n" * snippet.line + snippet.code
        with faked({} if as_pasted else accelerators(snippet.code)):
            try:
                exec(compile(source, _shown(page), "exec"), namespace)
            except Exception as error:
                missing = _not_installed(error)
                if missing is not None:
                    return PageRun(failures, f"line {snippet.line} needs {missing}")
                failures.append(f"line {snippet.line}: {type(error).__name__}: {error}")
                continue
            tests = [
                (name, value)
                for name, value in namespace.items()
                if name.startswith("test_") and callable(value) and before.get(name) is not value
            ]
            for name, test in tests:
                try:
                    test()
                except Exception as error:
                    failures.append(
                        f"line {snippet.line}, {name}(): {type(error).__name__}: {error}"
                    )
    return PageRun(failures)


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(
            page,
            marks=[pytest.mark.xfail(reason=PAGES_AWAITING_FIXES[page.name], strict=True)]
            if page.name in PAGES_AWAITING_FIXES
            else [],
        )
        for page in PAGES
    ],
    ids=lambda page: page.name,
)
def test_page_snippets_run_as_written(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page's ```python blocks run top to bottom, faked accelerators where they name one."""
    monkeypatch.chdir(tmp_path)
    run = run_page(page)
    capsys.readouterr()
    assert run.failures == [], f"{page.name}:\n" + "\n".join(run.failures)
    if run.missing is not None:
        pytest.skip(f"{page.name}: {run.missing}, which is not installed; the rest did not run")


def test_every_page_with_snippets_is_checked() -> None:
    """README.md and every page of docs/ with a ```python block is among the pages run."""
    with_snippets = {page.name for page in PAGES if snippets(page)}
    assert "README.md" in with_snippets
    assert "getting-started.md" in with_snippets
    assert set(PRELUDES) <= {page.name for page in PAGES}
    assert set(PAGES_AWAITING_FIXES) <= with_snippets


def test_the_first_pages_run_as_pasted() -> None:
    """The README, getting-started and the guide have no prelude, no not-run block, and no
    block that names an accelerator: each runs as pasted on a CPU-only machine."""
    assert AS_PASTED.isdisjoint(PRELUDES)
    for page in PAGES:
        if page.name in AS_PASTED:
            blocks = snippets(page)
            assert blocks, page.name
            assert [block.line for block in blocks if block.not_run is not None] == []
            assert [block.line for block in blocks if accelerators(block.code)] == [], page.name


def test_not_run_markers_give_a_reason_and_are_few() -> None:
    """Each block marked not-run says why, and most blocks run."""
    every = [snippet for page in PAGES for snippet in snippets(page)]
    skipped = [snippet for snippet in every if snippet.not_run is not None]
    assert all(len(snippet.not_run.split()) >= 2 for snippet in skipped if snippet.not_run)
    assert len(skipped) <= len(every) // 5


def test_markers_are_found_only_right_before_a_fence(tmp_path: Path) -> None:
    """A not-run comment marks the block it precedes, and only that one."""
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n<!-- not-run: needs torchrun -->\n```python\nboom()\n```\n\n"
        "```python\nx = 1\n```\n"
    )
    found = snippets(page)
    assert [(snippet.line, snippet.not_run) for snippet in found] == [
        (4, "needs torchrun"),
        (8, None),
    ]


def test_accelerators_are_read_from_strings_only() -> None:
    """ "cuda:1" in a string asks for two fake CUDA devices; a comment asks for nothing."""
    assert accelerators('MemoryManager("cuda:1")  # or "mps"\n') == {"cuda": 2}
    assert accelerators('m = MemoryManager("mps")\nn = MemoryManager("cuda")\n') == {
        "mps": 1,
        "cuda": 1,
    }
    assert accelerators("MemoryManager()  # auto-detects; or 'cuda'\n") == {}


def test_a_missing_optional_package_skips_the_rest_of_the_page(tmp_path: Path) -> None:
    """A block importing a package that is not installed ends the page; earlier ones count."""
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n```python\nimport no_such_package_here\n```\n\n"
        "```python\nraise RuntimeError('never reached')\n```\n"
    )
    assert run_page(page) == PageRun([], "line 5 needs no_such_package_here")
    (tmp_path / "broken.md").write_text("```python\nfrom memscope import no_such_name\n```\n")
    assert run_page(tmp_path / "broken.md").failures[0].startswith("line 1: ImportError: ")
