"""The ``memscope`` command (also ``python -m memscope``).

``memscope`` alone prints the detected device's memory and the estimates for three image
sizes that the MemoryManager API of the Cobra batch-processing system documents;
``memscope info``, ``memscope estimate``, ``memscope demo`` and ``memscope report`` do more
(see ``--help``).
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
from typing import TYPE_CHECKING, Any, NoReturn

# Only what the parser needs is imported here: `memscope --version` and `--help` answer
# without torch, whose import takes seconds; each command imports what it runs.
from memscope._version import __version__
from memscope.cli._calibrate import add_calibrate_parser
from memscope.cli._options import (
    DEFAULT_EVERY,
    DEFAULT_IMAGES,
    DEFAULT_SIZE,
    DEVICE_OPTIONS,
    as_typed,
    format_size,
    parse_image_size,
)
from memscope.cli._report import add_report_parser
from memscope.exceptions import HostMemoryUnavailableError, MemscopeError
from memscope.snapshot import NO_DEVICE_FIGURES, NOT_REPORTED
from memscope.units import format_bytes

if TYPE_CHECKING:
    from memscope.cli.demo import DemoResult, DemoRun
    from memscope.estimation import ImageMemoryModel
    from memscope.manager import MemoryManager
    from memscope.snapshot import MemorySnapshot

__all__: list[str] = []

EXAMPLE_IMAGE_SIZES = ((512, 512), (1024, 1024), (2048, 2048))

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}

HOST_FIGURES_MISSING = (
    "this process's memory cannot be read here; for its resident memory, peak and limit: "
    "pip install 'memscope[host]'"
)

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

ESTIMATE_OPTIONS = {
    "references": "--references",
    "bytes_per_element": "--dtype",
    "reference_scale": "--reference-scale",
    "channels": "--channels",
    "latent_channels": "--latent-channels",
    "latent_downscale": "--latent-downscale",
    "activation_factor": "--activation-factor",
    "overhead": "--overhead",
}
"""The estimation model's fields, and the options that set them."""


_NEGATIVE_NUMBER_OR_SIZE = re.compile(r"^-\d+(?:[xX][+-]?\d+)?$|^-\d*\.\d+$")

COMMANDS_WITHOUT_A_DEVICE = {
    "estimate": "the estimate depends on the image, not the device",
    "report": "the report reads a journal file",
}
"""The commands a ``--device`` before them does not apply to, and why."""


def _write(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _note(line: str) -> None:
    sys.stderr.write(line + "\n")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors as one line: the usage is one ``--help`` away.

    An argument such as ``-5x5`` reads as a (bad) image size, not as an unknown option, so
    that ``memscope estimate -5x5`` says what is wrong with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes only numbers like -5 or -.5 for values; no option here is named
        # like a number, so a negative size can be a value too.
        self._negative_number_matcher = _NEGATIVE_NUMBER_OR_SIZE

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``: the number with its noun in the right number."""
    noun = singular if number == 1 else (plural if plural is not None else singular + "s")
    return f"{number} {noun}"


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
        dest="top_level_device",
        default=None,
        metavar="DEVICE",
        help=(
            "the device to look at (without a command, and for info) or to colorize on (demo): "
            "cuda, cuda:1, mps, cpu, ... (default: auto-detect; info: every device); may also "
            "follow the command"
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info",
        help="every device torch sees, with its memory figures",
        description=(
            "Every device torch sees (or the one --device names) with its memory figures, "
            "this process's host memory, and the torch and CUDA versions. The text and the "
            "JSON state the same facts; JSON says null where the text says n/a."
        ),
    )
    info.add_argument(
        "--device", default=None, metavar="DEVICE", help="only this device (every device)"
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
        help="a leaky colorization job, without and with memscope's cleanup, compared",
        description=(
            "The main job on an embedded default, leaky as real pipelines are: draws "
            "synthetic line-art images and colorizes them with a small random convolutional "
            "network, each image leaving its features behind in a reference cycle. The loop "
            "runs twice: without memscope's cleanup (a count-only managed_batch(every=None)) "
            "and with it (managed_batch(every=K) with a memory budget). It prints both "
            "reports and writes, into a new folder, each run's report (JSON), memory timeline "
            "(CSV) and, with the plot extra (Pillow and matplotlib), colorized images, and a "
            "plot of both timelines side by side (PNG)."
        ),
    )
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
    demo.set_defaults(command_parser=demo)

    add_report_parser(commands)
    add_calibrate_parser(commands)
    return parser


# The commands -----------------------------------------------------------------------------


def _manager(parser: argparse.ArgumentParser, device: str | None) -> MemoryManager:
    """A manager for ``device``, or the parser's one-line error naming ``--device``."""
    from memscope.manager import MemoryManager

    try:
        return MemoryManager(device)
    except MemscopeError as error:
        parser.error(as_typed(str(error), DEVICE_OPTIONS))


def _overview(parser: argparse.ArgumentParser, device: str | None) -> int:
    import torch

    manager = _manager(parser, device)
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
    from memscope.host import HostMemoryMonitor

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


INFO_DEVICE_FIGURES = ("usage", "used", "free", "total", "allocated", "reserved")
"""What ``info`` says of each device, in the table's order and under the JSON's keys."""


def _device_figures(snapshot: MemorySnapshot) -> dict[str, Any]:
    """A device's row of ``info``: ``None`` where the device does not tell.

    A device that reports no figures (the CPU) has no usage either: torch's 0.0 there is a
    convention, not a measurement.
    """
    return {
        "device": snapshot.device,
        "usage": snapshot.usage if snapshot.total is not None else None,
        "used": snapshot.used,
        "free": snapshot.free,
        "total": snapshot.total,
        "allocated": snapshot.allocated,
        "reserved": snapshot.reserved,
    }


def _info(parser: argparse.ArgumentParser, device: str | None, as_json: bool) -> int:
    import torch

    from memscope.backends import available_devices
    from memscope.manager import MemoryManager

    if device is None:
        snapshots = [MemoryManager(each).snapshot() for each in available_devices()]
    else:
        snapshots = [_manager(parser, device).snapshot()]
    devices = [_device_figures(snapshot) for snapshot in snapshots]
    host = _read_host_memory()
    cuda_version = torch.version.cuda
    if as_json:
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
    rows = [
        (
            figures["device"],
            NOT_REPORTED if figures["usage"] is None else _format_fraction(figures["usage"]),
            *(format_bytes(figures[name]) for name in INFO_DEVICE_FIGURES[1:]),
        )
        for figures in devices
    ]
    _write_table(("device", *INFO_DEVICE_FIGURES), rows)
    if any(all(figures[name] is None for name in INFO_DEVICE_FIGURES) for figures in devices):
        _write(f"{NOT_REPORTED}: {NO_DEVICE_FIGURES}")
    elif any(None in figures.values() for figures in devices):
        _write(f"{NOT_REPORTED}: the device does not report this figure")
    _write(str(host))
    return 0


def _write_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    for row in (columns, *rows):
        first, *others = row
        cells = [first.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(others, widths[1:], strict=True)]
        _write("  ".join(cells).rstrip())


def _dtype_name(bytes_per_element: int) -> str:
    names = [name for name, size in DTYPE_BYTES.items() if size == bytes_per_element]
    return " or ".join(names) if names else f"{counted(bytes_per_element, 'byte')} per element"


def _format_factor(value: float) -> str:
    return f"{value:g}x"


def describe_model(model: ImageMemoryModel) -> list[str]:
    """The estimation model's assumptions, as a few lines a person reads at a glance."""
    scale = _format_factor(model.reference_scale)
    downscale = model.latent_downscale
    return [
        f"  tensors: {_dtype_name(model.bytes_per_element)} "
        f"({counted(model.bytes_per_element, 'byte')} per element), "
        f"{counted(model.channels, 'image channel')}",
        f"  references: {counted(model.references, 'reference image')} per image, "
        f"at {scale} the image's sides",
        f"  latent: {counted(model.latent_channels, 'channel')} at 1/{downscale} of the "
        f"image's sides; activations {_format_factor(model.activation_factor)} the latent",
        f"  overhead: {_format_factor(model.overhead)} the sum",
    ]


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
    from memscope.estimation import ImageMemoryModel

    try:
        model = ImageMemoryModel(**{k: v for k, v in options.items() if v is not None})
    except MemscopeError as error:
        parser.error(as_typed(str(error), ESTIMATE_OPTIONS))
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
    _write("estimated memory per image, by the estimation model (ImageMemoryModel):")
    for line in describe_model(model):
        _write(line)
    _write_table(
        ("size", "pixels", "bytes", "memory"),
        [
            (format_size(size), f"{size[0] * size[1]:,}", f"{estimate:,}", format_bytes(estimate))
            for size, estimate in estimates
        ],
    )
    return 0


def _demo(
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
        _note(
            "memscope demo: no progress bar: tqdm is not installed "
            "(pip install 'memscope[progress]')"
        )
    cleanup = "after every image" if demo.every == 1 else f"after every {demo.every} images"
    _write(
        f"colorizing {counted(demo.images, 'synthetic line-art image')} of "
        f"{demo.width}x{demo.height} on {demo.device}, twice; each leaves "
        f"{format_bytes(demo.leftover_bytes)} in a reference cycle"
    )
    _write("  without cleanup: managed_batch(every=None) counts and records, never cleans up")
    _write(
        f"  with cleanup: managed_batch(every={demo.every}, budget=...) cleans up {cleanup}; "
        f"GC at {demo.memory_threshold:.0%} of the budget"
    )
    try:
        result = demo.run()
    except KeyboardInterrupt:
        removed = demo.removed_output
        _note(
            "memscope demo: interrupted"
            + ("" if removed is None else f"; removed its partial output in {removed}")
        )
        return 130
    for name, report in (
        ("without cleanup", result.without_cleanup.report),
        ("with cleanup", result.with_cleanup.report),
    ):
        head, *details = report.lines()
        _write(f"{name}: {head}")
        for line in details:
            _write(line)
    _write_demo_files(result)
    return 0


def _write_demo_files(result: DemoResult) -> None:
    _write(f"wrote to {result.folder}/:")
    if result.timeline_plot is not None:
        _write(f"  {result.timeline_plot.name:<17} memory after each image, both runs side by side")
    for run in result.runs:
        _write(f"  {run.name + '/':<17} {_run_files(run, result.images_skipped is None)}")
    if result.skipped is not None:
        _write(f"  (skipped: {result.skipped})")


def _run_files(run: DemoRun, with_images: bool) -> str:
    files = f"{run.report_json.name} (the report), {run.timeline_csv.name} (one row per image)"
    if with_images:
        files += f", images/ ({counted(len(run.images), 'colorized image')}, PNG)"
    return files


def _chosen_device(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> str | None:
    """``--device``, given before the command or after it (once, or twice alike)."""
    before: str | None = arguments.top_level_device
    after: str | None = getattr(arguments, "device", None)
    if arguments.command in COMMANDS_WITHOUT_A_DEVICE and before is not None:
        reason = COMMANDS_WITHOUT_A_DEVICE[arguments.command]
        parser.error(f"--device does not apply to {arguments.command}: {reason}")
    if before is not None and after is not None and before != after:
        parser.error(f"--device given twice, as {before!r} and {after!r}")
    return after if after is not None else before


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    # Errors found after parsing are reported by the command's own parser, named after it.
    command_parser: argparse.ArgumentParser = getattr(arguments, "command_parser", parser)
    device = _chosen_device(command_parser, arguments)
    if hasattr(arguments, "device"):
        # Commands that read their own --device see one given before the command too.
        arguments.device = device
    try:
        if arguments.command == "info":
            return _info(command_parser, device, arguments.json)
        if arguments.command == "estimate":
            return _estimate(command_parser, arguments)
        if arguments.command == "demo":
            return _demo(command_parser, arguments, device)
        if arguments.command == "report":
            from memscope.cli._report import run_report

            return run_report(arguments)
        if arguments.command == "calibrate":
            from memscope.cli._calibrate import run_calibrate

            return run_calibrate(arguments)
        return _overview(parser, device)
    except KeyboardInterrupt:
        _note("memscope: interrupted")
        return 130
    except BrokenPipeError:
        # The reader left (`memscope estimate ... | head`). Python flushes stdout again at
        # exit, which would fail the same way; pointing it at devnull lets it exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe closed on
