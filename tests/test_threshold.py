"""Validation of ``memory_threshold``."""

from __future__ import annotations

import math

import pytest

from memscope import InvalidArgumentError, MemoryManager


@pytest.mark.parametrize("value", [0.5, 1, 1.0, 0.01, 0.8])
def test_accepted_thresholds_are_readable(value: float) -> None:
    """Any real number in (0, 1] is accepted and read back as a float."""
    manager = MemoryManager("cpu", memory_threshold=value)
    assert manager.memory_threshold == value
    assert isinstance(manager.memory_threshold, float)


def test_default_threshold_is_the_seeds() -> None:
    """The default threshold is 0.8, as in the Cobra MemoryManager API."""
    assert MemoryManager("cpu").memory_threshold == 0.8


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.01, 2, math.nan, math.inf, -math.inf])
def test_out_of_range_threshold_is_value_error_naming_value(value: float) -> None:
    """Out of range, NaN or infinite thresholds raise ValueError with the wording of the Cobra
    MemoryManager API."""
    with pytest.raises(ValueError, match="memory_threshold must be between 0 and 1") as raised:
        MemoryManager("cpu", memory_threshold=value)
    assert repr(value) in str(raised.value)
    assert isinstance(raised.value, InvalidArgumentError)


@pytest.mark.parametrize("value", ["0.8", None, True, False, [0.8]])
def test_non_number_threshold_is_type_error(value: object) -> None:
    """Strings, None and bools are not thresholds."""
    with pytest.raises(TypeError, match="memory_threshold"):
        MemoryManager("cpu", memory_threshold=value)  # type: ignore[arg-type]


def test_threshold_setter_validates() -> None:
    """Assigning a new threshold goes through the same check."""
    manager = MemoryManager("cpu")
    manager.memory_threshold = 0.6
    assert manager.memory_threshold == 0.6
    with pytest.raises(ValueError, match="memory_threshold must be between 0 and 1"):
        manager.memory_threshold = 1.5
    assert manager.memory_threshold == 0.6
