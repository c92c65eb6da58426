"""The ``memscope`` command (also ``python -m memscope``).

``memscope`` alone prints the detected device's memory and the estimates for three image
sizes that the MemoryManager API of the Cobra batch-processing system documents;
``memscope info``, ``memscope estimate``, ``memscope demo`` and ``memscope report`` do more
(see ``--help``).
A bad argument, memscope's own complaints about one included, exits with status 2 and one
line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

# Only what the parser needs is imported here: `memscope --version` and `--help` answer
# without torch, whose import takes seconds; each command imports what it runs.
from memscope._version import __version__
from memscope.cli._calibrate import add_calibrate_arguments, run_calibrate
from memscope.cli._demo_command import add_demo_arguments, run_demo
from memscope.cli._info import (
    add_estimate_arguments,
    add_info_arguments,
    run_estimate,
    run_info,
    run_overview,
)
from memscope.cli._options import add_command, note
from memscope.cli._report import add_report_arguments, run_report

__all__: list[str] = []

_NEGATIVE_NUMBER_OR_SIZE = re.compile(r"^-\d+(?:[xX][+-]?\d+)?$|^-\d*\.\d+$")

COMMANDS_WITHOUT_A_DEVICE = {
    "estimate": "the estimate depends on the image, not the device",
    "report": "the report reads a journal file",
}
"""The commands a ``--device`` before them does not apply to, and why."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors as one line: the usage is one ``--help`` away.

    An argument such as ``-5x5`` reads as a (bad) image size, not as an unknown option, so
    that ``memscope estimate -5x5`` says what is wrong with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes only numbers like -5 or -.5 for values; no option here is named
        # like a number, so a negative size can be a value too.
        self._negative_number_matcher = _NEGATIVE_NUMBER_OR_SIZE

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# The parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``memscope`` argument parser, subcommands included."""
    parser = _ArgumentParser(
        prog="memscope",
        description=(
            "Keep GPU memory in check across long PyTorch batch jobs. Without a command: "
            "the detected device's memory and the memory one image of 512x512, 1024x1024 "
            "and 2048x2048 pixels needs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"memscope {__version__}")
    parser.add_argument(
        "--device",
        dest="top_level_device",
        default=None,
        metavar="DEVICE",
        help=(
            "the device to look at (without a command, and for info) or to colorize on (demo): "
            "cuda, cuda:1, mps, cpu, ... (default: auto-detect; info: every device); may also "
            "follow the command"
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    table = "print JSON instead of a table"
    add_command(commands, "info", add_info_arguments, json_help=table)
    add_command(commands, "estimate", add_estimate_arguments, json_help=table)
    add_command(commands, "demo", add_demo_arguments)
    add_command(commands, "report", add_report_arguments, json_help="print the summary as JSON")
    add_command(
        commands, "calibrate", add_calibrate_arguments, json_help="print JSON instead of tables"
    )
    return parser


def _chosen_device(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> str | None:
    """``--device``, given before the command or after it (once, or twice alike)."""
    before: str | None = arguments.top_level_device
    after: str | None = getattr(arguments, "device", None)
    if arguments.command in COMMANDS_WITHOUT_A_DEVICE and before is not None:
        reason = COMMANDS_WITHOUT_A_DEVICE[arguments.command]
        parser.error(f"--device does not apply to {arguments.command}: {reason}")
    if before is not None and after is not None and before != after:
        parser.error(f"--device given twice, as {before!r} and {after!r}")
    return after if after is not None else before


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    # Errors found after parsing are reported by the command's own parser, named after it.
    command_parser: argparse.ArgumentParser = getattr(arguments, "command_parser", parser)
    device = _chosen_device(command_parser, arguments)
    if hasattr(arguments, "device"):
        # Commands that read their own --device see one given before the command too.
        arguments.device = device
    try:
        if arguments.command == "info":
            return run_info(command_parser, device, arguments.json)
        if arguments.command == "estimate":
            return run_estimate(command_parser, arguments)
        if arguments.command == "demo":
            return run_demo(command_parser, arguments, device)
        if arguments.command == "report":
            return run_report(arguments)
        if arguments.command == "calibrate":
            return run_calibrate(arguments)
        return run_overview(parser, device)
    except KeyboardInterrupt:
        note("memscope: interrupted")
        return 130
    except BrokenPipeError:
        # The reader left (`memscope estimate ... | head`). Python flushes stdout again at
        # exit, which would fail the same way; pointing it at devnull lets it exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe closed on
