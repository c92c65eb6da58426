"""What the commands share: their defaults, sizes, errors in the command line's terms (the
options a user typed, not the parameters behind them), and how they print."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def write(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def note(line: str) -> None:
    sys.stderr.write(line + "\n")


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``: the number with its noun in the right number."""
    noun = singular if number == 1 else (plural if plural is not None else singular + "s")
    return f"{number} {noun}"


def write_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell: the first left-aligned, the others right."""
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    for row in (columns, *rows):
        first, *others = row
        cells = [first.ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(others, widths[1:], strict=True)]
        write("  ".join(cells).rstrip())


def add_command(
    commands: argparse._SubParsersAction[Any],
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    *,
    json_help: str | None = None,
) -> None:
    """Add the subcommand ``name``, whose options ``add_arguments`` adds, and a ``--json`` flag
    where ``json_help`` says what it prints.

    The docstring of ``add_arguments`` is the command's help: its first line what
    ``memscope --help`` lists, the rest the description. The command's parser reports the
    errors found after parsing (``command_parser``).
    """
    summary, _, description = (add_arguments.__doc__ or "").partition("\n")
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=" ".join(description.split())
    )
    add_arguments(parser)
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(command_parser=parser)
