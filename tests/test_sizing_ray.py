"""memscope.ray.managed takes the chunks' sizing as one Sizing value, checked when made, and
each actor's sizing state is made from it."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.ray import ReportCollector, managed
from memscope.ray._actor import ActorSettings, chunk_sizing
from memscope.sizing import Sizing


def actor_settings(sizing: Sizing) -> ActorSettings:
    """Checked actor settings with ``sizing`` and the other options' defaults."""
    return ActorSettings.checked(
        device="cpu",
        every=1,
        cache_policy=None,
        memory_threshold=0.9,
        freeze_heap=False,
        sizing=sizing,
    )


def test_the_separate_chunk_options_make_one_sizing() -> None:
    """chunk_size is the sizing's start; factor, min_size and regrow_after go as they are."""
    assert chunk_sizing(64, 0.25, 2, 3) == Sizing(start=64, factor=0.25, min_size=2, regrow_after=3)
    assert chunk_sizing(None, 0.5, 1, None) == Sizing()


def test_each_actor_state_is_made_from_the_one_sizing() -> None:
    """The state has the sizing as given, headroom and measure included; without a start,
    the state starts past any batch (each batch whole until memory runs out)."""
    sizing = Sizing(start=16, factor=0.25, min_size=2, headroom=0.1, measure=False)
    assert actor_settings(sizing).new_state().sizing == sizing
    whole = actor_settings(Sizing(headroom=0.2)).new_state()
    assert whole.sizing.start == 2**31 - 1
    assert whole.sizing.headroom == 0.2


def test_sizing_with_a_separate_option_or_a_wrong_type_is_refused() -> None:
    """sizing= with chunk_size= is refused naming both; a sizing that is not a Sizing is a
    type error."""
    collector = ReportCollector.__new__(ReportCollector)

    def udf(batch: dict[str, object]) -> dict[str, object]:
        return batch

    with pytest.raises(InvalidArgumentError, match="pass sizing= or chunk_size=, not both"):
        managed(udf, collector=collector, chunk_size=8, sizing=Sizing(start=4))
    with pytest.raises(InvalidArgumentTypeError, match=r"sizing must be a memscope\.sizing"):
        actor_settings({"start": 4})  # type: ignore[arg-type]


def test_the_separate_chunk_options_default_to_a_sizings_fields() -> None:
    """managed()'s chunk_size, factor, min_size and regrow_after default to what Sizing()
    holds (chunk_size is its start), which is how sizing= tells them unset."""
    import inspect

    parameters = inspect.signature(managed).parameters
    defaults = Sizing()
    for option, field in (
        ("chunk_size", "start"),
        ("factor", "factor"),
        ("min_size", "min_size"),
        ("regrow_after", "regrow_after"),
    ):
        assert parameters[option].default == getattr(defaults, field), option
