"""The demo's job: line art drawn procedurally, a small random colorizer, and its leak.

The drawing needs no downloads and gives the same images for the same seed on every device;
the network has never been trained and stands in for a colorization model, so the demo
exercises the device as the real job does.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Colorizer", "ImageLeftovers", "draw_line_art", "leftover_bytes"]

HIDDEN_CHANNELS = 16
"""Channels of the colorizer's two hidden layers; an image leaves both layers' features."""

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
