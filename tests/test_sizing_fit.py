"""Issue 25: the fit over every measured size, the floor, the bisection, the probes and the
growth when the device frees up, on the pure rules and on fake cards."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings, strategies as st

from memscope.sizing import Sizing, adaptive_batch
from memscope.sizing._fit import fit_memory, with_point
from memscope.sizing._rules import after_oom, after_success, choose_attempt
from memscope.sizing._snapshot import AdaptiveBatchSnapshot, Attempt
from memscope.testing import FakeDevice, GiB, oom_error

# The fit -------------------------------------------------------------------------------------


def test_a_straight_line_is_fitted_without_curvature() -> None:
    """Points on a line through the origin: that line, no quadratic term, no spread."""
    fit = fit_memory([(10, 1000), (20, 2000), (40, 4000)])
    assert fit is not None
    assert fit.linear == pytest.approx(100.0)
    assert fit.quadratic == 0.0
    assert fit.spread == pytest.approx(0.0, abs=1e-12)
    assert fit.largest_within(8000, margin=0.0) == pytest.approx(80.0)


def test_a_curve_gets_its_quadratic_term() -> None:
    """Points on a*n + b*n**2: both terms recovered, and the size within a budget solves
    the quadratic."""
    points = [(n, 50 * n + 3 * n * n) for n in (10, 20, 30)]
    fit = fit_memory(points)
    assert fit is not None
    assert fit.linear == pytest.approx(50.0)
    assert fit.quadratic == pytest.approx(3.0)
    units = fit.largest_within(50 * 60 + 3 * 3600, margin=0.0)
    assert units == pytest.approx(60.0)


def test_the_margin_of_a_noisy_fit_is_its_spread() -> None:
    """Points 5 % off a line either way: the spread says so, and predictions keep it back."""
    fit = fit_memory([(10, 1050), (20, 1900), (30, 3150), (40, 3800)])
    assert fit is not None
    assert 0.02 < fit.spread < 0.06
    assert fit.largest_within(10_000, margin=fit.spread) < fit.largest_within(10_000, margin=0)


def test_two_sizes_that_need_the_same_memory_are_a_step() -> None:
    """A staircase (two sizes, one peak) is flagged flat; a line is not."""
    stairs = fit_memory([(9, 1600), (12, 1600), (20, 2400)])
    line = fit_memory([(9, 900), (12, 1200)])
    assert stairs is not None
    assert stairs.flat
    assert line is not None
    assert not line.flat


def test_points_far_below_the_top_are_left_out() -> None:
    """A probe at 2 measured under a staircase does not skew a fit made at 40 to 80."""
    fit = fit_memory([(2, 800), (40, 4000), (80, 8000)])
    assert fit is not None
    assert fit.linear == pytest.approx(100.0)
    assert fit.sizes == 2


def test_a_size_measured_again_keeps_its_larger_peak_and_the_latest_sizes() -> None:
    """with_point keeps the larger peak of a size, and only the latest ``keep`` sizes."""
    points = with_point(((4, 400), (8, 800)), 4, 380, keep=3)
    assert points == ((8, 800), (4, 400))
    points = with_point(points, 16, 1600, keep=2)
    assert points == ((4, 400), (16, 1600))


@settings(max_examples=100, deadline=None)
@given(
    linear=st.floats(min_value=1.0, max_value=1e6),
    quadratic=st.floats(min_value=0.0, max_value=1e4),
    sizes=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8, unique=True),
)
def test_an_exact_curve_is_never_predicted_beyond_its_budget(
    linear: float, quadratic: float, sizes: list[int]
) -> None:
    """Whatever exact curve the points lie on, within the sizes measured the size the fit
    gives for a budget needs no more than that budget and the fit's largest miss."""
    points = [(n, max(1, round(linear * n + quadratic * n * n))) for n in sizes]
    fit = fit_memory(points)
    assert fit is not None
    budget = float(max(used for _, used in points))
    units = math.floor(fit.largest_within(budget, margin=fit.spread))
    assert linear * units + quadratic * units * units <= budget * (1 + fit.worst) + 1


# The rules: floor, bisection, growth -------------------------------------------------------


def measured(points: tuple[tuple[int, int], ...], **fields: object) -> AdaptiveBatchSnapshot:
    snapshot = AdaptiveBatchSnapshot.initial(Sizing(start=128, headroom=0.0))
    return dataclasses.replace(snapshot, measured=points, **fields)  # type: ignore[arg-type]


def test_predictions_never_fall_below_the_largest_success() -> None:
    """A fit that says 40 items fit does not pull the size below 50, which worked."""
    snapshot = measured(((50, 5000),), largest_success=50)
    attempt, _ = choose_attempt(snapshot, available=4000, measurable=True)
    assert attempt.size == 50


def test_an_oom_at_the_floor_forgets_the_floor_and_the_curve() -> None:
    """When the largest success runs out of memory, the work or the device changed: the
    floor and the measurements go, and the retry is predicted afresh."""
    snapshot = measured(((50, 5000),), largest_success=50)
    attempt = Attempt(50, units=50, predicted=True, available=4000)
    retry, after = after_oom(snapshot, attempt)
    assert after.largest_success is None
    assert after.measured == ()
    assert retry is not None
    assert retry.size < 50


def test_where_the_fit_contradicts_a_failure_it_bisects() -> None:
    """The fit says 100 fit, but 100 failed: the next size is halfway between the largest
    success (60) and the failure."""
    snapshot = measured(
        ((60, 600),), largest_success=60, smallest_failed_size=100, failed_available=1000
    )
    attempt, _ = choose_attempt(snapshot, available=1000, measurable=True)
    assert attempt.size == 80


def test_after_a_wrong_prediction_the_retry_is_the_floor() -> None:
    """A predicted size that runs out of memory is retried at the largest success, which
    works unless the work changed."""
    snapshot = measured(((60, 600),), largest_success=60)
    attempt, snapshot = choose_attempt(snapshot, available=1000, measurable=True)
    retry, snapshot = after_oom(snapshot, dataclasses.replace(attempt, available=1000))
    assert retry is not None
    assert (retry.size, retry.predicted) == (60, True)
    assert snapshot.wrong_predictions == 1
    assert snapshot.smallest_failed_size == attempt.size


def test_a_failure_stops_bounding_predictions_once_the_device_frees_up() -> None:
    """A size that failed with 1000 bytes available bounds predictions at 1000 bytes, not
    at 2000: then the fit decides, and a success past it forgets it."""
    snapshot = measured(
        ((60, 600), (80, 800)), largest_success=80, smallest_failed_size=100, failed_available=1000
    )
    same, _ = choose_attempt(snapshot, available=1000, measurable=True)
    freed, after = choose_attempt(snapshot, available=2000, measurable=True)
    assert same.size < 100
    assert freed.size == 128  # start caps it: 200 would fit
    grown = after_success(after, freed, 1280)
    assert grown.smallest_failed_size is None
    assert grown.regrowths == 1


# On fake cards ------------------------------------------------------------------------------

TOTAL = 24 * GiB
WEIGHTS = GiB


def card(fake: FakeDevice, need: Callable[[int], float]) -> tuple[Callable[[int], int], list[int]]:
    """A function on ``fake`` whose batch of n needs ``need(n)`` of the free memory (1.0
    fills it); the sizes that ran out of memory are in the list."""
    ooms: list[int] = []
    fake.set_memory(allocated=WEIGHTS, reserved=WEIGHTS)

    def run(batch_size: int) -> int:
        used = need(batch_size) * (TOTAL - WEIGHTS)
        try:
            if WEIGHTS + used > TOTAL:
                fake.set_memory(allocated=TOTAL)
                ooms.append(batch_size)
                raise oom_error("cuda", tried=int(used))
            fake.set_memory(allocated=int(WEIGHTS + used))
            return batch_size
        finally:
            fake.set_memory(allocated=WEIGHTS)

    return run, ooms


@pytest.mark.parametrize("fits", [20.5, 47.3, 90.8])
def test_on_a_quadratic_card_the_search_ends_near_the_top_in_few_errors(fits: float) -> None:
    """Memory 90 % quadratic in n: at most two errors, and the last size within 5 % of the
    largest that fits, never above it."""
    largest = math.floor(fits)
    with FakeDevice("cuda", total=TOTAL) as fake:
        run, ooms = card(fake, lambda n: 0.1 * n / fits + 0.9 * (n / fits) ** 2)
        step = adaptive_batch(start=128, device="cuda")(run)
        sizes = [step() for _ in range(12)]
    assert len(ooms) <= 2
    assert 0.95 * largest <= sizes[-1] <= largest


def test_on_a_staircase_the_search_probes_up_to_the_step() -> None:
    """Memory in blocks of 8 items: probes between the largest success and the smallest
    failure find the end of the block that fits."""
    with FakeDevice("cuda", total=TOTAL) as fake:
        run, _ = card(fake, lambda n: math.ceil(n / 8) / 5.4)  # 5 blocks fit: 40 items
        step = adaptive_batch(start=128, device="cuda")(run)
        sizes = [step() for _ in range(12)]
    state = step.adaptive_state.snapshot()
    assert state.probes >= 1
    assert sizes[-1] <= 40
    assert sizes[-1] >= 36


def test_a_fit_stuck_at_the_floor_sounds_just_below_it_once() -> None:
    """One point, whose fit says the largest success is all that fits, with room up to the
    smallest failure: the next size is an eighth below (40 -> 35), which fits for sure and
    shows whether memory is flat there; measured there already, it is not sounded again."""
    snapshot = measured(
        ((40, 4000),),
        largest_success=40,
        smallest_failed_size=128,
        failed_available=4050,
        successes_in_a_row=1,
    )
    attempt, _ = choose_attempt(snapshot, available=4050, measurable=True)
    assert (attempt.size, attempt.probing_from) == (35, None)
    again = dataclasses.replace(snapshot, measured=((35, 3500), (40, 4000)))
    attempt, _ = choose_attempt(again, available=4050, measurable=True)
    assert attempt.size == 40


@pytest.mark.parametrize(
    ("points", "floor", "failed", "available", "probe"),
    [
        # 35 and 40 needed the same memory: a step at least 5 wide, so the probe tries 50
        # (40 + 2 * 5), below the bisection's 84.
        (((35, 4000), (40, 4000)), 40, 128, 4050, 50),
        # Two sizes and a curve with two terms: the curve misses neither, so it says nothing
        # of the sizes between them and the failure; the sounding below is measured already,
        # and the probe goes one step above the floor (an eighth, at least one), not to the
        # bisection's 7.
        (((2, 1000), (3, 2000)), 3, 11, 2400, 4),
    ],
    ids=["on a step: twice its known width", "an exact curve: one step"],
)
def test_a_probe_above_the_floor_goes_back_to_it_when_it_fails(
    points: tuple[tuple[int, int], ...], floor: int, failed: int, available: int, probe: int
) -> None:
    """Where the fit cannot follow the curve, the next size probes above the largest success
    (as far as the case allows), and a probe that runs out of memory goes back to it."""
    snapshot = measured(
        points,
        largest_success=floor,
        smallest_failed_size=failed,
        failed_available=available,
        successes_in_a_row=1,
    )
    attempt, after = choose_attempt(snapshot, available=available, measurable=True)
    assert (attempt.size, attempt.probing_from) == (probe, floor)
    assert after.probes == 1
    retry, _ = after_oom(after, dataclasses.replace(attempt, available=available))
    assert retry is not None
    assert retry.size == floor


def test_a_probe_that_measured_a_whole_block_does_not_lock_the_size() -> None:
    """Blocks of 8 items, one block fits (8 items) and a little more: the probe at 3
    measures the whole block; the search does not stay at 3, it reaches 8, never above."""
    with FakeDevice("cuda", total=TOTAL) as fake:
        run, ooms = card(fake, lambda n: math.ceil(n / 8) / 1.26)
        step = adaptive_batch(start=128, device="cuda")(run)
        sizes = [step() for _ in range(12)]
    assert sizes[-1] == 8
    assert all(size not in ooms for size in sizes)


def test_on_padded_batches_the_search_probes_up_to_the_power_of_two() -> None:
    """Batches padded to the next power of two, 33.5 of them fill the card: measured at
    11, 22 and 45 the points make a line (16, 32 and 64 slots), which sounding below shows to
    be a step; the search ends at 32, the largest that fits."""
    with FakeDevice("cuda", total=TOTAL) as fake:
        run, ooms = card(fake, lambda n: (1 << max(n - 1, 0).bit_length()) / 33.48)
        step = adaptive_batch(start=128, device="cuda")(run)
        sizes = [step() for _ in range(12)]
    assert sizes[-1] == 32
    assert max(sizes) <= 32
    assert len(ooms) <= 4


def test_on_padded_batches_a_small_card_reaches_the_power_of_two() -> None:
    """Padded to powers of two, 4 items fit and 5 do not (padded to 8): the points at 2 and
    3 (2 and 4 slots) bend like a quadratic card's, and the probe above 3 finds 4."""
    with FakeDevice("cuda", total=TOTAL) as fake:
        run, ooms = card(fake, lambda n: (1 << max(n - 1, 0).bit_length()) / 4.5)
        step = adaptive_batch(start=128, device="cuda")(run)
        sizes = [step() for _ in range(12)]
    assert sizes[-1] == 4
    assert 4 not in ooms
