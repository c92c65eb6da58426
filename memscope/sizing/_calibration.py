"""Calibration: run the user's function at a few small sizes, measure each run's peak, and fit
``memory = fixed + per_pixel * pixels * batch`` (a
:class:`~memscope.estimation.CalibratedImageMemoryModel`).

Peaks come from the device's allocator where it keeps peak statistics (:mod:`memscope._peak`),
and on the CPU from torch's CPU allocator: the running sum of the profiler's memory events.
That count is the same in a fresh process and late in a long one, unlike the resident memory,
which read low late in long processes (docs/sizing.md); memory outside torch is not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from memscope._peak import peak_source, read_peak, start_peak
from memscope._validation import check_image_size, check_int
from memscope.estimation import CalibratedImageMemoryModel, CalibrationSample, MeasuredManager
from memscope.exceptions import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
)
from memscope.units import format_bytes

__all__ = ["calibrate", "fit_samples"]

logger = logging.getLogger("memscope")

# Where calibration's peaks come from on the CPU: torch's allocator, through the profiler.
_TORCH_CPU = "torch-cpu"


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
    manager: MeasuredManager,
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
    accelerators); on the CPU from torch's CPU allocator, through the profiler's memory
    events (memory outside torch is not counted; see docs/sizing.md). Raises
    :class:`~memscope.exceptions.MemoryFiguresUnavailableError` where neither can be
    measured (MPS), and
    :class:`~memscope.InvalidArgumentError` when the samples do not make a line that grows
    with the pixels. A fit with ``r_squared`` below 0.99 or a miss above 10 % is logged as a
    warning: memory is not linear in pixels there (see docs/sizing.md).

    Measuring resets the device's peak statistics, so run it before a ``managed_batch``, not
    inside one.
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
    source = peak_source(manager.snapshot(), host=False)
    if source is None and manager.resolved_device.type == "cpu":
        source = _TORCH_CPU
    if source is None:
        raise MemoryFiguresUnavailableError(
            f"cannot measure peak memory on {manager.resolved_device}: it keeps no peak "
            "statistics (MPS)"
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
    manager: MeasuredManager,
    source: str,
    batch: int,
    size: tuple[int, int],
) -> int:
    if source == _TORCH_CPU:
        return _torch_cpu_peak(function, batch, size)
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


def _torch_cpu_peak(
    function: Callable[[int, tuple[int, int]], object], batch: int, size: tuple[int, int]
) -> int:
    """Bytes torch's CPU allocator had handed out at the call's peak, above what it had
    before: the running sum of the profiler's memory events (a free counts negative)."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        function(batch, size)
    results = None if recorded.profiler is None else recorded.profiler.kineto_results
    if results is None:
        raise MemoryFiguresUnavailableError("torch's profiler recorded no memory events")
    events = sorted(
        (
            event
            for event in results.events()
            if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
        ),
        key=lambda event: event.start_ns(),
    )
    in_use = peak = 0
    for event in events:
        in_use += event.nbytes()
        peak = max(peak, in_use)
    return peak


def _describe_source(source: str) -> str:
    if source == "allocator":
        return "the allocator's peak (peak_allocated)"
    return "torch's CPU allocator (the profiler's memory events)"


def _check_sequence(
    values: object, name: str, check: Callable[[object, str], Any]
) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidArgumentTypeError(f"{name} must be a sequence, got {values!r}")
    if not values:
        raise InvalidArgumentError(f"{name} must not be empty")
    return tuple(check(value, f"{name}[{index}]") for index, value in enumerate(values))
