"""The demo behind ``memscope demo``: a leaky colorization job, without and with memscope.

It draws line-art images procedurally (strokes, circles and polygons; no downloads, the
same images for the same seed) and colorizes them with a small randomly initialised
convolutional network on the detected device. The loop is leaky the way real pipelines
are: each image leaves its features behind in a reference cycle (an object that refers to
itself through a callback), which reference counting never frees. Only a garbage collection
does, and Python's automatic collector runs after a count of new objects, not bytes: a loop
that makes few objects per image piles up hundreds of MiB before it happens to run.

The same loop runs twice. First without memscope's cleanup, in a count-only
``managed_batch(every=None, timeline=True)`` that records the memory but never cleans up;
then with it, in ``managed_batch(every=N, timeline=True, budget=...)``, whose cleanup step
collects garbage once the footprint reaches the threshold of its budget. Each run writes its
report (JSON), its memory timeline (CSV) and, with the ``plot`` extra (Pillow and
matplotlib), its colorized images; one plot shows the two timelines side by side: the
process's host memory on the CPU, the device's reserved memory on a GPU.

Nothing here writes to the terminal: the command line prints what :meth:`Demo.run` returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from memscope._validation import check_fraction, check_image_size, check_int
from memscope.batch import managed_batch
from memscope.cli._options import DEFAULT_EVERY, DEFAULT_IMAGES, DEFAULT_SIZE
from memscope.decorator import auto_clear
from memscope.exceptions import (
    HostMemoryUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
)
from memscope.host import HostMemoryMonitor
from memscope.manager import DEFAULT_MEMORY_THRESHOLD, MemoryManager
from memscope.reports._batch import BatchReport
from memscope.typing import DeviceLike
from memscope.units import format_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__: list[str] = []

logger = logging.getLogger("memscope")

HIDDEN_CHANNELS = 16
"""Channels of the colorizer's two hidden layers; an image leaves both layers' features."""
ALLOWANCE_CLEANUPS = 2
"""The budget lets the leftovers of this many cleanup intervals pile up before collecting."""
LEFTOVER_SHARE_LIMIT = 0.5
"""The run without cleanup may leave at most this share of the free memory behind."""
MAX_TORCH_THREADS = 2
"""The tiny network gains little from more threads, and loses much when they contend."""
OUTPUT_FOLDER_PREFIX = "memscope-demo-"
WITHOUT_CLEANUP = "without-cleanup"
WITH_CLEANUP = "with-cleanup"
PLOT_NAME = "timeline.png"
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
HOST_FIGURES_MISSING = (
    "the demo shows this process's host memory on the CPU, which cannot be read here: "
    "pip install 'memscope[host]'"
)

# Pixels per chunk of the distance computation: bounds its memory at any image size.
_DRAWING_CHUNK_ELEMENTS = 1 << 22


# Drawing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shapes:
    """One drawing's shapes, in pixels: segments as ``(x0, y0, x1, y1, pen)`` rows and
    circles as ``(x, y, radius, pen)`` rows."""

    segments: torch.Tensor
    circles: torch.Tensor


def _random_shapes(width: int, height: int, generator: torch.Generator) -> _Shapes:
    """Strokes, circles and polygons, drawn from ``generator`` (a CPU generator)."""
    short_side = min(width, height)
    pen = max(short_side / 128, 1.0)

    def uniform() -> float:
        return float(torch.rand((), generator=generator))

    def point() -> tuple[float, float]:
        x, y = (torch.rand(2, generator=generator) * torch.tensor([width, height])).tolist()
        return x, y

    segments: list[tuple[float, float, float, float, float]] = []
    circles: list[tuple[float, float, float, float]] = []
    for _ in range(int(2 + 3 * uniform())):
        stroke = [point() for _ in range(int(2 + 3 * uniform()))]
        segments += [(*start, *end, pen) for start, end in itertools.pairwise(stroke)]
    for _ in range(int(2 + 3 * uniform())):
        radius = short_side * (0.05 + 0.2 * uniform())
        circles.append((*point(), radius, pen * 1.5))
    for _ in range(int(1 + 3 * uniform())):
        centre_x, centre_y = point()
        sides = int(3 + 4 * uniform())
        radius = short_side * (0.08 + 0.2 * uniform())
        turn = 2 * math.pi * uniform()
        corners = [
            (
                centre_x + radius * math.cos(turn + 2 * math.pi * k / sides),
                centre_y + radius * math.sin(turn + 2 * math.pi * k / sides),
            )
            for k in range(sides + 1)
        ]
        segments += [(*start, *end, pen) for start, end in itertools.pairwise(corners)]
    return _Shapes(
        segments=torch.tensor(segments, dtype=torch.float32).reshape(-1, 5),
        circles=torch.tensor(circles, dtype=torch.float32).reshape(-1, 4),
    )


def _segment_ink(x: torch.Tensor, y: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """The ink of every segment at every pixel, ``(segments, height, width)``."""
    x0, y0, x1, y1, pen = (column.reshape(-1, 1, 1) for column in segments.unbind(dim=1))
    dx, dy = x1 - x0, y1 - y0
    length_squared = (dx * dx + dy * dy).clamp_min(1e-12)
    # From the segment's start to each pixel (small: one row, one column per segment), how
    # far along the segment the nearest point lies, and from that point to the pixel.
    from_start_x, from_start_y = x - x0, y - y0
    along = (from_start_x * dx + from_start_y * dy).div_(length_squared).clamp_(0.0, 1.0)
    distance = torch.hypot(from_start_x - along * dx, from_start_y - along.mul_(dy))
    # Coverage of a pen of this thickness, falling off over one pixel at the edge.
    return torch.sub(pen / 2 + 0.5, distance).clamp_(0.0, 1.0)


def _circle_ink(x: torch.Tensor, y: torch.Tensor, circles: torch.Tensor) -> torch.Tensor:
    """The ink of every circle at every pixel, ``(circles, height, width)``."""
    centre_x, centre_y, radius, pen = (column.reshape(-1, 1, 1) for column in circles.unbind(dim=1))
    distance = (torch.hypot(x - centre_x, y - centre_y) - radius).abs()
    return (pen / 2 + 0.5 - distance).clamp(0.0, 1.0)


def draw_line_art(
    width: int, height: int, *, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A ``(1, 1, height, width)`` line drawing: 1.0 is paper, 0.0 is ink.

    Random strokes, circles and polygons with antialiased edges, the same for the same
    ``seed`` on every device (the shapes are drawn from a CPU generator). Every shape is
    rasterised at once, in chunks of shapes that bound the memory a large image takes.
    """
    shapes = _random_shapes(width, height, torch.Generator().manual_seed(seed))
    x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5).reshape(1, 1, width)
    y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5).reshape(1, height, 1)
    chunk = max(1, _DRAWING_CHUNK_ELEMENTS // (width * height))
    ink = torch.zeros((height, width), device=device)
    for rows, ink_of in ((shapes.segments, _segment_ink), (shapes.circles, _circle_ink)):
        for start in range(0, rows.shape[0], chunk):
            part = rows[start : start + chunk].to(device)
            ink = torch.maximum(ink, ink_of(x, y, part).amax(dim=0))
    return (1.0 - ink).reshape(1, 1, height, width)


# The network and the leak -----------------------------------------------------------------


class Colorizer(nn.Module):
    """A small convolutional network with random weights: line art in, RGB colour out.

    It has never been trained; it stands in for a colorization model so the demo exercises
    the device like the real job does. Pixel coordinates enter as extra channels, which
    gives the random colours smooth regions instead of noise.
    """

    def __init__(self, *, seed: int, hidden: int = HIDDEN_CHANNELS) -> None:
        super().__init__()
        # Made on the meta device, the layers skip torch's default initialisation, which
        # would draw from (and change) the caller's global random state; `seed` picks them.
        self.first = nn.Sequential(
            nn.Conv2d(3, hidden, 5, padding=2, padding_mode="replicate", device="meta"),
            nn.Tanh(),
        ).to_empty(device="cpu")
        self.second = nn.Sequential(
            nn.Conv2d(
                hidden, hidden, 5, padding=4, dilation=2, padding_mode="replicate", device="meta"
            ),
            nn.Tanh(),
        ).to_empty(device="cpu")
        self.output = nn.Sequential(nn.Conv2d(hidden, 3, 1, device="meta"), nn.Sigmoid()).to_empty(
            device="cpu"
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.modules():
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                    layer.weight.copy_(
                        torch.randn(layer.weight.shape, generator=generator) * 2 / math.sqrt(fan_in)
                    )
                    assert layer.bias is not None
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.5)

    def forward(self, line_art: torch.Tensor) -> torch.Tensor:
        colours, _first, _second = self._layers(line_art)
        return colours

    def colorize(self, line_art: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The colours, and the features of both hidden layers stacked along the channels."""
        colours, first, second = self._layers(line_art)
        return colours, torch.cat((first, second), dim=1)

    def _layers(self, line_art: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, _, height, width = line_art.shape
        y, x = torch.meshgrid(
            torch.linspace(-1, 1, height, device=line_art.device),
            torch.linspace(-1, 1, width, device=line_art.device),
            indexing="ij",
        )
        coordinates = torch.stack((x, y)).expand(line_art.shape[0], 2, height, width)
        first: torch.Tensor = self.first(torch.cat((line_art, coordinates), dim=1))
        second: torch.Tensor = self.second(first)
        colours: torch.Tensor = self.output(second)
        # Ink stays black; the paper takes the colour.
        return colours * line_art, first, second


class ImageLeftovers:
    """What the leaky loop leaves behind for each image, as real pipelines often do.

    It keeps the image's features for a callback that refers back to it (a bound method
    stored on the object), so it sits in a reference cycle: when the loop drops it, reference
    counting cannot free it, and only a garbage collection can. Python's automatic collector
    runs after a count of new objects, not bytes, so a loop that makes few objects per image
    lets these pile up until it happens to run.
    """

    __slots__ = ("features", "on_done")

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features
        self.on_done = self.release

    def release(self) -> None:
        """What the pipeline meant to call when the image was done, and never did."""
        self.features = torch.empty(0)


def leftover_bytes(width: int, height: int) -> int:
    """Bytes one image of ``width`` x ``height`` leaves behind: two float32 feature maps."""
    return 2 * HIDDEN_CHANNELS * width * height * 4


# Writing ----------------------------------------------------------------------------------


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
    # The fastest compression: these are throwaway pictures, and encoding at the default
    # level would take longer than colorizing them.
    Image.frombytes("RGB", (width, height), raw).save(path, format="PNG", compress_level=1)
    return path


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_output_folder(out: object, name: str = "out") -> Path:
    """``out`` as a folder the demo can write into: new, or existing and empty.

    Raises :class:`InvalidArgumentError`, its message starting with ``name``, when the
    folder holds files, is a file, or cannot be created or written (no such parent, a
    read-only or virtual file system). A folder made to find out is removed again.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"{name} must be a path, got {out!r}")
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidArgumentError(
            f"{name} {str(folder)!r} already exists and is not an empty folder; "
            "the demo never overwrites files"
        )
    problem = _writing_problem(folder)
    if problem is not None:
        raise InvalidArgumentError(f"{name} {str(folder)!r} {problem}")
    return folder


def _writing_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder``, made where missing; ``None`` if they can.

    Trying is the only test that holds everywhere: permission bits say nothing to root, and
    virtual file systems such as ``/proc`` refuse what their bits allow. Whatever the try
    makes is removed again.
    """
    made: list[Path] = []
    try:
        missing = [path for path in (folder, *folder.parents) if not path.exists()]
        for path in reversed(missing):
            try:
                path.mkdir()
            except OSError as error:
                return f"cannot be created: {error.strerror or error}"
            made.append(path)
        probe = folder / ".memscope-demo-probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            return f"cannot be written: {error.strerror or error}"
        return None
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter for the size from which ``malloc`` maps memory directly."""
DEMO_MMAP_THRESHOLD = 1 << 20
"""Blocks of this size and larger (every feature map of the demo) are mapped on their own."""


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at :data:`DEMO_MMAP_THRESHOLD`; whether it was set.

    The demo reads the leak as resident memory. glibc raises its mmap threshold each time a
    mapped block is freed, so after a while the feature maps come from the heap instead,
    where a freed block between two leaked ones stays resident: the same run then read 8 or
    12 MiB per item and sometimes named a leak in the run with cleanup. A fixed threshold
    keeps every feature map in a mapping of its own, returned to the system when freed, so
    the figures follow the tensors and repeat from run to run. It applies to the whole
    process (glibc has no per-thread setting) and is a no-op elsewhere than glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, DEMO_MMAP_THRESHOLD))


def _remove_output(folder: Path, *, remove_folder: bool) -> None:
    """Remove what an interrupted run wrote into ``folder`` (a new or empty folder before)."""
    if remove_folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


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


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads, and give the caller's setting back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_threads() -> int:
    """Torch threads for the demo: half the cores this process may use, one to two.

    The network is tiny: each operation is over before a second thread pays off, and threads
    that wait for each other on a busy machine cost far more than they gain (on two busy
    cores, two threads ran the demo three times slower than one).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call.
        cores = os.cpu_count() or 1
    return max(1, min(MAX_TORCH_THREADS, cores // 2))


# The runs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoRun:
    """What one of the two runs wrote."""

    name: str
    """``without-cleanup`` or ``with-cleanup``: the run's folder's name."""
    report: BatchReport
    folder: Path
    images: tuple[Path, ...]
    """Empty when Pillow is missing."""
    report_json: Path
    timeline_csv: Path


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one demo run produced: the two runs, and the plot comparing them."""

    folder: Path
    without_cleanup: DemoRun
    with_cleanup: DemoRun
    budget: int
    """The budget of the run with cleanup, in bytes."""
    leftover_bytes: int
    """Bytes each image leaves behind in a reference cycle."""
    timeline_plot: Path | None
    """``None`` when matplotlib is missing; ``plot_skipped`` then says so."""
    plot_skipped: str | None = None
    images_skipped: str | None = None

    @property
    def runs(self) -> tuple[DemoRun, DemoRun]:
        """The run without cleanup, then the run with it."""
        return self.without_cleanup, self.with_cleanup

    @property
    def skipped(self) -> str | None:
        """One note for whatever the missing optional packages left out, or ``None``."""
        if self.images_skipped is not None and self.plot_skipped is not None:
            return IMAGES_AND_PLOT_SKIPPED
        return self.images_skipped or self.plot_skipped


class Demo:
    """One configured demo run; every argument is checked here, before anything runs.

    Args:
        images: how many line-art images to make and colorize in each run.
        size: ``(width, height)`` of each image.
        device: where to colorize, as for :class:`MemoryManager`; ``None`` auto-detects.
        memory_threshold: the share of the budget at or above which the run with cleanup
            collects garbage at a cleanup step.
        every: the run with cleanup runs a cleanup step after every this many images.
        out: the output folder: a new or empty one. ``None`` makes a new
            ``memscope-demo-YYYYmmdd-HHMMSS`` folder in the current directory when the demo
            runs.
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
        self.memory_threshold = check_fraction(memory_threshold, "memory_threshold")
        # Made now, so an absent device fails before any work.
        self.manager = MemoryManager(device, self.memory_threshold)
        self._host_monitor = self._watch_host()
        self._check_leftovers_fit()
        # Last: a folder is only tried once everything else is known to be right.
        self.out = None if out is None else check_output_folder(out, "out")
        if self.out is None and (problem := _writing_problem(Path.cwd())) is not None:
            raise InvalidArgumentError(
                f"out is not set, and the current folder {str(Path.cwd())!r}, where the demo "
                f"then writes, {problem}"
            )

    @property
    def device(self) -> torch.device:
        """The device the demo colorizes on."""
        return self.manager.resolved_device

    @property
    def leftover_bytes(self) -> int:
        """Bytes each image leaves behind in the leaky loop."""
        return leftover_bytes(self.width, self.height)

    def _watch_host(self) -> HostMemoryMonitor | None:
        """On the CPU, the monitor of this process's memory, which the demo plots.

        Elsewhere the demo plots torch's reserved memory, which the device must report.
        """
        if self.device.type != "cpu":
            if self.manager.snapshot().reserved is None:
                raise MemoryFiguresUnavailableError(
                    f"{self.device} reports no reserved memory, which the demo plots"
                )
            return None
        try:
            return HostMemoryMonitor()
        except (HostMemoryUnavailableError, OSError, ValueError):
            raise HostMemoryUnavailableError(HOST_FIGURES_MISSING) from None

    def _footprint(self) -> int:
        """What a budget counts: resident memory on the CPU, torch's reserved bytes elsewhere."""
        if self._host_monitor is not None:
            return self._host_monitor.resident_bytes()
        return self.manager.snapshot().reserved or 0

    def _capacity(self) -> int | None:
        """The most a budget may be: the host's limit on the CPU, the device's total elsewhere."""
        if self._host_monitor is not None:
            return self._host_monitor.limit.size
        return self.manager.snapshot().total

    def _check_leftovers_fit(self) -> None:
        """The run without cleanup must leave the machine room: half its free memory at most."""
        leftovers = self.images * self.leftover_bytes
        free: int | None
        if self._host_monitor is not None:
            free = self._host_monitor.limit.size - self._host_monitor.resident_bytes()
        else:
            free = self.manager.snapshot().free
        if free is not None and leftovers > LEFTOVER_SHARE_LIMIT * free:
            raise InvalidArgumentError(
                f"{self.images} images of {self.width}x{self.height} would leave "
                f"{format_bytes(leftovers)} behind in the run without cleanup, more than half "
                f"of the {format_bytes(free)} free on {self.device}; use fewer or smaller images"
            )

    def budget_for(self, footprint: int) -> int:
        """The budget of the run with cleanup, starting from ``footprint`` bytes.

        Its threshold lies :data:`ALLOWANCE_CLEANUPS` cleanup intervals' leftovers above the
        footprint, so the leftovers pile up for a while, then a cleanup collects them; it is
        never more than the device (or, on the CPU, the host) can hold.
        """
        allowance = ALLOWANCE_CLEANUPS * self.every * self.leftover_bytes
        budget = math.ceil((footprint + allowance) / self.memory_threshold)
        capacity = self._capacity()
        return budget if capacity is None else min(budget, capacity)

    def run(self) -> DemoResult:
        """Colorize the images without and with memscope's cleanup, and write the results.

        Interrupted (Ctrl-C), it removes what it wrote, so that the same command can run
        again (a folder with files in it is refused), and re-raises; ``removed_output`` then
        names the folder it emptied or removed.
        """
        self.removed_output = None
        made = self.out is None or not self.out.exists()
        folder = self._make_output_folder()
        try:
            return self._run_in(folder)
        except KeyboardInterrupt:
            _remove_output(folder, remove_folder=made)
            self.removed_output = folder
            raise

    def _run_in(self, folder: Path) -> DemoResult:
        if self._host_monitor is not None and not fix_mmap_threshold():
            logger.info("demo: cannot fix the C allocator's mmap threshold; figures may vary")
        images_skipped = None if _pillow_installed() else IMAGES_SKIPPED
        if images_skipped is not None:
            logger.info("demo: %s", IMAGES_SKIPPED)
        with _torch_threads(demo_threads()), torch.inference_mode():
            network = Colorizer(seed=self.seed).to(self.device).eval()
            # The line art is drawn once, as a job reads its images from disk: both runs
            # colorize the same pictures, and neither pays for drawing them.
            line_arts = [
                draw_line_art(
                    self.width, self.height, seed=self.seed * 1_000_003 + index, device=self.device
                )
                for index in range(self.images)
            ]
            # One image first, outside both runs, so that both find the kernels warm. Its
            # features are not stacked: no block of a leftover's size is freed before the
            # first run (an allocator may keep such blocks for reuse, and hide the leak).
            network(line_arts[0])
            save_images = images_skipped is None
            # Each run starts from a clean slate: no garbage, and the automatic collector's
            # counts at zero, so that it runs at the same point of both loops.
            gc.collect()
            without_cleanup = self._run(
                network, line_arts, folder / WITHOUT_CLEANUP, budget=None, save_images=save_images
            )
            budget = self.budget_for(self._footprint())
            with_cleanup = self._run(
                network, line_arts, folder / WITH_CLEANUP, budget=budget, save_images=save_images
            )
        timeline_plot: Path | None = None
        plot_skipped: str | None = None
        try:
            timeline_plot = self._plot(folder / PLOT_NAME, without_cleanup, with_cleanup, budget)
        except ImportError:
            plot_skipped = PLOT_SKIPPED
            logger.info("demo: %s", PLOT_SKIPPED)
        return DemoResult(
            folder=folder,
            without_cleanup=without_cleanup,
            with_cleanup=with_cleanup,
            budget=budget,
            leftover_bytes=self.leftover_bytes,
            timeline_plot=timeline_plot,
            plot_skipped=plot_skipped,
            images_skipped=images_skipped,
        )

    removed_output: Path | None = None
    """After an interrupted :meth:`run`, the folder whose partial output it removed."""

    def _run(
        self,
        network: Colorizer,
        line_arts: list[torch.Tensor],
        folder: Path,
        *,
        budget: int | None,
        save_images: bool,
    ) -> DemoRun:
        """The leaky loop in a batch: count-only without a budget, cleaning up with one."""
        folder.mkdir()
        image_folder = folder / "images"
        if save_images:
            image_folder.mkdir()
        digits = len(str(self.images - 1))
        written: list[Path] = []

        @auto_clear
        def colorize(index: int) -> None:
            colours, features = network.colorize(line_arts[index])
            # The leak: the features stay behind in a reference cycle.
            ImageLeftovers(features)
            pixels = (colours[0].permute(1, 2, 0) * 255).round().to(torch.uint8).cpu()
            if save_images:
                path = image_folder / f"colorized-{index:0{digits}d}.png"
                written.append(_save_png(path, pixels))

        # One cleanup cadence, the batch's: it counts the images, cleans up after every
        # `every` of them (never, in count-only mode), draws the progress bar and records the
        # timeline. The decorated function reports its calls to the batch.
        with managed_batch(
            self.device,
            memory_threshold=self.memory_threshold,
            every=None if budget is None else self.every,
            budget=budget,
            progress=self.progress,
            timeline=True,
        ) as batch:
            for index in batch.track(range(self.images)):
                colorize(index)
        # What the run left behind goes before the next run starts (see run()).
        gc.collect()
        report = batch.report
        return DemoRun(
            name=folder.name,
            report=report,
            folder=folder,
            images=tuple(written),
            report_json=report.to_json(folder / "report.json"),
            timeline_csv=report.to_csv(folder / "timeline.csv"),
        )

    def _plot(self, path: Path, without: DemoRun, with_: DemoRun, budget: int) -> Path:
        draw_comparison(
            without.report,
            with_.report,
            budget=budget,
            leftover_bytes=self.leftover_bytes,
            every=self.every,
        ).savefig(path)
        return path

    def _make_output_folder(self) -> Path:
        if self.out is None:
            return _new_output_folder(Path.cwd())
        # Checked again: the folder may have filled up since the demo was configured.
        check_output_folder(self.out, "out")
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out


# The plot ---------------------------------------------------------------------------------

_MEBIBYTE = 1024**2


def footprint_timeline(report: BatchReport) -> list[tuple[int, int]]:
    """``(item, bytes)`` after each item: resident memory on the CPU, reserved elsewhere."""
    on_host = report.device.partition(":")[0] == "cpu"
    points = []
    for entry in report.timeline:
        value = entry.host_resident if on_host else entry.reserved
        if value is not None:
            points.append((entry.item, value))
    return points


def draw_comparison(
    without_cleanup: BatchReport,
    with_cleanup: BatchReport,
    *,
    budget: int,
    leftover_bytes: int,
    every: int,
) -> Figure:
    """The two runs' memory after each image, side by side, as a matplotlib ``Figure``."""
    try:
        import matplotlib
        from matplotlib.figure import Figure as MatplotlibFigure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(PLOT_SKIPPED) from None
    del matplotlib

    on_host = without_cleanup.device.partition(":")[0] == "cpu"
    figure = MatplotlibFigure(figsize=(10, 4.2), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    figure.suptitle(
        f"memscope demo on {without_cleanup.device}: each image leaves "
        f"{format_bytes(leftover_bytes)} behind in a reference cycle"
    )
    threshold = with_cleanup.memory_threshold or DEFAULT_MEMORY_THRESHOLD
    panels: tuple[tuple[Axes, BatchReport, str], ...] = (
        (left, without_cleanup, "without cleanup: managed_batch(every=None)"),
        (
            right,
            with_cleanup,
            f"with cleanup: managed_batch(every={every}, budget={format_bytes(budget)})",
        ),
    )
    for axes, report, title in panels:
        points = footprint_timeline(report)
        axes.plot(
            [item for item, _ in points],
            [value / _MEBIBYTE for _, value in points],
            marker=".",
            color="tab:purple" if on_host else "tab:green",
            label="resident (host memory)" if on_host else "reserved (device memory)",
        )
        value_at = dict(points)
        collected = [
            (entry.item, value_at[entry.item] / _MEBIBYTE)
            for entry in report.timeline
            if entry.gc_ran and entry.item in value_at
        ]
        if collected:
            items, values = zip(*collected, strict=True)
            axes.scatter(
                items, values, marker="v", s=70, color="tab:orange", zorder=3, label="GC ran"
            )
        axes.set_title(title, fontsize="medium")
        axes.set_xlabel("image")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for step, item in enumerate(range(every, with_cleanup.items + 1, every)):
        right.axvline(
            item,
            color="tab:gray",
            linestyle=":",
            alpha=0.7,
            label=f"cleanup step (every {every})" if step == 0 else None,
        )
    right.axhline(
        threshold * budget / _MEBIBYTE,
        color="tab:red",
        linestyle="--",
        label=f"GC threshold ({threshold:.0%} of the budget)",
    )
    left.set_ylabel(f"{'host' if on_host else 'device'} memory (MiB)")
    for axes in (left, right):
        axes.legend(loc="upper left")
    return figure
