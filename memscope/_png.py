"""A minimal PNG encoder, so the demo writes images without Pillow or numpy."""

from __future__ import annotations

import ctypes
import os
import struct
import zlib
from pathlib import Path

import torch

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_RGB = 2
_SUB_FILTER = 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: torch.Tensor) -> bytes:
    """An 8-bit RGB PNG of ``pixels``, a ``(height, width, 3)`` uint8 tensor."""
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8:
        raise InvalidArgumentTypeError(f"pixels must be a uint8 tensor, got {pixels!r:.80}")
    if pixels.dim() != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise InvalidArgumentError(
            f"pixels must have the shape (height, width, 3), got {tuple(pixels.shape)}"
        )
    height, width, channels = pixels.shape
    flat = pixels.detach().to("cpu").reshape(height, width * channels)
    # The Sub filter stores each byte less the one a pixel to its left (uint8 arithmetic
    # wraps as PNG wants), which compresses smooth colour far better than raw bytes.
    rows = torch.empty((height, 1 + width * channels), dtype=torch.uint8)
    rows[:, 0] = _SUB_FILTER
    rows[:, 1 : 1 + channels] = flat[:, :channels]
    rows[:, 1 + channels :] = flat[:, channels:] - flat[:, :-channels]
    # Without numpy a tensor has no buffer interface; its contiguous bytes are read directly.
    raw = ctypes.string_at(rows.data_ptr(), rows.numel())
    header = struct.pack(">IIBBBBB", width, height, 8, _RGB, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], pixels: torch.Tensor) -> Path:
    """Write :func:`encode_png` of ``pixels`` to ``path``; returns the path."""
    target = Path(path)
    target.write_bytes(encode_png(pixels))
    return target
