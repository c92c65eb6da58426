"""The ``memscope`` command: ``info``, ``estimate``, ``demo`` and ``report``."""

from memscope.cli._command import build_parser, main

__all__ = ["build_parser", "main"]
