"""What a size search learns: one frozen snapshot, replaced whole; rules that always shrink a
failed size, never leave [min_size, start], and always end."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memscope import InvalidArgumentError, InvalidArgumentTypeError, adaptive_batch
from memscope.oom import AdaptiveBatchSnapshot, AdaptiveBatchState
from memscope.oom._options import SizingSettings
from memscope.oom._state import Attempt, after_oom, after_success, choose_attempt
from memscope.testing import MiB, RecordingManager, oom_error

PUBLIC_ATTRIBUTES = (
    "start",
    "factor",
    "min_size",
    "regrow_after",
    "current_size",
    "sizes_tried",
    "successes",
    "oom_count",
    "reductions",
    "regrowths",
    "failed_regrowths",
)


def shrinking_function(fits: int, start: int = 16) -> AdaptiveBatchState:
    """The state of an adaptive function that ran once, where only ``fits`` items fit."""

    @adaptive_batch(start=start, manager=RecordingManager())
    def step(batch_size: int) -> int:
        if batch_size > fits:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    step()
    return step.adaptive_state


# The snapshot -------------------------------------------------------------------------------


def test_attributes_read_the_current_snapshot() -> None:
    """Every public attribute of the state is the same field of its current snapshot."""
    state = shrinking_function(fits=3)
    snapshot = state.snapshot()
    for name in PUBLIC_ATTRIBUTES:
        assert getattr(state, name) == getattr(snapshot, name), name
    assert (snapshot.current_size, snapshot.sizes_tried, snapshot.reductions) == (
        2,
        (16, 8, 4, 2),
        3,
    )


def test_a_snapshot_never_changes_after_it_is_taken() -> None:
    """Updates replace the snapshot; one taken earlier still shows the figures of its moment."""

    @adaptive_batch(start=8, manager=RecordingManager())
    def step(batch_size: int) -> int:
        if batch_size > 2:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    before = step.adaptive_state.snapshot()
    step()
    after = step.adaptive_state.snapshot()
    assert (before.current_size, before.oom_count, before.successes) == (8, 0, 0)
    assert (after.current_size, after.oom_count, after.successes) == (2, 2, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.current_size = 8  # type: ignore[misc]


def test_state_attributes_are_read_only() -> None:
    """What was learned cannot be overwritten through the state's attributes."""
    state = AdaptiveBatchState(start=8)
    with pytest.raises(AttributeError):
        state.current_size = 2  # type: ignore[misc]
    assert state.current_size == 8


def test_reset_brings_back_the_first_snapshot() -> None:
    """reset() forgets everything: the snapshot equals a fresh state's."""
    state = shrinking_function(fits=1)
    state.reset()
    assert state.snapshot() == AdaptiveBatchState(start=16).snapshot()


def test_repr_shows_the_learned_size() -> None:
    """The repr names the current size and the counters a user looks for first."""
    assert repr(shrinking_function(fits=4)) == (
        "AdaptiveBatchState(current_size=4, start=16, min_size=1, oom_count=2, "
        "reductions=2, regrowths=0)"
    )


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"start": 0}, InvalidArgumentError),
        ({"start": 4, "min_size": 5}, InvalidArgumentError),
        ({"start": 4, "factor": 1.0}, InvalidArgumentError),
        ({"start": 4, "regrow_after": True}, InvalidArgumentTypeError),
    ],
)
def test_a_state_made_by_hand_checks_its_settings(
    options: dict[str, object], error: type[Exception]
) -> None:
    """AdaptiveBatchState refuses the settings adaptive_batch refuses, with the same errors."""
    with pytest.raises(error):
        AdaptiveBatchState(**options)  # type: ignore[arg-type]


def test_concurrent_readers_always_see_figures_that_belong_together() -> None:
    """While threads shrink the size, every snapshot read is one moment's: its size is
    ``start`` halved once per reduction."""
    state = AdaptiveBatchState(start=1 << 20)
    stop = threading.Event()
    torn: list[AdaptiveBatchSnapshot] = []
    reads = 0

    started = threading.Barrier(5)

    def read() -> None:
        nonlocal reads
        started.wait()
        while True:
            snapshot = state.snapshot()
            reads += 1
            if snapshot.current_size != snapshot.start >> snapshot.reductions:
                torn.append(snapshot)
            if stop.is_set():
                return

    def shrink() -> None:
        started.wait()
        for _ in range(200):
            state._record_oom(state._choose())
            if state.current_size == 1:
                state.reset()

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=shrink) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()
    assert torn == []
    assert reads > 0


# The rules ------------------------------------------------------------------------------------


@st.composite
def sizing_settings(draw: st.DrawFn) -> SizingSettings:
    """Any settings adaptive_batch accepts, within a range small enough to walk."""
    start = draw(st.integers(min_value=1, max_value=256))
    return SizingSettings(
        start=start,
        factor=draw(st.floats(min_value=0.05, max_value=0.95)),
        min_size=draw(st.integers(min_value=1, max_value=start)),
        regrow_after=draw(st.none() | st.integers(min_value=1, max_value=4)),
    )


@settings(max_examples=200, deadline=None)
@given(
    rules=sizing_settings(),
    capacities=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=30),
)
def test_every_call_ends_and_sizes_stay_in_bounds(
    rules: SizingSettings, capacities: list[int]
) -> None:
    """Whatever memory does, each call ends (success or exhausted) within ``start``
    attempts; sizes stay within [min_size, start]; a size that failed is never the size kept;
    and the counters add up to the attempts made."""
    snapshot = AdaptiveBatchSnapshot.initial(rules)
    attempts_made = 0
    for capacity in capacities:
        attempt, snapshot = choose_attempt(snapshot)
        for _ in range(rules.start + 1):
            attempts_made += 1
            assert rules.min_size <= attempt.size <= rules.start
            assert attempt.size in snapshot.sizes_tried
            if attempt.size <= capacity:
                snapshot = after_success(snapshot, attempt)
                break
            retry, snapshot = after_oom(snapshot, attempt)
            if retry is None:
                # Only the smallest allowed size failing ends a call without a result.
                assert attempt.regrowing_from is None
                assert attempt.size == rules.min_size
                break
            assert retry < attempt.size
            assert snapshot.current_size < attempt.size
            attempt = Attempt(retry)
        else:
            pytest.fail(f"a call made more than start={rules.start} attempts")
        assert rules.min_size <= snapshot.current_size <= rules.start
    assert snapshot.successes + snapshot.oom_count == attempts_made
    assert len(set(snapshot.sizes_tried)) == len(snapshot.sizes_tried)


@settings(max_examples=200, deadline=None)
@given(rules=sizing_settings(), successes=st.integers(0, 10), limit=st.integers(1, 300))
def test_an_attempt_never_exceeds_the_items_left(
    rules: SizingSettings, successes: int, limit: int
) -> None:
    """For chunks, an attempt is never longer than the items left, and a capped attempt is
    never a regrowth (a short tail proves nothing about a larger size)."""
    snapshot = dataclasses.replace(
        AdaptiveBatchSnapshot.initial(rules),
        current_size=rules.min_size,
        successes_in_a_row=successes,
    )
    attempt, _ = choose_attempt(snapshot, limit)
    uncapped, _ = choose_attempt(snapshot)
    assert attempt.size <= limit
    if uncapped.size > limit:
        assert attempt == Attempt(min(snapshot.current_size, limit))
    else:
        assert attempt == uncapped
