"""How much memory images need: the pure memory models.

- :class:`ImageMemoryModel` is the fixed formula of the Cobra ``MemoryManager`` API, and the
  default of :meth:`MemoryManager.estimate_memory_required`.
- :class:`CalibratedImageMemoryModel` is ``memory = fixed + per_pixel * pixels * batch``,
  fitted to measurements (with the fit's quality) by :func:`memscope.sizing.calibrate`.
- :func:`available_bytes` is what a :class:`~memscope.MemorySnapshot` says a batch may still
  use, and :data:`DEFAULT_HEADROOM` the share of it that sizing leaves unused.

Measuring peaks and calibrating live in the sizing layer (:mod:`memscope.sizing`); their old
names here (``calibrate``, ``fit_samples``, and ``host_peak``, ``peak_source``,
``start_peak``, ``read_peak``, ``PeakStart`` from the private :mod:`memscope._peak` that sizing
and the pytest checks share) still import from here, read when first asked for, so that this
module never imports sizing (docs/changelog.md).
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from memscope._homes import moved_attribute
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

    # Explicit re-exports (``as``), for type checkers: the names that moved to sizing.
    from memscope._peak import (
        PeakStart as PeakStart,
        host_peak as host_peak,
        peak_source as peak_source,
        read_peak as read_peak,
        start_peak as start_peak,
    )
    from memscope.sizing import calibrate as calibrate, fit_samples as fit_samples


class MeasuredManager(Protocol):
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
]


def __getattr__(name: str) -> Any:
    # The names that moved, read when first asked for (memscope._homes): sizing imports
    # these models, and they never import sizing.
    return moved_attribute(__name__, name)


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


class _BatchFitting(abc.ABC):
    """``max_batch_size`` for a model whose call on ``n`` images of one size costs
    ``fixed + n * per_image`` (``_batch_cost``)."""

    __slots__ = ()

    @abc.abstractmethod
    def _batch_cost(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """``(fixed, per_image)`` bytes of a call on images of ``image_size``."""

    def max_batch_size(
        self,
        image_size: tuple[int, int],
        available: int | MeasuredManager,
        *,
        headroom: float = DEFAULT_HEADROOM,
    ) -> int:
        """How many images of ``image_size`` fit in one call within ``available`` (bytes,
        or what a manager's device has available now), leaving ``headroom`` of it unused:
        a fixed part counts once."""
        fixed, per_image = self._batch_cost(image_size)
        room = _available_from(available) * (1.0 - check_headroom(headroom)) - fixed
        return 0 if room <= 0 else int(room // per_image)


def _available_from(source: int | MeasuredManager) -> int:
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
class ImageMemoryModel(_BatchFitting):
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

    def _batch_cost(self, image_size: tuple[int, int]) -> tuple[float, float]:
        return 0.0, float(self.estimate(image_size))

    def _image_bytes(self, width: int, height: int) -> int:
        return width * height * self.channels * self.bytes_per_element


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
class CalibratedImageMemoryModel(_BatchFitting):
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

    def _batch_cost(self, image_size: tuple[int, int]) -> tuple[float, float]:
        width, height = check_image_size(image_size)
        return float(self.fixed_bytes), self.bytes_per_pixel * width * height

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
