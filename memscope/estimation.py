"""How much memory images need: a fixed model, a model fitted to measurements, and the
measuring.

- :class:`ImageMemoryModel` is the fixed formula of the Cobra ``MemoryManager`` API, and the
  default of :meth:`MemoryManager.estimate_memory_required`.
- :func:`calibrate` runs your own function at a few small image sizes and batch sizes on the
  target device, measures the peak memory of each run, and fits
  ``memory = fixed + per_pixel * pixels * batch``: a :class:`CalibratedImageMemoryModel`,
  with the fit's quality.
- :func:`available_bytes` is what a :class:`~memscope.MemorySnapshot` says a batch may still
  use, and :data:`DEFAULT_HEADROOM` the share of it that sizing leaves unused.

Where peaks come from: on CUDA and other accelerators, the allocator's peak statistics
(``MemoryManager.reset_peak_memory_stats`` and ``snapshot().peak_allocated``, exact to the
byte). On the CPU under Linux, the process's peak resident memory: writing ``5`` to
``/proc/self/clear_refs`` resets the high-water mark ``VmHWM`` of ``/proc/self/status`` to the
current resident memory, which is read afterwards (kB resolution; glibc's free heap is handed
back first with ``malloc_trim``, so memory a call reuses shows as growth). The resident
memory is the whole process's, so other threads' allocations count too. MPS keeps no peak
statistics, and other systems have no resettable high-water mark: there nothing can be
measured, and :func:`calibrate` says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from memscope._validation import check_image_size, check_int, check_positive_number
from memscope.exceptions import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
)
from memscope.snapshot import MemorySnapshot
from memscope.units import format_bytes

if TYPE_CHECKING:
    import torch


class MemoryManager(Protocol):
    """What measuring and calibrating need of a :class:`memscope.MemoryManager`: its device,
    its figures and its peak statistics. A protocol, so that this module of models never
    imports the manager (which imports the models)."""

    @property
    def resolved_device(self) -> torch.device:
        """The concrete device measured."""
        ...

    def snapshot(self) -> MemorySnapshot:
        """The device's memory figures now."""
        ...

    def reset_peak_memory_stats(self) -> None:
        """Start the device's peak figures afresh."""
        ...


__all__ = [
    "DEFAULT_HEADROOM",
    "CalibratedImageMemoryModel",
    "CalibrationSample",
    "ChunkMemoryModel",
    "ImageMemoryModel",
    "available_bytes",
    "calibrate",
]

logger = logging.getLogger("memscope")

DEFAULT_HEADROOM = 0.03
"""The share of the available memory that sizes chosen from measurements leave unused.

It absorbs what a measurement cannot see coming: fragmentation of the allocator's cache,
workspaces that grow with the inputs, other processes taking memory between the reading and
the allocation. 3 % keeps predicted sizes at 97 % of the largest size that fits, less
rounding, on a device whose memory grows linearly with the batch size (see docs/sizing.md).
"""


def check_headroom(value: object, name: str = "headroom") -> float:
    """A share of memory to leave unused: a real number with ``0 <= value < 1``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentTypeError(
            f"{name} must be a real number with 0 <= {name} < 1, got {value!r} "
            f"of type {type(value).__name__}"
        )
    # Compared before converting: float(10**400) would raise OverflowError.
    if not 0 <= value < 1:  # type: ignore[operator]
        raise InvalidArgumentError(f"{name} must be >= 0 and < 1, got {value!r}")
    share = float(value)
    if math.isnan(share) or not 0.0 <= share < 1.0:
        raise InvalidArgumentError(f"{name} must be >= 0 and < 1, got {value!r}")
    return share


def available_bytes(snapshot: MemorySnapshot) -> int | None:
    """Bytes a batch may still use, by ``snapshot``'s figures; ``None`` where none tell.

    The smallest of: the device's capacity less what is used (blocks torch caches but no
    tensor uses count as available, as the next allocation reuses them); with host
    monitoring, the host's limit less the resident memory; with a budget, the budget less
    what the batch cannot reuse (the allocated memory on a device that reports it, the
    resident memory otherwise). The same rule as :meth:`MemoryManager.max_batch_size`.
    """
    candidates: list[int] = []
    if snapshot.total is not None and snapshot.used is not None:
        candidates.append(snapshot.total - snapshot.used)
    if snapshot.host_limit is not None and snapshot.host_resident is not None:
        candidates.append(snapshot.host_limit - snapshot.host_resident)
    if snapshot.budget is not None:
        in_use = snapshot.allocated if snapshot.allocated is not None else snapshot.budget_used
        if in_use is not None:
            candidates.append(snapshot.budget - in_use)
    if not candidates:
        return None
    return max(min(candidates), 0)


class ChunkMemoryModel(Protocol):
    """What sizes chunks of images by memory: the bytes one chunk of them needs."""

    def estimate_chunk(self, image_sizes: Sequence[tuple[int, int]]) -> int:
        """Bytes one call on images of these ``(width, height)`` sizes needs."""
        ...


def _affordable(available: int, headroom: float) -> float:
    return available * (1.0 - check_headroom(headroom))


def _available_from(source: int | MemoryManager) -> int:
    """``source`` itself when it is a byte count, else what the manager says is available."""
    if isinstance(source, numbers.Integral) and not isinstance(source, bool):
        if source < 0:
            raise InvalidArgumentError(f"available must be >= 0 bytes, got {source!r}")
        return int(source)
    snapshot = getattr(source, "snapshot", None)
    if snapshot is None:
        raise InvalidArgumentTypeError(
            f"available must be a number of bytes or a MemoryManager, got {source!r}"
        )
    found = available_bytes(snapshot())
    if found is None:
        raise MemoryFiguresUnavailableError(
            f"{source!r} does not report the memory available on its device; pass the "
            "bytes, or use a manager with host=True or a budget"
        )
    return found


# The fixed model --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageMemoryModel:
    """The assumptions behind :meth:`MemoryManager.estimate_memory_required`.

    The defaults reproduce the Cobra ``MemoryManager`` API's figures exactly. For an image of
    ``P = width * height`` pixels and ``B = bytes_per_element``:

    - input: ``P * channels * B``
    - latent: ``(P // latent_downscale**2) * latent_channels * B``
    - activations: ``activation_factor * latent``
    - references: ``references`` images of ``reference_scale`` times the input's sides
    - total: ``int(overhead * (input + latent + activations + references))``

    Describe your own pipeline by changing what differs, for example fp16 with twelve
    half-resolution references: ``ImageMemoryModel(bytes_per_element=2, references=12,
    reference_scale=0.5)``; or measure it with :func:`calibrate`.
    """

    references: int = 4
    bytes_per_element: int = 4
    channels: int = 3
    latent_channels: int = 4
    latent_downscale: int = 8
    activation_factor: float = 2.0
    reference_scale: float = 1.0
    overhead: float = 1.5

    def __post_init__(self) -> None:
        check_int(self.references, "references", minimum=0)
        check_int(self.bytes_per_element, "bytes_per_element", minimum=1)
        check_int(self.channels, "channels", minimum=1)
        check_int(self.latent_channels, "latent_channels", minimum=0)
        check_int(self.latent_downscale, "latent_downscale", minimum=1)
        check_positive_number(self.activation_factor, "activation_factor", allow_zero=True)
        check_positive_number(self.reference_scale, "reference_scale")
        check_positive_number(self.overhead, "overhead")

    def __call__(self, image_size: tuple[int, int]) -> int:
        return self.estimate(image_size)

    def estimate(self, image_size: tuple[int, int]) -> int:
        """Bytes needed to process one image of ``(width, height)`` pixels."""
        width, height = check_image_size(image_size)
        input_bytes = self._image_bytes(width, height)
        latent_bytes = (
            (width * height)
            // (self.latent_downscale**2)
            * self.latent_channels
            * self.bytes_per_element
        )
        activation_bytes = self.activation_factor * latent_bytes
        reference_bytes = self.references * self._image_bytes(
            round(width * self.reference_scale), round(height * self.reference_scale)
        )
        total = input_bytes + latent_bytes + activation_bytes + reference_bytes
        return int(self.overhead * total)

    def estimate_memory_required(self, image_size: tuple[int, int], batch_size: int = 1) -> int:
        """Bytes needed to process ``batch_size`` images of ``image_size`` in one call."""
        return self.estimate(image_size) * check_int(batch_size, "batch_size", minimum=1)

    def estimate_chunk(self, image_sizes: Sequence[tuple[int, int]]) -> int:
        """Bytes needed to process images of these sizes in one call: the sum of each's."""
        return sum(self.estimate(size) for size in image_sizes)

    def max_batch_size(
        self,
        image_size: tuple[int, int],
        available: int | MemoryManager,
        *,
        headroom: float = DEFAULT_HEADROOM,
    ) -> int:
        """How many images of ``image_size`` fit in ``available`` (bytes, or what a
        manager's device has available now), leaving ``headroom`` of it unused."""
        budget = _affordable(_available_from(available), headroom)
        return max(int(budget // self.estimate(image_size)), 0)

    def _image_bytes(self, width: int, height: int) -> int:
        return width * height * self.channels * self.bytes_per_element


# Measuring peaks ----------------------------------------------------------------------------

_PROC_SELF = Path("/proc/self")


class _HostPeak:
    """The process's peak resident memory on Linux: reset through ``clear_refs``, read from
    ``VmHWM``. Works out once whether the system allows it."""

    def __init__(self, proc_self: Path = _PROC_SELF) -> None:
        self.proc_self = proc_self
        self._lock = threading.Lock()
        self._usable: bool | None = None
        self._trim: Callable[[int], int] | None = _malloc_trim()

    def usable(self) -> bool:
        """Whether the peak can be reset and read here (tried once, then remembered)."""
        with self._lock:
            if self._usable is None:
                self._usable = self._reset() is not None and self._read("VmHWM") is not None
                if not self._usable:
                    logger.info(
                        "the peak resident memory cannot be reset and read here (it needs "
                        "Linux's /proc/self/clear_refs and VmHWM): nothing measured on the CPU"
                    )
            return self._usable

    def start(self) -> int | None:
        """Reset the peak to the resident memory now, and return that (the baseline)."""
        if not self.usable():
            return None
        if self._trim is not None:
            # Free heap memory glibc keeps would be reused without growing the resident
            # memory; handing it back first makes every byte a call needs show as growth.
            self._trim(0)
        return self._reset()

    def peak(self) -> int | None:
        """The peak resident memory since the last :meth:`start`."""
        return self._read("VmHWM")

    def _reset(self) -> int | None:
        try:
            (self.proc_self / "clear_refs").write_text("5")
        except OSError:
            return None
        return self._read("VmRSS")

    def _read(self, field: str) -> int | None:
        try:
            text = (self.proc_self / "status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(f"{field}:"):
                parts = line.split()
                if len(parts) >= 3 and parts[1].isdigit() and parts[2] == "kB":
                    return int(parts[1]) * 1024
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where the C library has one."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


host_peak = _HostPeak()
"""The process's peak resident memory (one per process: the high-water mark is the process's)."""


@dataclass(frozen=True, slots=True)
class PeakStart:
    """A measurement begun: where the peak is read from, and the memory in use at the start."""

    source: str
    """``"allocator"`` (the device's allocator peak) or ``"host"`` (peak resident memory)."""
    baseline: int


def peak_source(snapshot: MemorySnapshot, *, host: bool) -> str | None:
    """Where a peak on ``snapshot``'s device can be measured: ``"allocator"`` where the device
    keeps peak statistics, ``"host"`` for a device that reports no figures (the CPU) when
    ``host`` allows it and the system can, else ``None``."""
    if snapshot.peak_allocated is not None and snapshot.allocated is not None:
        return "allocator"
    if host and snapshot.total is None and snapshot.allocated is None and host_peak.usable():
        return "host"
    return None


def start_peak(
    manager: MemoryManager, snapshot: MemorySnapshot, source: str | None
) -> PeakStart | None:
    """Reset the peak from ``source`` and note the baseline; ``None`` when nothing can be
    measured. ``snapshot`` is the manager's, read just before (the caller folds its peaks
    into whatever must keep them before they are reset)."""
    if source == "allocator":
        assert snapshot.allocated is not None
        manager.reset_peak_memory_stats()
        return PeakStart("allocator", snapshot.allocated)
    if source == "host":
        baseline = host_peak.start()
        return None if baseline is None else PeakStart("host", baseline)
    return None


def read_peak(manager: MemoryManager, start: PeakStart) -> int | None:
    """Bytes the peak rose above the baseline since ``start``; ``None`` if unreadable."""
    from_allocator = start.source == "allocator"
    peak = manager.snapshot().peak_allocated if from_allocator else host_peak.peak()
    if peak is None:
        return None
    return max(peak - start.baseline, 0)


def _describe_source(source: str) -> str:
    if source == "allocator":
        return "the allocator's peak (peak_allocated)"
    return "the process's peak resident memory (VmHWM, after clear_refs)"


# The calibrated model ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalibrationSample:
    """One measured run of a calibration."""

    image_size: tuple[int, int]
    batch_size: int
    peak_bytes: int
    """How far the call's peak rose above the memory in use before it."""

    @property
    def pixels(self) -> int:
        """Pixels in the whole batch: width * height * batch_size."""
        return self.image_size[0] * self.image_size[1] * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """The sample as a JSON-serialisable dict."""
        width, height = self.image_size
        return {
            "width": width,
            "height": height,
            "batch_size": self.batch_size,
            "peak_bytes": self.peak_bytes,
        }


@dataclass(frozen=True, slots=True)
class CalibratedImageMemoryModel:
    """Memory fitted to measurements: ``fixed_bytes + bytes_per_pixel * pixels * batch``.

    :func:`calibrate` makes one; it also serves wherever an :class:`ImageMemoryModel` does
    (``estimate``, ``estimate_chunk``, chunk sizing by memory in
    :func:`~memscope.process_in_chunks`). How good the fit is: ``r_squared`` (1.0 for a
    straight line through every sample) and ``max_relative_error`` (the largest miss on a
    sample, as a share of what was measured).
    """

    fixed_bytes: int
    """Memory a call needs whatever its size (workspaces, buffers made once per call)."""
    bytes_per_pixel: float
    """Memory each pixel of each image adds."""
    samples: tuple[CalibrationSample, ...] = ()
    r_squared: float = 1.0
    max_relative_error: float = 0.0
    device: str = ""
    """The device the samples were measured on."""
    method: str = ""
    """How the peaks were measured."""

    def __post_init__(self) -> None:
        check_int(self.fixed_bytes, "fixed_bytes", minimum=0)
        check_positive_number(self.bytes_per_pixel, "bytes_per_pixel")

    def __str__(self) -> str:
        return (
            f"{format_bytes(self.fixed_bytes)} + {self.bytes_per_pixel:,.2f} bytes per pixel "
            f"(R^2 {self.r_squared:.4f}, largest miss {self.max_relative_error:.1%} over "
            f"{len(self.samples)} samples{f' on {self.device}' if self.device else ''})"
        )

    def __call__(self, image_size: tuple[int, int]) -> int:
        return self.estimate(image_size)

    def estimate(self, image_size: tuple[int, int]) -> int:
        """Bytes one image of ``(width, height)`` pixels needs, alone in its call."""
        return self.estimate_memory_required(image_size)

    def estimate_memory_required(self, image_size: tuple[int, int], batch_size: int = 1) -> int:
        """Bytes a call on ``batch_size`` images of ``image_size`` needs."""
        width, height = check_image_size(image_size)
        batch = check_int(batch_size, "batch_size", minimum=1)
        return math.ceil(self.fixed_bytes + self.bytes_per_pixel * width * height * batch)

    def estimate_chunk(self, image_sizes: Sequence[tuple[int, int]]) -> int:
        """Bytes a call on images of these sizes needs: the fixed part once, then each
        image's pixels."""
        if not image_sizes:
            return 0
        pixels = 0
        for size in image_sizes:
            width, height = check_image_size(size)
            pixels += width * height
        return math.ceil(self.fixed_bytes + self.bytes_per_pixel * pixels)

    def max_batch_size(
        self,
        image_size: tuple[int, int],
        available: int | MemoryManager,
        *,
        headroom: float = DEFAULT_HEADROOM,
    ) -> int:
        """How many images of ``image_size`` fit in one call within ``available`` (bytes,
        or what a manager's device has available now), leaving ``headroom`` of it unused:
        the fixed part counts once."""
        width, height = check_image_size(image_size)
        budget = _affordable(_available_from(available), headroom) - self.fixed_bytes
        if budget <= 0:
            return 0
        return int(budget // (self.bytes_per_pixel * width * height))

    def to_dict(self) -> dict[str, Any]:
        """The model, its fit and its samples as a JSON-serialisable dict."""
        return {
            "fixed_bytes": self.fixed_bytes,
            "bytes_per_pixel": self.bytes_per_pixel,
            "r_squared": self.r_squared,
            "max_relative_error": self.max_relative_error,
            "device": self.device,
            "method": self.method,
            "samples": [sample.to_dict() for sample in self.samples],
        }


def fit_samples(samples: Sequence[CalibrationSample]) -> tuple[int, float, float, float]:
    """Least squares of ``peak = fixed + per_pixel * pixels``: ``(fixed, per_pixel,
    r_squared, max_relative_error)``.

    A negative intercept (measurement noise around a fixed part of nothing) is refitted
    through the origin, since no call needs less than nothing.
    """
    xs = [float(sample.pixels) for sample in samples]
    ys = [float(sample.peak_bytes) for sample in samples]
    count = len(samples)
    mean_x = sum(xs) / count
    mean_y = sum(ys) / count
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise InvalidArgumentError(
            "calibration needs at least two different pixel counts (image size times batch "
            "size) to fit a line"
        )
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    intercept = mean_y - slope * mean_x
    if intercept < 0:
        intercept = 0.0
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    if slope <= 0:
        raise InvalidArgumentError(
            "the measured peak does not grow with the pixels (peaks: "
            f"{', '.join(format_bytes(int(y)) for y in ys)}): memory that does not depend "
            "on the image size cannot size batches"
        )
    predictions = [intercept + slope * x for x in xs]
    residual = sum((y - p) ** 2 for y, p in zip(ys, predictions, strict=True))
    total = sum((y - mean_y) ** 2 for y in ys)
    r_squared = 1.0 - residual / total if total > 0 else 1.0
    misses = [abs(p - y) / y for y, p in zip(ys, predictions, strict=True) if y > 0]
    return round(intercept), slope, r_squared, max(misses, default=0.0)


_DEFAULT_CALIBRATION_SIZES = ((64, 64), (128, 128), (256, 256))
_DEFAULT_CALIBRATION_BATCHES = (1, 2)

# A fit worse than this is reported with a warning: memory is then not linear in pixels.
_POOR_FIT_R_SQUARED = 0.99
_POOR_FIT_MISS = 0.1


def calibrate(
    function: Callable[[int, tuple[int, int]], object],
    *,
    manager: MemoryManager,
    image_sizes: Sequence[tuple[int, int]] = _DEFAULT_CALIBRATION_SIZES,
    batch_sizes: Sequence[int] = _DEFAULT_CALIBRATION_BATCHES,
    repeats: int = 2,
) -> CalibratedImageMemoryModel:
    """Measure ``function``'s memory at small sizes and fit a model that predicts larger ones.

    ``function(batch_size, (width, height))`` must do the work one call of the real job does
    (load a batch of that many random images of that size onto ``manager``'s device, run the
    model) and may return anything; what it returns is dropped. It is called once to warm up
    (kernels, workspaces and caches made once), then ``repeats`` times for each image size
    and batch size; each run's peak memory above what was in use before it is a sample, and
    the largest of the repeats counts. The samples are fitted with least squares to
    ``memory = fixed + per_pixel * width * height * batch_size``.

    Peaks come from the device's allocator where it keeps peak statistics (CUDA, other
    accelerators); on the CPU from the process's peak resident memory (Linux only: see
    :mod:`memscope.estimation`). Raises :class:`~memscope.exceptions.MemoryFiguresUnavailableError`
    where neither can be measured (MPS; the CPU elsewhere than Linux), and
    :class:`~memscope.InvalidArgumentError` when the samples do not make a line that grows
    with the pixels. A fit with ``r_squared`` below 0.99 or a miss above 10 % is logged as a
    warning: memory is not linear in pixels there (see docs/sizing.md).

    Measuring resets the device's peak statistics (or the process's peak resident memory),
    so run it before a ``managed_batch``, not inside one.
    """
    if not callable(function):
        raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
    sizes = _check_sequence(image_sizes, "image_sizes", check_image_size)
    batches = _check_sequence(
        batch_sizes, "batch_sizes", lambda value, name: check_int(value, name, minimum=1)
    )
    rounds = check_int(repeats, "repeats", minimum=1)
    if len({size[0] * size[1] * batch for size in sizes for batch in batches}) < 2:
        raise InvalidArgumentError(
            "calibration needs at least two different pixel counts (image size times batch "
            f"size); got image_sizes={list(sizes)!r} and batch_sizes={list(batches)!r}"
        )
    source = peak_source(manager.snapshot(), host=True)
    if source is None:
        raise MemoryFiguresUnavailableError(
            f"cannot measure peak memory on {manager.resolved_device}: it keeps no peak "
            "statistics (MPS), or this system cannot reset the process's peak resident "
            "memory (the CPU outside Linux)"
        )
    function(batches[0], sizes[0])
    samples: list[CalibrationSample] = []
    for size in sizes:
        for batch in batches:
            peak = max(_measure_once(function, manager, source, batch, size) for _ in range(rounds))
            samples.append(CalibrationSample(size, batch, peak))
    fixed, per_pixel, r_squared, miss = fit_samples(samples)
    model = CalibratedImageMemoryModel(
        fixed_bytes=fixed,
        bytes_per_pixel=per_pixel,
        samples=tuple(samples),
        r_squared=r_squared,
        max_relative_error=miss,
        device=str(manager.resolved_device),
        method=_describe_source(source),
    )
    if r_squared < _POOR_FIT_R_SQUARED or miss > _POOR_FIT_MISS:
        logger.warning(
            "calibration: memory is not linear in pixels x batch size (%s); predictions "
            "far beyond the calibrated sizes may miss",
            model,
        )
    else:
        logger.info("calibration: %s", model)
    return model


def _measure_once(
    function: Callable[[int, tuple[int, int]], object],
    manager: MemoryManager,
    source: str,
    batch: int,
    size: tuple[int, int],
) -> int:
    start = start_peak(manager, manager.snapshot(), source)
    if start is None:
        raise MemoryFiguresUnavailableError(
            f"the peak memory of {manager.resolved_device} could not be reset"
        )
    function(batch, size)
    peak = read_peak(manager, start)
    if peak is None:
        raise MemoryFiguresUnavailableError(
            f"the peak memory of {manager.resolved_device} could not be read"
        )
    return peak


def _check_sequence(
    values: object, name: str, check: Callable[[object, str], Any]
) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidArgumentTypeError(f"{name} must be a sequence, got {values!r}")
    if not values:
        raise InvalidArgumentError(f"{name} must not be empty")
    return tuple(check(value, f"{name}[{index}]") for index, value in enumerate(values))
