"""``memscope demo``: its options, and what it prints of the two runs (see memscope.cli.demo).

The parser is built without torch; :func:`run_demo` imports the demo when it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import TYPE_CHECKING

from memscope.cli._options import (
    DEFAULT_EVERY,
    DEFAULT_IMAGES,
    DEFAULT_SIZE,
    as_typed,
    counted,
    format_size,
    note,
    parse_image_size,
    write,
)
from memscope.exceptions import MemscopeError
from memscope.units import format_bytes

if TYPE_CHECKING:
    from memscope.cli.demo import DemoResult, DemoRun

__all__ = ["add_demo_arguments", "run_demo"]

DEMO_OPTIONS = {
    "images": "--images",
    "size": "--size",
    "device": "--device",
    "memory_threshold": "--threshold",
    "every": "--every",
    "seed": "--seed",
    "out": "--out",
}
"""The demo's parameters, and the options that set them."""


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    """a leaky colorization job, without and with memscope's cleanup, compared

    The main job on an embedded default, leaky as real pipelines are: draws synthetic
    line-art images and colorizes them with a small random convolutional network, each
    image leaving its features behind in a reference cycle. The loop runs twice: without
    memscope's cleanup (a count-only managed_batch(every=None)) and with it
    (managed_batch(every=K) with a memory budget). It prints both reports and writes,
    into a new folder, each run's report (JSON), memory timeline (CSV) and, with the
    plot extra (Pillow and matplotlib), colorized images, and a plot of both timelines
    side by side (PNG).
    """
    demo.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        metavar="N",
        help=f"how many images each run colorizes ({DEFAULT_IMAGES})",
    )
    demo.add_argument(
        "--size",
        type=parse_image_size,
        default=DEFAULT_SIZE,
        metavar="SIZE",
        help=f"image size, WIDTHxHEIGHT or one side ({format_size(DEFAULT_SIZE)})",
    )
    demo.add_argument(
        "--device", default=None, metavar="DEVICE", help="device to colorize on (auto-detect)"
    )
    demo.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        metavar="T",
        help=("share of the budget at or above which the run with cleanup collects garbage (0.8)"),
    )
    demo.add_argument(
        "--every",
        type=int,
        default=DEFAULT_EVERY,
        metavar="K",
        help=f"the run with cleanup cleans up after every this many images ({DEFAULT_EVERY})",
    )
    demo.add_argument(
        "--seed", type=int, default=0, metavar="S", help="picks the images and weights (0)"
    )
    demo.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder, new or empty (a new memscope-demo-YYYYmmdd-HHMMSS folder here)",
    )
    demo.add_argument(
        "--no-progress", action="store_true", help="no progress bar even if tqdm is installed"
    )


def run_demo(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace, device: str | None
) -> int:
    from memscope.cli.demo import Demo

    progress = not arguments.no_progress
    try:
        demo = Demo(
            images=arguments.images,
            size=arguments.size,
            device=device,
            memory_threshold=arguments.threshold,
            every=arguments.every,
            out=arguments.out,
            seed=arguments.seed,
            progress=progress and importlib.util.find_spec("tqdm") is not None,
        )
    except MemscopeError as error:
        parser.error(as_typed(str(error), DEMO_OPTIONS))
    if progress and not demo.progress:
        note(
            "memscope demo: no progress bar: tqdm is not installed "
            "(pip install 'memscope[progress]')"
        )
    cleanup = "after every image" if demo.every == 1 else f"after every {demo.every} images"
    write(
        f"colorizing {counted(demo.images, 'synthetic line-art image')} of "
        f"{demo.width}x{demo.height} on {demo.device}, twice; each leaves "
        f"{format_bytes(demo.leftover_bytes)} in a reference cycle"
    )
    write("  without cleanup: managed_batch(every=None) counts and records, never cleans up")
    write(
        f"  with cleanup: managed_batch(every={demo.every}, budget=...) cleans up {cleanup}; "
        f"GC at {demo.memory_threshold:.0%} of the budget"
    )
    try:
        result = demo.run()
    except KeyboardInterrupt:
        removed = demo.removed_output
        note(
            "memscope demo: interrupted"
            + ("" if removed is None else f"; removed its partial output in {removed}")
        )
        return 130
    for name, report in (
        ("without cleanup", result.without_cleanup.report),
        ("with cleanup", result.with_cleanup.report),
    ):
        head, *details = report.lines()
        write(f"{name}: {head}")
        for line in details:
            write(line)
    _write_demo_files(result)
    return 0


def _write_demo_files(result: DemoResult) -> None:
    write(f"wrote to {result.folder}/:")
    if result.timeline_plot is not None:
        write(f"  {result.timeline_plot.name:<17} memory after each image, both runs side by side")
    for run in result.runs:
        write(f"  {run.name + '/':<17} {_run_files(run, result.images_skipped is None)}")
    if result.skipped is not None:
        write(f"  (skipped: {result.skipped})")


def _run_files(run: DemoRun, with_images: bool) -> str:
    files = f"{run.report_json.name} (the report), {run.timeline_csv.name} (one row per image)"
    if with_images:
        files += f", images/ ({counted(len(run.images), 'colorized image')}, PNG)"
    return files
