"""``memscope calibrate``: fit a memory model to the demo colorizer's measured peaks.

It runs :func:`memscope.sizing.calibrate` on the demo's :class:`~memscope.cli.demo.Colorizer`
(random weights, random line art) at a few small image sizes and batch sizes on the chosen
device, and prints the fitted model, its samples, and what it predicts for larger images:
the way to calibrate a model of your own, shown on one that ships with memscope.

:func:`add_calibrate_arguments` adds its options to the ``memscope`` parser and
:func:`run_calibrate` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memscope.cli._options import (
    DEVICE_OPTIONS,
    as_typed,
    format_size,
    parse_image_size,
    write_table,
)
from memscope.exceptions import (
    HostMemoryUnavailableError,
    MemoryFiguresUnavailableError,
    MemscopeError,
)
from memscope.units import format_bytes

if TYPE_CHECKING:
    from memscope.estimation import CalibratedImageMemoryModel
    from memscope.manager import MemoryManager

__all__ = ["add_calibrate_arguments", "run_calibrate"]

DEFAULT_SIZES = ((64, 64), (128, 128), (256, 256))
DEFAULT_BATCH_SIZES = (1, 2)
DEFAULT_PREDICTIONS = ((512, 512), (1024, 1024), (2048, 2048))
POOR_FIT_MISS = 0.10
"""A fit whose largest miss on its own samples is above this share gets a caution."""
POOR_FIT_R_SQUARED = 0.99
"""So does a fit whose R^2 is below this: memory is then not linear in pixels x batch."""


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: use an int >= 1")
    return number


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    """fit a memory model to the demo colorizer's measured peaks

    Runs the demo's colorizer (random weights) at a few small image sizes and batch
    sizes on the device, measures each run's peak memory (the allocator's peak on CUDA
    and other accelerators, the process's peak resident memory on a Linux CPU), fits
    memory = fixed + per_pixel x pixels x batch, and prints the fit and what it predicts
    for larger images.
    """
    parser.add_argument(
        "--device", default=None, metavar="DEVICE", help="device to calibrate on (auto-detect)"
    )

    def sizes(option: str, default: Sequence[tuple[int, int]], text: str) -> None:
        parser.add_argument(
            option,
            nargs="+",
            type=parse_image_size,
            default=list(default),
            metavar="SIZE",
            help=text,
        )

    sizes("--sizes", DEFAULT_SIZES, "image sizes to measure, WIDTHxHEIGHT or one side (64 128 256)")
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=_positive_int,
        default=list(DEFAULT_BATCH_SIZES),
        metavar="N",
        help="batch sizes to measure at each image size (1 2)",
    )
    sizes("--predict", DEFAULT_PREDICTIONS, "image sizes to predict the memory of (512 1024 2048)")
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=2,
        metavar="N",
        help="runs of each size, the largest peak counting (2)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="picks the colorizer's weights (0)"
    )


def run_calibrate(arguments: argparse.Namespace) -> int:
    """Run ``memscope calibrate`` with parsed ``arguments``; returns the exit status.

    A bad argument (a device that is not there, say) exits through the subcommand's parser
    with status 2; a device whose peak memory cannot be measured prints why and returns 1.
    """
    # Imported here, not at the top: the parser is built without torch (fast --help).
    import torch

    from memscope.cli.demo import Colorizer, leftover_bytes
    from memscope.estimation import available_bytes, calibrate
    from memscope.manager import MemoryManager
    from memscope.oom import is_oom_error

    parser: argparse.ArgumentParser = arguments.command_parser
    try:
        manager = MemoryManager(arguments.device)
        if manager.resolved_device.type == "cpu":
            # The host's figures say how large a batch fits now; calibrating needs none.
            manager = _with_host_figures(manager)
    except MemscopeError as error:
        parser.error(as_typed(str(error), DEVICE_OPTIONS))
    device = manager.resolved_device
    available = available_bytes(manager.snapshot())
    if available is not None:
        # The colorizer holds both hidden layers' features at once: a floor of what a run
        # needs. A size whose floor does not fit is refused before anything is allocated.
        largest = max(arguments.sizes, key=lambda size: size[0] * size[1])
        batch_size = max(arguments.batch_sizes)
        needed = batch_size * leftover_bytes(*largest)
        if needed > available:
            parser.error(
                f"--sizes {format_size(largest)} at batch size {batch_size} needs at least "
                f"{format_bytes(needed)}, more than the {format_bytes(available)} available "
                f"on {device}; use smaller sizes or batch sizes"
            )
    model = Colorizer(seed=arguments.seed).to(device).eval()

    def colorize(batch_size: int, image_size: tuple[int, int]) -> None:
        width, height = image_size
        with torch.inference_mode():
            line_art = torch.rand(batch_size, 1, height, width, device=device)
            model(line_art)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        fitted = calibrate(
            colorize,
            manager=manager,
            image_sizes=arguments.sizes,
            batch_sizes=arguments.batch_sizes,
            repeats=arguments.repeats,
        )
    except MemoryFiguresUnavailableError as error:
        sys.stderr.write(f"memscope calibrate: {error}\n")
        return 1
    except MemscopeError as error:
        parser.error(str(error))
    except Exception as error:
        # Memory that the check above could not see (other processes, fragmentation).
        if not is_oom_error(error):
            raise
        parser.error(
            f"--sizes {' '.join(format_size(size) for size in arguments.sizes)} ran out of "
            f"memory on {device}; use smaller sizes or batch sizes"
        )
    available = available_bytes(manager.snapshot())
    if arguments.json:
        _write_json(fitted, arguments.predict, available)
    else:
        _write_text(fitted, arguments.predict, available)
    caution = poor_fit_caution(fitted)
    if caution is not None:
        sys.stderr.write(f"memscope calibrate: warning: {caution}\n")
    return 0


def poor_fit_caution(fitted: CalibratedImageMemoryModel) -> str | None:
    """Why the fit's predictions deserve caution, or ``None`` when it fits its samples well."""
    if fitted.max_relative_error <= POOR_FIT_MISS and fitted.r_squared >= POOR_FIT_R_SQUARED:
        return None
    return (
        f"the fit misses its own samples by up to {fitted.max_relative_error:.0%} "
        f"(R^2 {fitted.r_squared:.3f}): memory is not linear in pixels x batch size here, "
        "so the predictions are rough; measure at sizes closer to the ones you will run "
        "(--sizes), or more times (--repeats)"
    )


def _with_host_figures(manager: MemoryManager) -> MemoryManager:
    from memscope.manager import MemoryManager

    try:
        return MemoryManager(manager.device, host=True)
    except HostMemoryUnavailableError:
        return manager


def _estimates(
    fitted: CalibratedImageMemoryModel, sizes: list[tuple[int, int]], available: int | None
) -> list[dict[str, Any]]:
    return [
        {
            "width": size[0],
            "height": size[1],
            "bytes": fitted.estimate(size),
            "max_batch_size": None if available is None else fitted.max_batch_size(size, available),
        }
        for size in sizes
    ]


def _write_json(
    fitted: CalibratedImageMemoryModel, sizes: list[tuple[int, int]], available: int | None
) -> None:
    data = {
        "model": fitted.to_dict(),
        "available_bytes": available,
        "estimates": _estimates(fitted, sizes, available),
    }
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _write_text(
    fitted: CalibratedImageMemoryModel, sizes: list[tuple[int, int]], available: int | None
) -> None:
    write = sys.stdout.write
    write(f"calibrated the demo colorizer on {fitted.device}, peaks from {fitted.method}\n")
    write_table(
        ("size", "batch", "peak"),
        [
            (
                format_size(sample.image_size),
                str(sample.batch_size),
                format_bytes(sample.peak_bytes),
            )
            for sample in fitted.samples
        ],
    )
    write(f"\nfitted: {fitted}\n\n")
    columns = ["size", "pixels", "bytes", "memory"]
    if available is not None:
        columns.append(f"batch in {format_bytes(available)}")
    rows = []
    for estimate in _estimates(fitted, sizes, available):
        width, height = estimate["width"], estimate["height"]
        row = [
            f"{width}x{height}",
            f"{width * height:,}",
            f"{estimate['bytes']:,}",
            format_bytes(estimate["bytes"]),
        ]
        if available is not None:
            row.append(str(estimate["max_batch_size"]))
        rows.append(tuple(row))
    write("predicted memory per image")
    if available is None:
        write(":\n")
    else:
        from memscope.estimation import DEFAULT_HEADROOM

        write(f" (and the batch that fits now, less {DEFAULT_HEADROOM:.0%} headroom):\n")
    write_table(tuple(columns), rows)
