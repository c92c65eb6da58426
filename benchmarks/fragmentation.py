"""Reserved memory with and without expandable segments, on a card fragmented on purpose.

Run ``python -m benchmarks fragmentation`` on a CUDA machine. Each way of configuring the
allocator runs the same workload in a fresh Python process (the allocator reads its settings
once, when CUDA starts): tensors of two sizes interleaved, every other one freed, then ever
larger requests (the pattern of pytorch issue 16655). It prints a Markdown table of
memscope's figures after the workload, ready for docs/allocator.md; this is a benchmark,
nothing here asserts. tests/test_allocator_gpu.py runs the same workload and pins the
direction of the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from memscope.allocator import ALLOCATOR_VARIABLES
from memscope.units import format_bytes

ROOT = Path(__file__).resolve().parents[1]
"""The checkout, where the fresh processes import memscope from (``python -c`` puts the
working folder first on the path)."""

NO_GPU_STATUS = 3
"""The exit status when there is no CUDA device to fragment."""

WORKLOAD = r"""
import json, sys
import torch
import memscope

MiB = 1024**2
pairs, growing, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if how == "configure_allocator":
    memscope.configure_allocator(expandable_segments=True)
device = torch.device("cuda", 0)
small, large = [], []
for _ in range(pairs):
    small.append(torch.empty(3 * MiB, dtype=torch.uint8, device=device))
    large.append(torch.empty(5 * MiB, dtype=torch.uint8, device=device))
del small  # every other tensor freed: 3 MiB holes between the 5 MiB ones
manager = memscope.MemoryManager(device)
holes = manager.snapshot()
for step in range(1, growing + 1):
    grown = torch.empty(step * 11 * MiB, dtype=torch.uint8, device=device)
    del grown
end = manager.snapshot()
print(json.dumps({
    "allocated": end.allocated,
    "reserved": end.reserved,
    "peak_reserved": end.peak_reserved,
    "cached_but_free": end.cached_but_free,
    "inactive_split_after_freeing": holes.inactive_split,
    "cached_but_free_after_freeing": holes.cached_but_free,
}))
"""

WAYS = {
    "native (no settings)": ("plain", {}),
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True": (
        "plain",
        {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
    ),
    "memscope.configure_allocator(expandable_segments=True)": ("configure_allocator", {}),
}
"""Each way of configuring the allocator: the workload's mode and the environment it adds."""


def run_script(
    script: str, arguments: Sequence[str] = (), variables: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The last line of ``script``'s output, as JSON, from a fresh Python process with no
    allocator settings but ``variables``."""
    environment = {
        name: value for name, value in os.environ.items() if name not in ALLOCATOR_VARIABLES
    }
    environment.update(variables or {})
    finished = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"the script exited with {finished.returncode}:\n{finished.stderr}")
    figures: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return figures


def run_workload(how: str, variables: dict[str, str], pairs: int, growing: int) -> dict[str, Any]:
    """The workload's figures in a fresh process with ``variables`` as its allocator settings."""
    return run_script(WORKLOAD, (str(pairs), str(growing), how), variables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fragmentation")
    parser.add_argument("--pairs", type=int, default=128, help="3 MiB + 5 MiB tensor pairs")
    parser.add_argument("--growing", type=int, default=16, help="requests of 11, 22, ... MiB")
    arguments = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: run python -m benchmarks fragmentation on a CUDA machine")
        return NO_GPU_STATUS
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{arguments.pairs} pairs of 3 + 5 MiB, every 3 MiB freed, then {arguments.growing}")
    print("requests of 11, 22, ... MiB, each freed before the next\n")
    print("| allocator | reserved after freeing | peak reserved | reserved at end | allocated |")
    print("|---|---:|---:|---:|---:|")
    for name, (how, variables) in WAYS.items():
        figures = run_workload(how, variables, arguments.pairs, arguments.growing)
        print(
            f"| {name} | {format_bytes(figures['cached_but_free_after_freeing'])} free, "
            f"{format_bytes(figures['inactive_split_after_freeing'])} split | "
            f"{format_bytes(figures['peak_reserved'])} | {format_bytes(figures['reserved'])} | "
            f"{format_bytes(figures['allocated'])} |"
        )
    return 0
