"""The ``memscope`` command: ``info``, ``estimate`` and ``demo``."""

from memscope.cli._command import build_parser, main

__all__ = ["build_parser", "main"]
