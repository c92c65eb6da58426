"""What a size search learns: one frozen snapshot, replaced whole; rules that always shrink a
failed size, never leave [min_size, start], and always end."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from hypothesis import given, settings, strategies as st

from memscope import InvalidArgumentError, InvalidArgumentTypeError, adaptive_batch
from memscope.oom import AdaptiveBatchSnapshot, AdaptiveBatchState
from memscope.sizing import Sizing
from memscope.sizing._rules import after_oom, after_success, choose_attempt
from memscope.sizing._snapshot import Attempt, CountedWork
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
    # No reset() in between: an attempt chosen before a reset and failing after it reduces
    # the fresh state (rightly), which this invariant does not allow for. Once at min_size,
    # errors change only the counters.
    state = AdaptiveBatchState(start=1 << 52)
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
def sizing_settings(draw: st.DrawFn) -> Sizing:
    """Any settings adaptive_batch accepts, within a range small enough to walk."""
    start = draw(st.integers(min_value=1, max_value=256))
    return Sizing(
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
def test_every_call_ends_and_sizes_stay_in_bounds(rules: Sizing, capacities: list[int]) -> None:
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
            assert retry.size < attempt.size
            assert snapshot.current_size < attempt.size
            attempt = retry
        else:
            pytest.fail(f"a call made more than start={rules.start} attempts")
        assert rules.min_size <= snapshot.current_size <= rules.start
    assert snapshot.successes + snapshot.oom_count == attempts_made
    assert len(set(snapshot.sizes_tried)) == len(snapshot.sizes_tried)


@settings(max_examples=200, deadline=None)
@given(rules=sizing_settings(), successes=st.integers(0, 10), limit=st.integers(1, 300))
def test_an_attempt_never_exceeds_the_items_left(rules: Sizing, successes: int, limit: int) -> None:
    """For chunks, an attempt is never longer than the items left, and a capped attempt is
    never a regrowth (a short tail proves nothing about a larger size)."""
    snapshot = dataclasses.replace(
        AdaptiveBatchSnapshot.initial(rules),
        current_size=rules.min_size,
        successes_in_a_row=successes,
    )
    attempt, _ = choose_attempt(snapshot, CountedWork(limit))
    uncapped, _ = choose_attempt(snapshot)
    assert attempt.size <= limit
    if uncapped.size > limit:
        assert attempt == Attempt(min(snapshot.current_size, limit), units=attempt.size)
    else:
        assert attempt == uncapped


# The rules from measurement ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rules=sizing_settings(),
    headroom=st.sampled_from([0.0, 0.03, 0.2]),
    available=st.integers(min_value=1, max_value=10**6),
    per_item=st.floats(min_value=1.0, max_value=10**5),
    exponent=st.floats(min_value=1.0, max_value=1.5),
    fixed=st.integers(min_value=0, max_value=10**5),
    calls=st.integers(min_value=1, max_value=12),
)
def test_measured_sizes_stay_in_bounds_and_below_failures(
    rules: Sizing,
    headroom: float,
    available: int,
    per_item: float,
    exponent: float,
    fixed: int,
    calls: int,
) -> None:
    """Whatever the memory (linear or not, with a fixed part): each call ends within start
    attempts; sizes stay within [min_size, start]; no size at or above one that failed is
    tried (without regrowth); a retry is always smaller; only min_size failing ends a call
    without a result."""
    rules = dataclasses.replace(rules, headroom=headroom, regrow_after=None)
    snapshot = AdaptiveBatchSnapshot.initial(rules)

    def needs(size: int) -> int:
        return fixed + int(per_item * size**exponent)

    for _ in range(calls):
        attempt, snapshot = choose_attempt(snapshot, available=available, measurable=True)
        for _ in range(rules.start + 1):
            assert rules.min_size <= attempt.size <= rules.start
            failed_before = snapshot.smallest_failed_size
            if failed_before is not None and attempt.size > rules.min_size:
                assert attempt.size < failed_before
            if needs(attempt.size) <= available:
                snapshot = after_success(snapshot, attempt, needs(attempt.size))
                break
            retry, snapshot = after_oom(snapshot, attempt)
            if retry is None:
                assert attempt.size == rules.min_size
                break
            assert retry.size < attempt.size
            attempt = dataclasses.replace(retry, available=available, measurable=True)
        else:
            pytest.fail(f"a call made more than start={rules.start} attempts")


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(min_value=1, max_value=500),
    available=st.integers(min_value=10**3, max_value=10**9),
    per_item=st.integers(min_value=1, max_value=10**7),
    headroom=st.sampled_from([0.001, 0.03, 0.1]),
)
def test_on_linear_memory_a_measured_prediction_is_never_wrong(
    start: int, available: int, per_item: int, headroom: float
) -> None:
    """Where memory is exactly linear and measured exactly, a positive headroom makes every
    predicted size fit, and the prediction is the largest size within the margin."""
    rules = Sizing(start=start, factor=0.5, min_size=1, regrow_after=None)
    snapshot = AdaptiveBatchSnapshot.initial(dataclasses.replace(rules, headroom=headroom))
    fits = available // per_item
    for _ in range(6):
        attempt, snapshot = choose_attempt(snapshot, available=available, measurable=True)
        while attempt.size > fits:
            retry, snapshot = after_oom(snapshot, attempt)
            if retry is None:
                return  # not even one item fits
            attempt = dataclasses.replace(retry, available=available, measurable=True)
        snapshot = after_success(snapshot, attempt, attempt.size * per_item)
    assert snapshot.wrong_predictions == 0
    expected = max(1, min(start, int(available * (1 - headroom) // per_item)))
    if snapshot.smallest_failed_size is not None:
        expected = min(expected, snapshot.smallest_failed_size - 1)
    # The largest success is a floor, even where it is inside the headroom.
    assert snapshot.largest_success is not None
    expected = max(expected, snapshot.largest_success)
    assert snapshot.predicted_size in (expected, expected - 1)  # float rounding at the edge
    assert snapshot.predicted_size is not None
    assert snapshot.predicted_size * per_item <= available


def test_a_wrong_prediction_sets_the_floor_it_proves() -> None:
    """An OOM at predicted size s with A bytes available proves an item needs more than A/s:
    the floor; and the retry assumes 10 % more than what is known."""
    snapshot = dataclasses.replace(
        AdaptiveBatchSnapshot.initial(Sizing(100, 0.5, 1, None, headroom=0.0)),
        memory_per_item=10.0,
    )
    attempt, snapshot = choose_attempt(snapshot, available=1000, measurable=True)
    assert (attempt.size, attempt.predicted) == (100, True)
    retry, snapshot = after_oom(snapshot, attempt)
    assert snapshot.memory_per_item_floor == 10.0
    assert snapshot.wrong_predictions == 1
    # 1000 bytes / (10 bytes * 1.1) = 90.9 -> 90.
    assert retry is not None
    assert retry.size == 90
    assert retry.predicted
    snapshot = after_success(snapshot, replace_available(retry, 1000), 90 * 10)
    assert snapshot.wrong_predictions_in_a_row == 0
    attempt, snapshot = choose_attempt(snapshot, available=1000, measurable=True)
    # The fit (10 bytes an item) says the failed 100 fits: it is wrong up there, and the
    # search bisects between the largest success and the failure.
    assert attempt.size == 95


def test_the_probe_is_halfway_on_a_log_scale() -> None:
    """After an OOM with nothing learned on a measurable device, the retry is a probe at
    isqrt(min_size * failed size)."""
    snapshot = AdaptiveBatchSnapshot.initial(Sizing(128, 0.5, 2, None))
    attempt, snapshot = choose_attempt(snapshot, available=10**9, measurable=True)
    retry, snapshot = after_oom(snapshot, attempt)
    assert retry is not None
    assert (retry.size, retry.probe) == (16, True)  # isqrt(2 * 128)
    unmeasured, _ = after_oom(
        AdaptiveBatchSnapshot.initial(Sizing(128, 0.5, 2, None)), Attempt(128)
    )
    assert unmeasured is not None
    assert (unmeasured.size, unmeasured.probe) == (64, False)


def replace_available(attempt: Attempt, available: int) -> Attempt:
    """``attempt`` as the search stamps it before calling: with the figures read then."""
    return dataclasses.replace(attempt, available=available, measurable=True)
