"""The three example programs of the README of the MemoryManager API of the Cobra
batch-processing system run unchanged but for the import line."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from memscope import MemoryManager
from memscope.testing import FakeDevice, GiB

EXAMPLES = Path(__file__).parent / "seed_examples"
# The Cobra MemoryManager API's README, where the checkout has it beside it.
COBRA_README = Path(__file__).parents[2] / "shared" / "seed" / "memory-manager-readme.md"


def _run(name: str, namespace: dict[str, Any]) -> dict[str, Any]:
    source = (EXAMPLES / f"{name}.py").read_text()
    exec(compile(source, str(EXAMPLES / f"{name}.py"), "exec"), namespace)
    return namespace


def test_examples_are_the_cobra_readmes_but_for_the_import() -> None:
    """Each kept example equals a code block of the Cobra README once the import is swapped."""
    if not COBRA_README.exists():
        pytest.skip("the README of the Cobra MemoryManager API is not beside this checkout")
    blocks = re.findall(r"```python\n(.*?)```", COBRA_README.read_text(), flags=re.DOTALL)
    cobra_import = "from batch_processing.memory import MemoryManager"
    examples = {
        block.replace(cobra_import, "from memscope import MemoryManager") for block in blocks
    }
    for name in ("basic_usage", "integration", "process_batch"):
        assert (EXAMPLES / f"{name}.py").read_text() in examples, name


def test_basic_usage_on_mps(capsys: pytest.CaptureFixture[str]) -> None:
    """The basic example names torch.device("mps"); it runs against the fake MPS device."""
    with FakeDevice("mps", total=16 * GiB) as fake:
        fake.set_usage(0.25)
        _run("basic_usage", {})
    out = capsys.readouterr().out
    assert "Memory usage: 25.00%" in out
    assert "Estimated memory: 91.1 MB" in out
    assert fake.count("torch.mps.empty_cache") == 1


def test_integration_loop_on_cuda() -> None:
    """The integration loop clears the cache after every image and collects under pressure."""
    processed: list[str] = []
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_usage(0.9)
        namespace = _run(
            "integration",
            {
                "MemoryManager": MemoryManager,
                "device": torch.device("cuda"),
                "image_paths": ["a.png", "b.png", "c.png"],
                "image": SimpleNamespace(size=(1024, 1024)),
                "process_image": processed.append,
            },
        )
    assert processed == ["a.png", "b.png", "c.png"]
    manager = namespace["manager"]
    assert manager.stats.gc_runs == 3
    # One clear per image, plus one after each collection.
    assert fake.count("torch.cuda.empty_cache") == 6


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_process_batch(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    """process_batch colorizes every image and reports usage every five images."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        fake.set_usage(0.5)
        namespace = _run(
            "process_batch",
            {
                "load_image": lambda path: SimpleNamespace(size=(512, 512), path=path),
                "colorize_image": lambda image: f"colorized {image.path}",
            },
        )
        results = namespace["process_batch"]([f"{n}.png" for n in range(10)], device)
    assert results == [f"colorized {n}.png" for n in range(10)]
    out = capsys.readouterr().out
    assert "Processing 0.png (estimated 22.8MB)" in out
    expected_usage = "0.00%" if device == "cpu" else "50.00%"
    assert f"Memory usage after 5 images: {expected_usage}" in out
    assert f"Memory usage after 10 images: {expected_usage}" in out
    assert fake.count("torch.cuda.empty_cache") == (10 if device == "cuda" else 0)
