"""The ``memscope`` command (also ``python -m memscope``).

``memscope`` alone prints the detected device's memory and the estimates for three image
sizes that the MemoryManager API of the Cobra batch-processing system documents;
``memscope info``, ``memscope estimate`` and ``memscope demo`` do more (see ``--help``).
A bad argument, memscope's own complaints about one included, exits with status 2 and one
line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from memscope._validation import check_fraction
from memscope._version import __version__
from memscope.backends import available_devices
from memscope.cli.demo import DEFAULT_EVERY, DEFAULT_IMAGES, DEFAULT_SIZE, Demo, DemoResult
from memscope.estimation import ImageMemoryModel
from memscope.exceptions import HostMemoryUnavailableError, MemscopeError
from memscope.host import HostMemoryMonitor
from memscope.manager import MemoryManager
from memscope.units import format_bytes

__all__: list[str] = []

EXAMPLE_IMAGE_SIZES = ((512, 512), (1024, 1024), (2048, 2048))

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}

HOST_FIGURES_MISSING = (
    "this process's memory cannot be read here; for its resident memory, peak and limit: "
    "pip install 'memscope[host]'"
)

_SIZE = re.compile(r"(\d+)(?:[xX](\d+))?")


def _write(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _note(line: str) -> None:
    sys.stderr.write(line + "\n")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors as one line: the usage is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def parse_image_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``; ``"512"`` -> ``(512, 512)``."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid image size {text!r}: use WIDTHxHEIGHT (1024x768) or one side (512)"
        )
    width = int(match.group(1))
    height = width if match.group(2) is None else int(match.group(2))
    if width == 0 or height == 0:
        raise argparse.ArgumentTypeError(f"invalid image size {text!r}: sides must be positive")
    return width, height


def _format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _format_fraction(value: float) -> str:
    return f"{value:.1%}"


# The parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``memscope`` argument parser, subcommands included."""
    parser = _ArgumentParser(
        prog="memscope",
        description=(
            "Keep GPU memory in check across long PyTorch batch jobs. Without a command: "
            "the detected device's memory and the memory one image of 512x512, 1024x1024 "
            "and 2048x2048 pixels needs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"memscope {__version__}")
    parser.add_argument(
        "--device",
        dest="overview_device",
        default=None,
        help="device to inspect without a command (default: auto-detect)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info",
        help="every device torch sees, with its memory figures",
        description="Every device torch sees, its memory figures, and the torch and CUDA versions.",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(command_parser=info)

    estimate = commands.add_parser(
        "estimate",
        help="memory one image needs, by the estimation model",
        description=(
            "Bytes one image needs, by memscope's ImageMemoryModel (input, latent, "
            "activations and reference images, times an overhead factor)."
        ),
    )
    estimate.add_argument(
        "sizes",
        nargs="+",
        type=parse_image_size,
        metavar="SIZE",
        help="image size as WIDTHxHEIGHT (1024x768) or one side (512)",
    )
    estimate.add_argument(
        "--references", type=int, metavar="N", help="reference images per image (4)"
    )
    estimate.add_argument(
        "--dtype",
        choices=sorted(DTYPE_BYTES),
        help="element type of the tensors (float32)",
    )
    estimate.add_argument(
        "--reference-scale", type=float, metavar="S", help="reference side over image side (1.0)"
    )
    estimate.add_argument("--channels", type=int, metavar="N", help="image channels (3)")
    estimate.add_argument("--latent-channels", type=int, metavar="N", help="latent channels (4)")
    estimate.add_argument(
        "--latent-downscale", type=int, metavar="N", help="latent downscale factor (8)"
    )
    estimate.add_argument(
        "--activation-factor",
        type=float,
        metavar="F",
        help="activations as a multiple of the latent (2.0)",
    )
    estimate.add_argument(
        "--overhead", type=float, metavar="F", help="overall overhead factor (1.5)"
    )
    estimate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    estimate.set_defaults(command_parser=estimate)

    demo = commands.add_parser(
        "demo",
        help="colorize synthetic line art in a managed batch and write a report",
        description=(
            "The main job on an embedded default: draws synthetic line-art images, "
            "colorizes them with a small random convolutional network inside managed_batch "
            "with @auto_clear, prints the batch report and writes the report (JSON), the "
            "memory timeline (CSV) and, with the plot extra (Pillow and matplotlib), the "
            "colorized images and the timeline's plot (PNG) into a new folder."
        ),
    )
    demo.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        metavar="N",
        help=f"how many images ({DEFAULT_IMAGES})",
    )
    demo.add_argument(
        "--size",
        type=parse_image_size,
        default=DEFAULT_SIZE,
        metavar="SIZE",
        help=f"image size, WIDTHxHEIGHT or one side ({_format_size(DEFAULT_SIZE)})",
    )
    demo.add_argument(
        "--device", default=None, metavar="DEVICE", help="device to colorize on (auto-detect)"
    )
    demo.add_argument(
        "--threshold",
        type=float,
        default=0.8,
        metavar="T",
        help="memory usage at or above which a cleanup collects garbage (0.8)",
    )
    demo.add_argument(
        "--every",
        type=int,
        default=DEFAULT_EVERY,
        metavar="K",
        help=f"clean up after every this many images ({DEFAULT_EVERY})",
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
    demo.set_defaults(command_parser=demo)
    return parser


# The commands -----------------------------------------------------------------------------


def _overview(parser: argparse.ArgumentParser, device: str | None) -> int:
    try:
        manager = MemoryManager(device)
    except MemscopeError as error:
        parser.error(str(error))
    _write(f"memscope {__version__}, torch {torch.__version__}")
    _write(f"device: {manager.resolved_device}")
    _write(f"memory: {manager.snapshot()}")
    _write("estimated memory per image (default ImageMemoryModel):")
    for width, height in EXAMPLE_IMAGE_SIZES:
        estimate = manager.estimate_memory_required((width, height))
        size = f"{width}x{height}"
        _write(f"  {size:>9}: {estimate:>13,} bytes ({format_bytes(estimate)})")
    _write("more: memscope info, memscope estimate SIZE, memscope demo (see memscope --help)")
    return 0


@dataclasses.dataclass(frozen=True, slots=True)
class _HostMemory:
    """This process's host memory as ``info`` shows it; ``None`` where it is not known."""

    resident: int | None = None
    peak: int | None = None
    limit: int | None = None
    limit_source: str | None = None
    missing: str | None = None
    """Why the figures are unknown, when they are."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "resident": self.resident,
            "peak": self.peak,
            "limit": self.limit,
            "limit_source": self.limit_source,
        }

    def __str__(self) -> str:
        if self.missing is not None:
            return f"host memory (this process): n/a: {self.missing}"
        return (
            f"host memory (this process): resident {format_bytes(self.resident)}, "
            f"peak {format_bytes(self.peak)}, limit {format_bytes(self.limit)} "
            f"({self.limit_source})"
        )


def _read_host_memory() -> _HostMemory:
    """The process's resident memory, its peak and the host's limit, where they can be read.

    The figures come from psutil, or from ``/proc`` on Linux without it, as for a batch.
    """
    try:
        monitor = HostMemoryMonitor()
        resident = monitor.resident_bytes()
    except (HostMemoryUnavailableError, OSError, ValueError):
        return _HostMemory(missing=HOST_FIGURES_MISSING)
    peak = _peak_resident_bytes()
    return _HostMemory(
        resident=resident,
        # Read after the resident figure, and never below it: a peak is at least the present.
        peak=None if peak is None else max(peak, resident),
        limit=monitor.limit.size,
        limit_source=monitor.limit.source,
    )


def _peak_resident_bytes() -> int | None:
    """The most resident memory this process has held, where the platform tells it."""
    try:
        import resource
    except ImportError:  # Windows has no resource module.
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS counts ru_maxrss in bytes; Linux and the BSDs count it in KiB.
    return peak if sys.platform == "darwin" else peak * 1024


def _info(as_json: bool) -> int:
    snapshots = [MemoryManager(device).snapshot() for device in available_devices()]
    host = _read_host_memory()
    cuda_version = torch.version.cuda
    if as_json:
        devices = []
        for snapshot in snapshots:
            device = snapshot.to_dict()
            if snapshot.total is None:
                # The table says n/a: a device that reports no figures has no usage either.
                device["usage"] = None
            devices.append(device)
        data = {
            "memscope": __version__,
            "torch": torch.__version__,
            "cuda": cuda_version,
            "devices": devices,
            "host": host.to_dict(),
        }
        _write(json.dumps(data, indent=2))
        if host.missing is not None:
            _note(f"memscope info: no host memory figures: {host.missing}")
        return 0
    _write(f"memscope {__version__}, torch {torch.__version__}, CUDA {cuda_version or 'n/a'}")
    columns = ("device", "usage", "total", "free", "allocated", "reserved")
    rows = [
        (
            snapshot.device,
            _format_fraction(snapshot.usage) if snapshot.total is not None else "n/a",
            format_bytes(snapshot.total),
            format_bytes(snapshot.free),
            format_bytes(snapshot.allocated),
            format_bytes(snapshot.reserved),
        )
        for snapshot in snapshots
    ]
    _write_table(columns, rows)
    if any(snapshot.total is None for snapshot in snapshots):
        _write("n/a: the device does not report this figure")
    _write(str(host))
    return 0


def _write_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    for row in (columns, *rows):
        first, *others = row
        cells = [first.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(others, widths[1:], strict=True)]
        _write("  ".join(cells).rstrip())


def _estimate(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "references": arguments.references,
        "bytes_per_element": None if arguments.dtype is None else DTYPE_BYTES[arguments.dtype],
        "reference_scale": arguments.reference_scale,
        "channels": arguments.channels,
        "latent_channels": arguments.latent_channels,
        "latent_downscale": arguments.latent_downscale,
        "activation_factor": arguments.activation_factor,
        "overhead": arguments.overhead,
    }
    try:
        model = ImageMemoryModel(**{k: v for k, v in options.items() if v is not None})
    except MemscopeError as error:
        parser.error(str(error))
    estimates = [(size, model.estimate(size)) for size in arguments.sizes]
    if arguments.json:
        data = {
            "model": dataclasses.asdict(model),
            "estimates": [
                {"width": width, "height": height, "bytes": estimate}
                for (width, height), estimate in estimates
            ],
        }
        _write(json.dumps(data, indent=2))
        return 0
    _write(f"estimated memory per image, {model}")
    _write_table(
        ("size", "pixels", "bytes", "memory"),
        [
            (_format_size(size), f"{size[0] * size[1]:,}", f"{estimate:,}", format_bytes(estimate))
            for size, estimate in estimates
        ],
    )
    return 0


def _demo(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    progress = not arguments.no_progress
    if progress and importlib.util.find_spec("tqdm") is None:
        progress = False
        _note(
            "memscope demo: no progress bar: tqdm is not installed "
            "(pip install 'memscope[progress]')"
        )
    try:
        # Checked here too, so the message names the option the user typed.
        check_fraction(arguments.threshold, "--threshold")
        demo = Demo(
            images=arguments.images,
            size=arguments.size,
            device=arguments.device,
            memory_threshold=arguments.threshold,
            every=arguments.every,
            out=arguments.out,
            seed=arguments.seed,
            progress=progress,
        )
    except MemscopeError as error:
        parser.error(str(error))
    _write(
        f"colorizing {demo.images} synthetic line-art images of {demo.width}x{demo.height} "
        f"on {demo.device} (GC threshold {demo.manager.memory_threshold:.0%}, cleanup every "
        f"{demo.every} images)"
    )
    result = demo.run()
    _write(result.report.summary())
    _write_demo_files(result)
    return 0


def _write_demo_files(result: DemoResult) -> None:
    _write(f"wrote to {result.folder}/:")
    if result.images_skipped is None:
        _write(f"  images/         {len(result.images)} colorized images (PNG)")
    _write(f"  {result.report_json.name:<15} the batch report")
    _write(f"  {result.timeline_csv.name:<15} the memory timeline, one row per image")
    if result.timeline_plot is not None:
        _write(f"  {result.timeline_plot.name:<15} the memory timeline as a plot")
    if result.skipped is not None:
        _write(f"  (skipped: {result.skipped})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    # Errors found after parsing are reported by the command's own parser, named after it.
    command_parser: argparse.ArgumentParser = getattr(arguments, "command_parser", parser)
    try:
        if arguments.command == "info":
            return _info(arguments.json)
        if arguments.command == "estimate":
            return _estimate(command_parser, arguments)
        if arguments.command == "demo":
            return _demo(command_parser, arguments)
        return _overview(parser, arguments.overview_device)
    except KeyboardInterrupt:
        _note("memscope: interrupted")
        return 130
    except BrokenPipeError:
        # The reader left (`memscope estimate ... | head`). Python flushes stdout again at
        # exit, which would fail the same way; pointing it at devnull lets it exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe closed on
