"""Argument checks shared by memscope's public entry points.

Each check raises at once with a message that names the parameter and the value given.
"""

from __future__ import annotations

import math
import numbers
from typing import NoReturn

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError


def reject_both(
    first: str, first_value: object, second: str, second_value: object, why: str
) -> NoReturn:
    """Refuse two options that cannot apply together, naming both and their values."""
    raise InvalidArgumentError(
        f"pass {first}= or {second}=, not both: {why} (got {first}={first_value!r} and "
        f"{second}={second_value!r})"
    )


def _as_float(value: numbers.Real) -> float:
    """``float(value)``; a number too large for a float (``10**400``) is infinity, which
    every range check then refuses with the parameter's own message."""
    try:
        return float(value)
    except OverflowError:
        # Only an int (or a Fraction of ints) overflows a float; its sign is its numerator's.
        return math.inf if value.numerator > 0 else -math.inf  # type: ignore[attr-defined]


def check_fraction(value: object, name: str) -> float:
    """A real number with ``0 < value <= 1``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentTypeError(
            f"{name} must be a real number between 0 and 1, got {value!r} "
            f"of type {type(value).__name__}"
        )
    fraction = _as_float(value)
    if math.isnan(fraction) or not 0.0 < fraction <= 1.0:
        raise InvalidArgumentError(
            f"{name} must be between 0 and 1 (0 < {name} <= 1), got {value!r}"
        )
    return fraction


def check_int(value: object, name: str, *, minimum: int) -> int:
    """An integer (not a bool) no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentTypeError(
            f"{name} must be an int, got {value!r} of type {type(value).__name__}"
        )
    number = int(value)
    if number < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return number


def check_positive_number(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number above zero (or at least zero with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentTypeError(
            f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    number = _as_float(value)
    bad = number < 0 if allow_zero else number <= 0
    if not math.isfinite(number) or bad:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_image_size(value: object, name: str = "image_size") -> tuple[int, int]:
    """A ``(width, height)`` pair of positive integers."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise InvalidArgumentTypeError(
            f"{name} must be a (width, height) tuple of ints, got {value!r}"
        )
    if len(value) != 2:
        raise InvalidArgumentError(
            f"{name} must have exactly two items (width, height), got {value!r}"
        )
    width, height = value
    for axis, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, numbers.Integral):
            raise InvalidArgumentTypeError(
                f"{name} {axis} must be an int, got {side!r} in {value!r}"
            )
        if side <= 0:
            raise InvalidArgumentError(f"{name} {axis} must be positive, got {side!r} in {value!r}")
    return int(width), int(height)
