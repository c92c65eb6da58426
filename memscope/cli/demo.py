"""The demo behind ``memscope demo``: a colorization batch job on synthetic line art.

It draws line-art images procedurally (strokes, circles and polygons; no downloads, the
same images for the same seed), colorizes them with a small randomly initialised
convolutional network on the detected device, inside :func:`managed_batch` with the
per-image function under :func:`auto_clear`, and writes the batch report (JSON), its memory
timeline (CSV) and, with the ``plot`` extra (Pillow and matplotlib), the colorized images
and a plot of the timeline.

Nothing here writes to the terminal: the command line prints what :meth:`Demo.run` returns.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memscope._validation import check_image_size, check_int
from memscope.batch import managed_batch
from memscope.decorator import auto_clear
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.reports._batch import BatchReport
from memscope.typing import DeviceLike

__all__: list[str] = []

logger = logging.getLogger("memscope")

DEFAULT_IMAGES = 24
DEFAULT_SIZE = (256, 256)
DEFAULT_EVERY = 5
OUTPUT_FOLDER_PREFIX = "memscope-demo-"
PLOT_SKIPPED = (
    "the timeline plot needs matplotlib, which is not installed: pip install 'memscope[plot]'"
)
IMAGES_SKIPPED = (
    "the colorized images need Pillow, which is not installed: pip install 'memscope[plot]'"
)
IMAGES_AND_PLOT_SKIPPED = (
    "the colorized images and the timeline plot need Pillow and matplotlib, which are not "
    "installed: pip install 'memscope[plot]'"
)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one demo run produced."""

    report: BatchReport
    folder: Path
    images: tuple[Path, ...]
    """Empty when Pillow is missing; ``images_skipped`` then says so."""
    report_json: Path
    timeline_csv: Path
    timeline_plot: Path | None
    """``None`` when matplotlib is missing; ``plot_skipped`` then says so."""
    plot_skipped: str | None = None
    images_skipped: str | None = None

    @property
    def skipped(self) -> str | None:
        """One note for whatever the missing optional packages left out, or ``None``."""
        if self.images_skipped is not None and self.plot_skipped is not None:
            return IMAGES_AND_PLOT_SKIPPED
        return self.images_skipped or self.plot_skipped


class _Grid:
    """Pixel-centre coordinates of an image, on the device, reused for every shape."""

    def __init__(self, width: int, height: int, device: torch.device) -> None:
        self.y, self.x = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=device) + 0.5,
            indexing="ij",
        )

    def distance_to_segment(self, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        direction = end - start
        length_squared = float(direction.dot(direction)) or 1.0
        along = (
            ((self.x - start[0]) * direction[0] + (self.y - start[1]) * direction[1])
            / length_squared
        ).clamp(0.0, 1.0)
        return torch.hypot(
            self.x - (start[0] + along * direction[0]), self.y - (start[1] + along * direction[1])
        )

    def distance_to_circle(self, centre: torch.Tensor, radius: float) -> torch.Tensor:
        return (torch.hypot(self.x - centre[0], self.y - centre[1]) - radius).abs()


def draw_line_art(
    width: int, height: int, *, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A ``(1, 1, height, width)`` line drawing: 1.0 is paper, 0.0 is ink.

    Random strokes, circles and polygons with antialiased edges, the same for the same
    ``seed`` on every device (the shapes are drawn from a CPU generator).
    """
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([width, height], dtype=torch.float32)
    short_side = min(width, height)

    def uniform(count: int = 1) -> torch.Tensor:
        return torch.rand(count, generator=generator)

    def point() -> torch.Tensor:
        return torch.rand(2, generator=generator) * scale

    grid = _Grid(width, height, torch.device(device))
    distances: list[tuple[torch.Tensor, float]] = []
    pen = max(short_side / 128, 1.0)

    for _ in range(int(2 + 3 * uniform())):
        points = [point() for _ in range(int(2 + 3 * uniform()))]
        for start, end in itertools.pairwise(points):
            distances.append((grid.distance_to_segment(start.to(device), end.to(device)), pen))
    for _ in range(int(2 + 3 * uniform())):
        radius = float(short_side * (0.05 + 0.2 * uniform()))
        distances.append((grid.distance_to_circle(point().to(device), radius), pen * 1.5))
    for _ in range(int(1 + 3 * uniform())):
        centre = point()
        sides = int(3 + 4 * uniform())
        radius = float(short_side * (0.08 + 0.2 * uniform()))
        turn = float(2 * math.pi * uniform())
        corners = [
            centre
            + radius
            * torch.tensor(
                [math.cos(turn + 2 * math.pi * k / sides), math.sin(turn + 2 * math.pi * k / sides)]
            )
            for k in range(sides + 1)
        ]
        for start, end in itertools.pairwise(corners):
            distances.append((grid.distance_to_segment(start.to(device), end.to(device)), pen))

    ink = torch.zeros((height, width), device=device)
    for distance, thickness in distances:
        # Coverage of a pen of this thickness, falling off over one pixel at the edge.
        ink = torch.maximum(ink, (thickness / 2 + 0.5 - distance).clamp(0.0, 1.0))
    return (1.0 - ink).reshape(1, 1, height, width)


class Colorizer(nn.Module):
    """A small convolutional network with random weights: line art in, RGB colour out.

    It has never been trained; it stands in for a colorization model so the demo exercises
    the device like the real job does. Pixel coordinates enter as extra channels, which
    gives the random colours smooth regions instead of noise.
    """

    def __init__(self, *, seed: int, hidden: int = 16) -> None:
        super().__init__()
        # Made on the meta device, the layers skip torch's default initialisation, which
        # would draw from (and change) the caller's global random state; `seed` picks them.
        self.layers = nn.Sequential(
            nn.Conv2d(3, hidden, 5, padding=2, padding_mode="replicate", device="meta"),
            nn.Tanh(),
            nn.Conv2d(
                hidden, hidden, 5, padding=4, dilation=2, padding_mode="replicate", device="meta"
            ),
            nn.Tanh(),
            nn.Conv2d(hidden, 3, 1, device="meta"),
            nn.Sigmoid(),
        ).to_empty(device="cpu")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.layers:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                    layer.weight.copy_(
                        torch.randn(layer.weight.shape, generator=generator) * 2 / math.sqrt(fan_in)
                    )
                    assert layer.bias is not None
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.5)

    def forward(self, line_art: torch.Tensor) -> torch.Tensor:
        _, _, height, width = line_art.shape
        y, x = torch.meshgrid(
            torch.linspace(-1, 1, height, device=line_art.device),
            torch.linspace(-1, 1, width, device=line_art.device),
            indexing="ij",
        )
        coordinates = torch.stack((x, y)).expand(line_art.shape[0], 2, height, width)
        colours: torch.Tensor = self.layers(torch.cat((line_art, coordinates), dim=1))
        # Ink stays black; the paper takes the colour.
        return colours * line_art


def _pillow_installed() -> bool:
    # Imported, not just looked up: a package that is present but cannot load is missing too.
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def _save_png(path: Path, pixels: torch.Tensor) -> Path:
    """Write ``pixels``, a ``(height, width, 3)`` uint8 tensor, as an RGB PNG with Pillow."""
    from PIL import Image

    height, width, _channels = pixels.shape
    contiguous = pixels.detach().to("cpu").contiguous()
    # torch without numpy offers no buffer interface, and Pillow wants bytes: they are read
    # straight from the tensor's memory, which `contiguous` keeps alive meanwhile.
    raw = ctypes.string_at(contiguous.data_ptr(), contiguous.numel())
    Image.frombytes("RGB", (width, height), raw).save(path, format="PNG")
    return path


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{name} must be a bool, got {value!r}")
    return value


def _check_output_folder(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"out must be a path or None, got {out!r}")
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidArgumentError(
            f"out {str(folder)!r} already exists and is not an empty folder; "
            "the demo never overwrites files"
        )
    return folder


def _new_output_folder(parent: Path) -> Path:
    stem = OUTPUT_FOLDER_PREFIX + time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        folder = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free output folder name {stem}-N in {str(parent)!r}")


class Demo:
    """One configured demo run; every argument is checked here, before anything runs.

    Args:
        images: how many line-art images to make and colorize.
        size: ``(width, height)`` of each image.
        device: where to colorize, as for :class:`MemoryManager`; ``None`` auto-detects.
        memory_threshold: the usage at or above which a cleanup collects garbage.
        every: clean up after every this many images.
        out: the output folder: a new or empty one. ``None`` makes a new
            ``memscope-demo-YYYYmmdd-HHMMSS`` folder in the current directory.
        seed: picks the line art and the network's weights.
        progress: show a tqdm progress bar (``pip install 'memscope[progress]'``).
    """

    def __init__(
        self,
        *,
        images: int = DEFAULT_IMAGES,
        size: tuple[int, int] = DEFAULT_SIZE,
        device: DeviceLike = None,
        memory_threshold: float = DEFAULT_MEMORY_THRESHOLD,
        every: int = DEFAULT_EVERY,
        out: str | os.PathLike[str] | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.images = check_int(images, "images", minimum=1)
        self.width, self.height = check_image_size(size, "size")
        self.every = check_int(every, "every", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.progress = _check_bool(progress, "progress")
        self.out = _check_output_folder(out)
        # Made now, so an absent device or a bad threshold fails before any work.
        self.manager = MemoryManager(device, memory_threshold)

    @property
    def device(self) -> torch.device:
        """The device the demo colorizes on."""
        return self.manager.resolved_device

    def run(self) -> DemoResult:
        """Make the images, colorize them in a managed batch, and write the results."""
        folder = self._make_output_folder()
        images_skipped = None if _pillow_installed() else IMAGES_SKIPPED
        image_folder = folder / "images"
        if images_skipped is None:
            image_folder.mkdir()
        else:
            logger.info("demo: %s", IMAGES_SKIPPED)
        device = self.device
        network = Colorizer(seed=self.seed).to(device).eval()
        digits = len(str(self.images - 1))
        written: list[Path] = []

        @auto_clear
        def colorize(index: int) -> None:
            with torch.inference_mode():
                line_art = draw_line_art(
                    self.width, self.height, seed=self.seed * 1_000_003 + index, device=device
                )
                colours = network(line_art)
                pixels = (colours[0].permute(1, 2, 0) * 255).round().to(torch.uint8).cpu()
            if images_skipped is None:
                path = image_folder / f"colorized-{index:0{digits}d}.png"
                written.append(_save_png(path, pixels))

        # One cleanup cadence, the batch's: it counts the images, cleans up after every
        # `every` of them, draws the progress bar and records the timeline. The decorated
        # function reports its calls to the batch and runs no cleanup of its own.
        with managed_batch(
            manager=self.manager,
            every=self.every,
            progress=self.progress,
            timeline=True,
        ) as batch:
            for index in batch.track(range(self.images)):
                colorize(index)
        report = batch.report

        report_json = report.to_json(folder / "report.json")
        timeline_csv = report.to_csv(folder / "timeline.csv")
        timeline_plot: Path | None = None
        plot_skipped: str | None = None
        try:
            timeline_plot = report.plot(folder / "timeline.png")
        except ImportError:
            plot_skipped = PLOT_SKIPPED
            logger.info("demo: %s", PLOT_SKIPPED)
        return DemoResult(
            report=report,
            folder=folder,
            images=tuple(written),
            report_json=report_json,
            timeline_csv=timeline_csv,
            timeline_plot=timeline_plot,
            plot_skipped=plot_skipped,
            images_skipped=images_skipped,
        )

    def _make_output_folder(self) -> Path:
        if self.out is None:
            return _new_output_folder(Path.cwd())
        # Checked again: the folder may have filled up since the demo was configured.
        _check_output_folder(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out
