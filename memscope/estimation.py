"""How much device memory one image needs: a small, explicit model of a diffusion pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from memscope._validation import check_image_size, check_int, check_positive_number

__all__ = ["ImageMemoryModel"]


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
    reference_scale=0.5)``.
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

    def _image_bytes(self, width: int, height: int) -> int:
        return width * height * self.channels * self.bytes_per_element
