"""The one Sizing value: checked once, frozen, taken by every sizing entry point; the sizing
layer's names; ``@adaptive_batch`` functions pickle and copy (issue 21, defect 6)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

import memscope.oom
import memscope.sizing
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.sizing import (
    AdaptiveBatchState,
    Sizing,
    adaptive_batch,
    iter_chunks,
    iter_chunks_async,
    process_in_chunks,
    process_in_chunks_async,
)

# Sizing itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"factor": 10**400}, InvalidArgumentError, "factor must be between 0 and 1"),
        ({"headroom": 10**400}, InvalidArgumentError, "headroom must be >= 0 and < 1"),
        ({"headroom": -(10**400)}, InvalidArgumentError, "headroom must be >= 0 and < 1"),
        ({"start": 10**400}, InvalidArgumentError, "start must be an int <= 2\\*\\*53"),
        ({"min_size": 2**60}, InvalidArgumentError, "min_size must be an int <= 2\\*\\*53"),
        ({"factor": float("nan")}, InvalidArgumentError, "factor must be between 0 and 1"),
        ({"factor": 1}, InvalidArgumentError, "factor must be between 0 and 1"),
        ({"factor": "0.5"}, InvalidArgumentTypeError, "factor must be a real number"),
        ({"start": 0}, InvalidArgumentError, "start must be an int >= 1, got 0"),
        ({"start": 4, "min_size": 5}, InvalidArgumentError, "min_size must be <= start"),
        ({"regrow_after": 0}, InvalidArgumentError, "regrow_after must be an int >= 1"),
        ({"measure": "yes"}, InvalidArgumentTypeError, "measure must be True or False"),
    ],
)
def test_a_bad_sizing_option_is_refused_when_the_value_is_made(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """Sizing checks every option in __post_init__, huge values included (no OverflowError),
    naming the parameter and the value."""
    with pytest.raises(error, match=match):
        Sizing(**options)  # type: ignore[arg-type]


def test_sizing_is_frozen_normalised_and_replace_checks_again() -> None:
    """A Sizing cannot be changed; equal options compare equal (an int factor... a Fraction
    becomes a float); dataclasses.replace makes a variant that is checked again."""
    from fractions import Fraction

    sizing = Sizing(start=8, factor=Fraction(1, 2))
    assert sizing == Sizing(start=8, factor=0.5)
    assert isinstance(sizing.factor, float)
    assert hash(sizing) == hash(Sizing(start=8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sizing.start = 4  # type: ignore[misc]
    assert dataclasses.replace(sizing, start=16).start == 16
    with pytest.raises(InvalidArgumentError, match="min_size must be <= start"):
        dataclasses.replace(Sizing(start=8, min_size=4), start=2)


def test_adaptive_batch_needs_a_start() -> None:
    """A Sizing without start cannot decorate: the error says how to give one."""
    with pytest.raises(InvalidArgumentTypeError, match=r"Sizing\(start=\.\.\.\)"):
        adaptive_batch(sizing=Sizing())


# Entry points ----------------------------------------------------------------------------------


def test_the_keywords_are_the_sizing_value_fields() -> None:
    """adaptive_batch(start=8, factor=0.25) learns exactly what sizing=Sizing(...) does."""

    def step(batch_size: int) -> int:
        return batch_size

    by_keywords = adaptive_batch(start=8, factor=0.25, regrow_after=3)(step)
    by_value = adaptive_batch(sizing=Sizing(start=8, factor=0.25, regrow_after=3))(step)
    assert by_keywords.adaptive_state.sizing == by_value.adaptive_state.sizing
    assert by_keywords.adaptive_state.snapshot() == by_value.adaptive_state.snapshot()


@pytest.mark.parametrize(
    "entry",
    [
        lambda **kw: adaptive_batch(**kw),
        lambda **kw: process_in_chunks(list, [1, 2], **kw),
        lambda **kw: iter_chunks(list, [1, 2], **kw),
        lambda **kw: process_in_chunks_async(list, [1, 2], **kw),
        lambda **kw: iter_chunks_async(list, [1, 2], **kw),
        lambda sizing=None, **kw: AdaptiveBatchState(sizing, **kw),
    ],
)
def test_sizing_and_its_keywords_together_are_refused(entry: object) -> None:
    """Every entry point refuses sizing= with a sizing keyword too, naming both, and an
    unknown keyword with the list of sizing options."""
    assert callable(entry)
    with pytest.raises(InvalidArgumentError, match="pass sizing= or factor=, not both"):
        entry(sizing=Sizing(start=4), factor=0.25)
    with pytest.raises(InvalidArgumentTypeError, match="unexpected keyword argument 'chunk'"):
        entry(start=4, chunk=2)
    with pytest.raises(
        InvalidArgumentTypeError, match=r"sizing must be a memscope\.sizing\.Sizing"
    ):
        entry(sizing={"start": 4})


def test_chunks_take_the_sizing_value() -> None:
    """process_in_chunks(sizing=Sizing(start=2)) cuts chunks of 2."""
    seen: list[list[int]] = []

    def work(chunk: list[int]) -> list[int]:
        seen.append(list(chunk))
        return chunk

    assert process_in_chunks(work, [1, 2, 3], sizing=Sizing(start=2, measure=False)) == [1, 2, 3]
    assert seen == [[1, 2], [3]]


def test_with_state_the_state_sizing_is_used_and_another_is_refused() -> None:
    """state= carries the sizing: a sizing or a sizing keyword as well is refused."""
    state = AdaptiveBatchState(Sizing(start=2))
    assert list(iter_chunks(list, [1, 2, 3], state=state)) == [[1, 2], [3]]
    with pytest.raises(InvalidArgumentError, match="with state=, the state's sizing is used"):
        process_in_chunks(list, [1], state=state, sizing=Sizing(start=2))
    with pytest.raises(InvalidArgumentError, match="with state=, the state's sizing is used"):
        process_in_chunks(list, [1], state=state, start=2)


# The sizing layer ------------------------------------------------------------------------------

MOVED = (
    "AdaptiveBatchClassMethod",
    "AdaptiveBatchDecorator",
    "AdaptiveBatchFunction",
    "AdaptiveBatchMethod",
    "AdaptiveBatchSnapshot",
    "AdaptiveBatchState",
    "adaptive_batch",
    "iter_chunks",
    "iter_chunks_async",
    "process_in_chunks",
    "process_in_chunks_async",
)


@pytest.mark.parametrize("name", MOVED)
def test_the_old_oom_import_paths_still_work(name: str) -> None:
    """Each sizing name memscope.oom had is still importable from it: the same object."""
    assert getattr(memscope.oom, name) is getattr(memscope.sizing, name)
    namespace: dict[str, object] = {}
    exec(f"from memscope.oom import {name}", namespace)
    assert namespace[name] is getattr(memscope.sizing, name)


def test_an_unknown_oom_name_is_still_an_attribute_error() -> None:
    """memscope.oom's lazy names do not swallow a typo."""
    with pytest.raises(AttributeError, match="no attribute 'adaptive_batches'"):
        memscope.oom.adaptive_batches  # noqa: B018


# Defect 6: @adaptive_batch functions pickle and copy ------------------------------------------


@adaptive_batch(start=4, measure=False)
def halve(batch_size: int, values: list[int]) -> list[int]:
    """A module-level adaptive function."""
    return values[:batch_size]


class Halver:
    """A class with an adaptive method."""

    @adaptive_batch(start=4, measure=False)
    def run(self, batch_size: int, values: list[int]) -> list[int]:
        return values[:batch_size]


def test_an_adaptive_function_pickles_and_copies_as_itself() -> None:
    """pickle, copy and deepcopy of an @adaptive_batch function give the decorated function
    (its state and options), as for @auto_clear."""
    for restored in (
        pickle.loads(pickle.dumps(halve)),
        copy.copy(halve),
        copy.deepcopy(halve),
    ):
        assert restored is halve
        assert restored([1, 2, 3, 4, 5]) == [1, 2, 3, 4]


def test_an_adaptive_method_pickles_as_its_bound_method() -> None:
    """A bound @adaptive_batch method pickles as getattr(instance, name): it runs after
    unpickling, with the one state of the function."""
    halver = Halver()
    restored = pickle.loads(pickle.dumps(halver.run))
    assert restored([1, 2, 3, 4, 5]) == [1, 2, 3, 4]
    assert restored.adaptive_state is Halver.run.adaptive_state
    for unbound in (copy.deepcopy(Halver.run), pickle.loads(pickle.dumps(Halver.run))):
        assert unbound.adaptive_state is Halver.run.adaptive_state
        assert unbound(halver, [1, 2, 3, 4, 5]) == [1, 2, 3, 4]
