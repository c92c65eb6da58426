"""memscope.ray.managed takes the chunks' sizing as one Sizing value, checked when made."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.ray._wrap import _sizing_options
from memscope.sizing import Sizing


def test_a_sizing_value_gives_the_actor_its_chunk_options() -> None:
    """start is the largest chunk; factor, min_size and regrow_after go as they are."""
    sizing = Sizing(start=64, factor=0.25, min_size=2, regrow_after=3)
    assert _sizing_options(sizing, None, 0.5, 1, None) == (64, 0.25, 2, 3)
    assert _sizing_options(Sizing(), None, 0.5, 1, None) == (None, 0.5, 1, None)


def test_sizing_with_a_separate_option_or_one_the_actor_cannot_apply_is_refused() -> None:
    """sizing= with chunk_size= is refused naming both; so is a headroom the actor would
    otherwise ignore, and a sizing that is not a Sizing."""
    with pytest.raises(InvalidArgumentError, match="pass sizing= or chunk_size=, not both"):
        _sizing_options(Sizing(start=4), 8, 0.5, 1, None)
    with pytest.raises(InvalidArgumentError, match=r"cannot apply sizing\.headroom"):
        _sizing_options(Sizing(headroom=0.1), None, 0.5, 1, None)
    with pytest.raises(InvalidArgumentTypeError, match=r"sizing must be a memscope\.sizing"):
        _sizing_options({"start": 4}, None, 0.5, 1, None)
