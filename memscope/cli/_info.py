"""``memscope`` without a command, ``memscope info`` and ``memscope estimate``: the device's
memory figures, this process's host memory, and the estimation model's figures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Any

from memscope._version import __version__
from memscope.cli._options import (
    DEVICE_OPTIONS,
    as_typed,
    counted,
    format_size,
    parse_image_size,
    write,
    write_table,
)
from memscope.exceptions import HostMemoryUnavailableError, MemscopeError
from memscope.snapshot import NO_DEVICE_FIGURES, NOT_REPORTED
from memscope.units import format_bytes

if TYPE_CHECKING:
    from memscope.estimation import ImageMemoryModel
    from memscope.manager import MemoryManager
    from memscope.snapshot import MemorySnapshot

__all__ = [
    "add_estimate_arguments",
    "add_info_arguments",
    "run_estimate",
    "run_info",
    "run_overview",
]

EXAMPLE_IMAGE_SIZES = ((512, 512), (1024, 1024), (2048, 2048))

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}

HOST_FIGURES_MISSING = (
    "this process's memory cannot be read here; for its resident memory, peak and limit: "
    "pip install 'memscope[host]'"
)

ESTIMATE_ARGUMENTS = (
    ("references", "--references", int, "N", "reference images per image (4)"),
    ("reference_scale", "--reference-scale", float, "S", "reference side over image side (1.0)"),
    ("channels", "--channels", int, "N", "image channels (3)"),
    ("latent_channels", "--latent-channels", int, "N", "latent channels (4)"),
    ("latent_downscale", "--latent-downscale", int, "N", "latent downscale factor (8)"),
    (
        "activation_factor",
        "--activation-factor",
        float,
        "F",
        "activations as a multiple of the latent (2.0)",
    ),
    ("overhead", "--overhead", float, "F", "overall overhead factor (1.5)"),
)
"""The estimation model's numeric fields: the option that sets each, its type, and its help."""
ESTIMATE_OPTIONS = {
    "bytes_per_element": "--dtype",
    **{field: option for field, option, *_ in ESTIMATE_ARGUMENTS},
}
"""The estimation model's fields, and the options that set them."""


def add_info_arguments(info: argparse.ArgumentParser) -> None:
    """every device torch sees, with its memory figures

    Every device torch sees (or the one --device names) with its memory figures, this
    process's host memory, and the torch and CUDA versions. The text and the JSON state
    the same facts; JSON says null where the text says n/a.
    """
    info.add_argument(
        "--device", default=None, metavar="DEVICE", help="only this device (every device)"
    )


def add_estimate_arguments(estimate: argparse.ArgumentParser) -> None:
    """memory one image needs, by the estimation model

    Bytes one image needs, by memscope's ImageMemoryModel (input, latent, activations
    and reference images, times an overhead factor).
    """
    estimate.add_argument(
        "sizes",
        nargs="+",
        type=parse_image_size,
        metavar="SIZE",
        help="image size as WIDTHxHEIGHT (1024x768) or one side (512)",
    )
    estimate.add_argument(
        "--dtype", choices=sorted(DTYPE_BYTES), help="element type of the tensors (float32)"
    )
    for field, option, kind, metavar, text in ESTIMATE_ARGUMENTS:
        estimate.add_argument(option, dest=field, type=kind, metavar=metavar, help=text)


def _manager(parser: argparse.ArgumentParser, device: str | None) -> MemoryManager:
    """A manager for ``device``, or the parser's one-line error naming ``--device``."""
    from memscope.manager import MemoryManager

    try:
        return MemoryManager(device)
    except MemscopeError as error:
        parser.error(as_typed(str(error), DEVICE_OPTIONS))


def run_overview(parser: argparse.ArgumentParser, device: str | None) -> int:
    import torch

    manager = _manager(parser, device)
    write(f"memscope {__version__}, torch {torch.__version__}")
    write(f"device: {manager.resolved_device}")
    write(f"memory: {manager.snapshot()}")
    write("estimated memory per image (default ImageMemoryModel):")
    for width, height in EXAMPLE_IMAGE_SIZES:
        estimate = manager.estimate_memory_required((width, height))
        size = f"{width}x{height}"
        write(f"  {size:>9}: {estimate:>13,} bytes ({format_bytes(estimate)})")
    write("more: memscope info, memscope estimate SIZE, memscope demo (see memscope --help)")
    return 0


def _host_line(host: dict[str, Any] | None) -> str:
    """``info``'s line on this process's host memory (``None``: it cannot be read)."""
    if host is None:
        return f"host memory (this process): n/a: {HOST_FIGURES_MISSING}"
    return (
        f"host memory (this process): resident {format_bytes(host['resident'])}, "
        f"peak {format_bytes(host['peak'])}, limit {format_bytes(host['limit'])} "
        f"({host['limit_source']})"
    )


def _read_host_memory() -> dict[str, Any] | None:
    """The process's resident memory, its peak and the host's limit, where they can be read.

    The figures come from psutil, or from ``/proc`` on Linux without it, as for a batch.
    """
    from memscope.host import HostMemoryMonitor

    try:
        monitor = HostMemoryMonitor()
        resident = monitor.resident_bytes()
    except (HostMemoryUnavailableError, OSError, ValueError):
        return None
    peak = _peak_resident_bytes()
    return dict(
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


def run_info(parser: argparse.ArgumentParser, device: str | None, as_json: bool) -> int:
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
            "host": host or dict.fromkeys(("resident", "peak", "limit", "limit_source")),
        }
        write(json.dumps(data, indent=2))
        if host is None:
            sys.stderr.write(f"memscope info: no host memory figures: {HOST_FIGURES_MISSING}\n")
        return 0
    write(f"memscope {__version__}, torch {torch.__version__}, CUDA {cuda_version or 'n/a'}")
    rows = [
        (
            figures["device"],
            NOT_REPORTED if figures["usage"] is None else f"{figures['usage']:.1%}",
            *(format_bytes(figures[name]) for name in INFO_DEVICE_FIGURES[1:]),
        )
        for figures in devices
    ]
    write_table(("device", *INFO_DEVICE_FIGURES), rows)
    if any(all(figures[name] is None for name in INFO_DEVICE_FIGURES) for figures in devices):
        write(f"{NOT_REPORTED}: {NO_DEVICE_FIGURES}")
    elif any(None in figures.values() for figures in devices):
        write(f"{NOT_REPORTED}: the device does not report this figure")
    write(_host_line(host))
    return 0


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


def run_estimate(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    from memscope.estimation import ImageMemoryModel

    options: dict[str, Any] = {field: getattr(arguments, field) for field, *_ in ESTIMATE_ARGUMENTS}
    if arguments.dtype is not None:
        options["bytes_per_element"] = DTYPE_BYTES[arguments.dtype]
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
        write(json.dumps(data, indent=2))
        return 0
    write("estimated memory per image, by the estimation model (ImageMemoryModel):")
    for line in describe_model(model):
        write(line)
    write_table(
        ("size", "pixels", "bytes", "memory"),
        [
            (format_size(size), f"{size[0] * size[1]:,}", f"{estimate:,}", format_bytes(estimate))
            for size, estimate in estimates
        ],
    )
    return 0
