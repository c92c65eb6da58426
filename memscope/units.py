"""Byte counts for people to read."""

from __future__ import annotations

__all__ = ["format_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, one decimal; ``None`` -> ``"n/a"``."""
    if count is None:
        return "n/a"
    size = abs(float(count))
    sign = "-" if count < 0 else ""
    exponent = 0
    while size >= 1024 and exponent < len(_UNITS) - 1:
        size /= 1024
        exponent += 1
    if exponent == 0:
        return f"{sign}{int(size)} B"
    return f"{sign}{size:.1f} {_UNITS[exponent]}"
