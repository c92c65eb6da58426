"""The ``memscope`` command: what memscope sees on this machine."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from memscope._version import __version__
from memscope.exceptions import MemscopeError
from memscope.manager import MemoryManager
from memscope.units import format_bytes

SEED_EXAMPLE_SIZES = ((512, 512), (1024, 1024), (2048, 2048))


def _write(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memscope",
        description="Show the detected device's memory figures and the seed's image estimates.",
    )
    parser.add_argument("--version", action="version", version=f"memscope {__version__}")
    parser.add_argument("--device", default=None, help="device to inspect (default: auto-detect)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        manager = MemoryManager(arguments.device)
    except MemscopeError as error:
        parser.error(str(error))
    _write(f"memscope {__version__}, torch {torch.__version__}")
    _write(f"device: {manager.resolved_device}")
    _write(f"memory: {manager.snapshot()}")
    _write("estimated memory per image (default ImageMemoryModel):")
    for width, height in SEED_EXAMPLE_SIZES:
        estimate = manager.estimate_memory_required((width, height))
        size = f"{width}x{height}"
        _write(f"  {size:>9}: {estimate:>13,} bytes ({format_bytes(estimate)})")
    return 0
