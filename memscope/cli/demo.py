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

import gc
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from memscope.batch import managed_batch
from memscope.cli._demo_art import Colorizer, ImageLeftovers, draw_line_art, leftover_bytes
from memscope.cli._demo_files import (
    check_output_folder,
    demo_threads,
    fix_mmap_threshold,
    new_output_folder,
    pillow_installed,
    remove_output,
    save_png,
    torch_threads,
    writing_problem,
)
from memscope.cli._demo_plot import PLOT_SKIPPED, draw_comparison, footprint_timeline
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
from memscope.reports import BatchReport
from memscope.typing import DeviceLike
from memscope.units import format_bytes

# The job, its output and its plot live in modules of their own; the names the demo is used
# by (the calibration, the tests, docs/scaling.md) are here.
__all__ = [
    "PLOT_SKIPPED",
    "Colorizer",
    "Demo",
    "DemoResult",
    "DemoRun",
    "ImageLeftovers",
    "check_output_folder",
    "demo_threads",
    "draw_comparison",
    "draw_line_art",
    "fix_mmap_threshold",
    "footprint_timeline",
    "leftover_bytes",
]

logger = logging.getLogger("memscope")

ALLOWANCE_CLEANUPS = 2
"""The budget lets the leftovers of this many cleanup intervals pile up before collecting."""
LEFTOVER_SHARE_LIMIT = 0.5
"""The run without cleanup may leave at most this share of the free memory behind."""
WITHOUT_CLEANUP = "without-cleanup"
WITH_CLEANUP = "with-cleanup"
PLOT_NAME = "timeline.png"
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
        self.images = _whole_number(images, "images", minimum=1)
        self.width, self.height = _image_size(size)
        self.every = _whole_number(every, "every", minimum=1)
        self.seed = _whole_number(seed, "seed", minimum=0)
        if not isinstance(progress, bool):
            raise InvalidArgumentTypeError(f"progress must be a bool, got {progress!r}")
        self.progress = progress
        # Made now, so an absent device or a bad threshold fails before any work.
        self.manager = MemoryManager(device, memory_threshold)
        self.memory_threshold = self.manager.memory_threshold
        self._host_monitor = self._watch_host()
        self._check_leftovers_fit()
        # Last: a folder is only tried once everything else is known to be right.
        self.out = None if out is None else check_output_folder(out, "out")
        if self.out is None and (problem := writing_problem(Path.cwd())) is not None:
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
            remove_output(folder, remove_folder=made)
            self.removed_output = folder
            raise

    def _run_in(self, folder: Path) -> DemoResult:
        if self._host_monitor is not None and not fix_mmap_threshold():
            logger.info("demo: cannot fix the C allocator's mmap threshold; figures may vary")
        images_skipped = None if pillow_installed() else IMAGES_SKIPPED
        if images_skipped is not None:
            logger.info("demo: %s", IMAGES_SKIPPED)
        with torch_threads(demo_threads()), torch.inference_mode():
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
                written.append(save_png(path, pixels))

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
            return new_output_folder(Path.cwd())
        # Checked again: the folder may have filled up since the demo was configured.
        check_output_folder(self.out, "out")
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out


def _whole_number(value: object, name: str, *, minimum: int) -> int:
    """A count or a seed of the demo's, refused with memscope's errors if it is none."""
    if type(value) is not int:  # a bool is no count
        raise InvalidArgumentTypeError(
            f"{name} must be an int, got {value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _image_size(size: object) -> tuple[int, int]:
    """The demo's ``(width, height)``, each side a whole number of pixels."""
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise InvalidArgumentTypeError(f"size must be a (width, height) pair, got {size!r}")
    width, height = size
    return _whole_number(width, "size width", minimum=1), _whole_number(
        height, "size height", minimum=1
    )
