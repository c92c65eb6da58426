"""Errors in the command line's terms: the options a user typed, not the parameters behind them."""

from __future__ import annotations

import argparse
import re

# The parser's defaults live here, not in the modules that run the commands: building the
# parser (for --help) must not import torch.
DEFAULT_IMAGES = 24
DEFAULT_SIZE = (256, 256)
DEFAULT_EVERY = 5

_SIZE = re.compile(r"([+-]?\d+)(?:[xX]([+-]?\d+))?")

DEVICE_OPTIONS = {"device": "--device"}
"""The device parameter, as every command that takes one names it."""


def as_typed(message: str, options: dict[str, str]) -> str:
    """``message`` with the parameter it starts with named as the option that sets it.

    memscope's checks start their messages with the parameter's name (``images must be an
    int >= 1, got 0``); on the command line the user typed ``--images``.
    """
    name, separator, rest = message.partition(" ")
    if separator and name in options:
        return f"{options[name]} {rest}"
    return message


def parse_image_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``; ``"512"`` -> ``(512, 512)``.

    A size with a zero or negative side (``-5x5``) is refused as such, not as a bad format.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid image size {text!r}: use WIDTHxHEIGHT (1024x768) or one side (512)"
        )
    width = int(match.group(1))
    height = width if match.group(2) is None else int(match.group(2))
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(
            f"invalid image size {text!r}: sides must be positive (1 or more pixels)"
        )
    return width, height


def format_size(size: tuple[int, int]) -> str:
    """``(1024, 768)`` -> ``"1024x768"``."""
    return f"{size[0]}x{size[1]}"
