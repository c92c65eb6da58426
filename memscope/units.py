"""Byte counts for people: formatting them, and reading them back."""

from __future__ import annotations

import numbers
import re
from decimal import Decimal

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["format_bytes", "parse_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

_MULTIPLIERS = {
    "": 1,
    "b": 1,
    **{f"{prefix}b": 1000**power for power, prefix in enumerate("kmgtp", start=1)},
    **{f"{prefix}ib": 1024**power for power, prefix in enumerate("kmgtp", start=1)},
    # Kubernetes' spelling of the binary units, which is unambiguous.
    **{f"{prefix}i": 1024**power for power, prefix in enumerate("kmgtp", start=1)},
}

# Docker reads "6g" as 6 GiB, Kubernetes reads "6G" as 6 GB: a bare letter is refused rather
# than guessed.
_AMBIGUOUS = frozenset("kmgtp")

_SIZE = re.compile(r"\s*(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)\s*")


def format_bytes(count: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, one decimal; ``None`` -> ``"n/a"``."""
    if count is None:
        return "n/a"
    sign = "-" if count < 0 else ""
    try:
        size = abs(float(count))
    except OverflowError:  # an int beyond any float: no unit makes it readable
        return f"{sign}a {len(str(abs(int(count))))}-digit number of bytes"
    exponent = 0
    while size >= 1024 and exponent < len(_UNITS) - 1:
        size /= 1024
        exponent += 1
    if exponent == 0:
        return f"{sign}{int(size)} B"
    return f"{sign}{size:.1f} {_UNITS[exponent]}"


def parse_bytes(value: object, name: str = "size") -> int:
    """A byte count from an int, or from a string such as ``"6GiB"``, ``"512MB"``, ``"1.5 GB"``.

    ``KB``, ``MB``, ``GB``, ``TB``, ``PB`` are decimal (1000**n) and ``KiB`` ... ``PiB``
    (also ``Ki`` ... ``Pi``) binary (1024**n); units are case-insensitive, ``B`` or no unit
    means bytes, and a space between number and unit is optional. A bare ``K``/``M``/``G``
    is refused because tools disagree on whether it is decimal or binary. Fractions of a
    byte are rounded down. Zero is accepted; negative sizes raise
    :class:`~memscope.InvalidArgumentError` (a ``ValueError``), and so does text that is not
    a size. Other types raise :class:`~memscope.InvalidArgumentTypeError` (a ``TypeError``):
    a bool is not a size, and a float such as ``6e9`` is refused so that no size is silently
    rounded; write ``int(6e9)`` or ``"6 GB"``. ``name`` is the parameter that error messages
    name.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        raise InvalidArgumentTypeError(
            f"{name} must be a byte count (an int, or a string such as '6GiB' or '512MB'), "
            f"got {value!r} of type {type(value).__name__}"
        )
    count = _parse_size_text(value, name) if isinstance(value, str) else int(value)
    if count < 0:
        raise InvalidArgumentError(f"{name} must not be negative, got {value!r}")
    return count


def _parse_size_text(text: str, name: str) -> int:
    match = _SIZE.fullmatch(text.lower())
    if match is None:
        raise InvalidArgumentError(
            f"{name} {text!r} is not a size: write a number with an optional unit, "
            "such as '6GiB', '512MB' or '1.5 GB'"
        )
    unit = match["unit"]
    if unit in _AMBIGUOUS:
        raise InvalidArgumentError(
            f"{name} {text!r} has the ambiguous unit {unit.upper()!r}: write "
            f"'{unit.upper()}B' for 1000**n or '{unit.upper()}iB' for 1024**n bytes"
        )
    multiplier = _MULTIPLIERS.get(unit)
    if multiplier is None:
        raise InvalidArgumentError(
            f"{name} {text!r} has an unknown unit {unit!r}: use B, KB, MB, GB, TB, PB "
            "(powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024)"
        )
    # Decimal keeps "1.1 TB" exact, where a float product could land a byte short; int()
    # rounds the non-negative magnitude down.
    magnitude = int(Decimal(match["number"]) * multiplier)
    return -magnitude if match["sign"] == "-" else magnitude
