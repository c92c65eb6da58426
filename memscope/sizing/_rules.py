"""The sizing rules: pure functions from a snapshot to the next one.

The search's rules are pure functions from a snapshot (and the attempt just made, and what
the device said before it) to the next snapshot: which size to try, what a success teaches,
what an out-of-memory error teaches. :class:`AdaptiveBatchState` holds the current snapshot
and swaps in the next one under its lock, so concurrent calls never lose an update, and a
reader (who needs no lock: reading one reference is atomic) always sees figures that belong
together.

Two ways to choose a size, by what is known:

* **From measurement.** Once a success has shown how much memory each unit of work adds
  (``memory_per_item``), and the device says how much is available, the next size is the
  largest whose predicted memory fits in the available memory less ``headroom``: never above
  ``start``, never at or above a size that ran out of memory. A prediction that runs out of
  memory anyway is a wrong prediction. It proves that an item needs more than the available
  memory over the failed size, a floor under the memory per item that later predictions
  respect (``memory_per_item_floor``); the retry is predicted again, with the memory per item
  raised a little more for each wrong prediction in a row, so that a large miss is closed in
  a few steps.
  Before anything is learned, an out-of-memory error on a device whose peaks can be measured
  is followed by a probe: a small size (halfway between ``min_size`` and the failed size on
  a log scale), to measure. Where memory rises in steps (blocks, padding), a sounding just
  below the largest success shows a step, and probes climb it (:func:`_probe_above`).
* **By factor**, where nothing can be measured: after an out-of-memory error, ``size *
  factor``; after ``regrow_after`` successes, ``size / factor``.

What a "unit" is belongs to the search (:class:`Work`): one item for ``@adaptive_batch`` and
chunks counted in items, one estimated byte for chunks sized by a memory model.
"""

import math
from dataclasses import replace

from memscope.sizing._fit import FLAT, fit_memory, with_point
from memscope.sizing._snapshot import (
    UNLIMITED,
    AdaptiveBatchSnapshot,
    Attempt,
    Work,
)

__all__: list[str] = []

WRONG_PREDICTION_STEP = 0.1
"""During a run of wrong predictions, predictions assume this much more memory per unit than
is known, doubling with each one in a row: 10 %, 30 %, 70 %, 150 %, ... more. A small miss
costs little, and a large one is closed in a few steps. The first prediction that works ends
the run."""


EXTRAPOLATION = 3.0
"""Predictions from a fit go at most about this many times past the largest size measured in
one step (further ones step to the geometric mean): a curve known over a short range may
bend beyond it. Work with a memory model has its shape from the model and steps at once."""

FREED_UP = 0.05
"""The device has freed up when this share more memory is available than when the smallest
failed size failed: that failure no longer bounds the predictions."""

PROBE_WORST = 0.08
"""A fit that misses one of its points by more than this cannot follow the curve (steps,
padding): the search then probes between the largest success and the smallest failure."""

SOUNDING = 8
"""A sounding goes this share (one eighth) of the largest success below it, one unit at
least."""

KEPT_MEASUREMENTS = 12
"""Sizes whose measurements are kept for the fit."""


# The rules: pure functions of a snapshot. --------------------------------------------------


def _shrunk(snapshot: AdaptiveBatchSnapshot, size: int) -> int | None:
    """The size after ``size`` ran out of memory: always smaller, never below min_size."""
    if size <= snapshot.min_size:
        return None
    return max(snapshot.min_size, min(int(size * snapshot.factor), size - 1))


def _grown(snapshot: AdaptiveBatchSnapshot, size: int) -> int:
    return min(snapshot.start, max(size + 1, int(size / snapshot.factor)))


def _successes_needed_to_grow_to(snapshot: AdaptiveBatchSnapshot, size: int) -> int:
    assert snapshot.regrow_after is not None
    # Each failed attempt to grow to a size doubles the wait before the next one.
    return snapshot.regrow_after << snapshot.failed_regrowth_sizes.count(size)


def _successes_needed_to_pass_a_failure(snapshot: AdaptiveBatchSnapshot) -> int:
    assert snapshot.regrow_after is not None
    # Predicted sizes vary with the memory available, so the wait doubles with every failed
    # regrowth, whatever its size.
    return snapshot.regrow_after << min(snapshot.failed_regrowths, 32)


def _with_tried(snapshot: AdaptiveBatchSnapshot, size: int) -> AdaptiveBatchSnapshot:
    if size in snapshot.sizes_tried:
        return snapshot
    return replace(snapshot, sizes_tried=(*snapshot.sizes_tried, size))


def _memory_per_unit(snapshot: AdaptiveBatchSnapshot, work: Work) -> float | None:
    """Bytes per unit to predict with: the measured figure (else the work's prior), never
    below the floor the wrong predictions proved, raised during a run of them."""
    measured = snapshot.memory_per_item
    if measured is None:
        measured = work.prior_memory_per_unit
    known = [
        value
        for value in (measured, snapshot.memory_per_item_floor)
        if value is not None and value > 0
    ]
    if not known:
        return None
    in_a_row = min(snapshot.wrong_predictions_in_a_row, 32)
    return max(known) * (1.0 + WRONG_PREDICTION_STEP * ((1 << in_a_row) - 1))


def _ceiling(snapshot: AdaptiveBatchSnapshot, available: int | None) -> int | None:
    """The smallest failed units, while they bound what fits: until the device has clearly
    more memory available than when they failed."""
    ceiling = snapshot.smallest_failed_size
    if ceiling is None or snapshot.failed_available is None or available is None:
        return ceiling
    if available > snapshot.failed_available * (1.0 + FREED_UP):
        return None
    return ceiling


def _fitted_units(
    snapshot: AdaptiveBatchSnapshot, work: Work, available: int, ceiling: int | None
) -> float | None:
    """The units the fit over every measurement says fit in ``available`` (less headroom,
    less the fit's own spread), never below the largest success; ``None`` when nothing was
    measured."""
    fit = fit_memory(snapshot.measured)
    if fit is None:
        return None
    budget = available * (1.0 - snapshot.headroom)
    units = fit.largest_within(budget, margin=fit.spread)
    floor = snapshot.largest_success
    if ceiling is not None and units >= ceiling:
        # The fit says a size that ran out of memory fits: it is wrong up there. Bisect
        # between what worked and what did not.
        if floor is not None:
            units = (floor + ceiling) / 2
        else:
            units = math.sqrt(max(work.units_of(snapshot.min_size), 1) * ceiling)
    if work.prior_memory_per_unit is None and units > fit.top * EXTRAPOLATION:
        # Far past what was measured the curve may bend: a step to the geometric mean
        # measures on the way (and a quadratic term shows up before it costs an error).
        units = math.sqrt(fit.top * units)
    if floor is not None:
        units = max(units, floor)
    return units


def _prediction(
    snapshot: AdaptiveBatchSnapshot, work: Work, available: int | None, *, below_failure: bool
) -> tuple[Attempt, int] | None:
    """The predicted attempt and its size before the items left capped it; ``None`` when
    nothing can be predicted. With ``below_failure``, it stays below the smallest size that
    failed (while that still bounds what fits)."""
    if available is None:
        return None
    ceiling = _ceiling(snapshot, available)
    units = _fitted_units(snapshot, work, available, ceiling)
    if units is None:
        per_unit = _memory_per_unit(snapshot, work)
        if per_unit is None:
            return None
        units = available * (1.0 - snapshot.headroom) / per_unit
    if below_failure and ceiling is not None:
        units = min(units, ceiling - 1)
    size = max(snapshot.min_size, min(work.largest_within(units), snapshot.start))
    capped = size if work.limit is None else max(min(size, work.limit), 1)
    attempt = Attempt(capped, units=work.units_of(capped), predicted=True, available=available)
    return attempt, size


def _step_start(points: tuple[tuple[int, int], ...], floor: int) -> int | None:
    """The smallest measured units whose peak equals the floor's (a step of a staircase
    reaching down there); ``None`` when no other size measured the same."""
    level = next((used for units, used in points if units == floor), None)
    if level is None:
        return None
    same = [units for units, used in points if units < floor and abs(used - level) <= FLAT * level]
    return min(same, default=None)


def _probe_above(
    snapshot: AdaptiveBatchSnapshot, work: Work, available: int, attempt: Attempt
) -> Attempt | None:
    """A probe between the largest success and the smallest failure, when the fit cannot
    follow the curve and would stay put; ``None`` when no probe is due."""
    floor, ceiling = snapshot.largest_success, _ceiling(snapshot, available)
    if floor is None or ceiling is None or ceiling - floor < 2:
        return None
    fit = fit_memory(snapshot.measured)
    if fit is None:
        return None
    step_start = _step_start(snapshot.measured, floor)
    if attempt.work_units > floor and step_start is None:
        return None
    if step_start is None and not fit.flat and fit.worst <= PROBE_WORST:
        # Points on a line may all sit on steps (padded batches measured at 11, 22 and 45
        # need 16, 32 and 64 items' memory: a line): only a size just below shows it.
        sounding = _sounding(snapshot, work, floor, attempt)
        if sounding is not None or not fit.exact:
            return sounding
    # Each probe that ran out of memory adds one success to the wait before the next: the
    # bisection closes in a few probes, and a curve that keeps failing them waits longer.
    if snapshot.successes_in_a_row < 1 + snapshot.failed_probes:
        return None
    if step_start is not None:
        # On a step of a staircase: memory is the same from its start to the floor, so the
        # step goes on at least as far again, as far as we know; twice that width, at most.
        reach = float(floor + max(1, 2 * (floor - step_start)))
    elif fit.exact:
        # The curve guides nothing: one step above the largest success, the sounding's
        # below it, which costs one error at most.
        reach = float(floor + _sounding_step(floor))
    else:
        # Bisection, guided by the fit: no further than the curve could go if every miss
        # of the fit were in our favour.
        reach = fit.largest_within(available, margin=-fit.worst)
    size = work.largest_within(min((floor + ceiling) // 2, math.floor(reach)))
    if work.limit is not None:
        size = min(size, work.limit)
    if work.units_of(size) <= floor or size <= attempt.size:
        return None
    return replace(
        attempt,
        size=size,
        units=work.units_of(size),
        probing_from=attempt.size,
    )


def _sounding_step(floor: int) -> int:
    """How far a sounding goes below the largest success (a probe on an exact curve, above
    it): an eighth of it, one unit at least."""
    return max(1, floor // SOUNDING)


def _sounding(
    snapshot: AdaptiveBatchSnapshot, work: Work, floor: int, attempt: Attempt
) -> Attempt | None:
    """Once the fit stays at the largest success with room up to the smallest failure: an
    attempt a little below it, which fits for sure, to see whether memory is flat there
    (a step of blocks or padding, which one measurement cannot show); ``None`` when a size
    near below is measured already."""
    if work.limit is not None or snapshot.successes_in_a_row < 1:
        # Chunks move on through their items: a chunk an eighth shorter measures other
        # items, not the same work at a smaller size.
        return None
    lower = floor - _sounding_step(floor)
    if lower < work.units_of(snapshot.min_size) or any(
        lower <= units < floor for units, _ in snapshot.measured
    ):
        return None
    size = work.largest_within(lower)
    if size < snapshot.min_size or size >= attempt.size:
        return None
    return replace(attempt, size=size, units=work.units_of(size))


def choose_attempt(
    snapshot: AdaptiveBatchSnapshot,
    work: Work = UNLIMITED,
    available: int | None = None,
    measurable: bool = False,
) -> tuple[Attempt, AdaptiveBatchSnapshot]:
    """The next attempt, and the snapshot that records it.

    ``work`` says what is left (for chunks, the items left cap the size); ``available`` is
    what the device had available just before (``None``: unknown), and ``measurable`` whether
    the attempt's peak will be measured.
    """
    predicted = _prediction(snapshot, work, available, below_failure=True)
    if predicted is not None:
        attempt, size = predicted
        ceiling = snapshot.smallest_failed_size
        if (
            snapshot.regrow_after is not None
            and ceiling is not None
            and snapshot.successes_in_a_row >= _successes_needed_to_pass_a_failure(snapshot)
        ):
            beyond = _prediction(snapshot, work, available, below_failure=False)
            assert beyond is not None
            if beyond[0].work_units >= ceiling and beyond[0].size > attempt.size:
                attempt = replace(beyond[0], regrowing_from=attempt.size)
        if attempt.regrowing_from is None:
            assert available is not None
            attempt = _probe_above(snapshot, work, available, attempt) or attempt
        attempt = replace(attempt, measurable=measurable)
        chosen = replace(
            snapshot,
            current_size=size,
            predicted_size=attempt.size,
            predictions=snapshot.predictions + 1,
            probes=snapshot.probes + (attempt.probing_from is not None),
        )
        return attempt, _with_tried(chosen, attempt.size)
    current = snapshot.current_size
    size, regrowing_from = current, None
    if snapshot.regrow_after is not None and current < snapshot.start:
        grown = _grown(snapshot, current)
        if snapshot.successes_in_a_row >= _successes_needed_to_grow_to(snapshot, grown):
            size, regrowing_from = grown, current
    if work.limit is not None and size > work.limit:
        # A short tail proves nothing about a larger size, so it is never a regrowth.
        size, regrowing_from = min(current, work.limit), None
    attempt = Attempt(
        size,
        regrowing_from=regrowing_from,
        units=work.units_of(size),
        available=available,
        measurable=measurable,
    )
    return attempt, _with_tried(snapshot, attempt.size)


def after_success(
    snapshot: AdaptiveBatchSnapshot, attempt: Attempt, used: int | None = None
) -> AdaptiveBatchSnapshot:
    """What ``attempt`` completing teaches; ``used`` is how far its peak rose above the memory
    in use before it (``None``: not measured)."""
    units = attempt.work_units
    floor = snapshot.largest_success
    learned = replace(snapshot, largest_success=units if floor is None else max(floor, units))
    if used is not None and used > 0 and units > 0:
        learned = replace(
            learned,
            memory_per_item=used / units,
            measurements=snapshot.measurements + 1,
            measured=with_point(snapshot.measured, units, used, keep=KEPT_MEASUREMENTS),
        )
    successes = snapshot.successes + 1
    if attempt.predicted:
        learned = replace(
            learned,
            successes=successes,
            successes_in_a_row=snapshot.successes_in_a_row + 1,
            wrong_predictions_in_a_row=0,
        )
        ceiling = snapshot.smallest_failed_size
        if attempt.regrowing_from is None and ceiling is not None and units >= ceiling:
            # Past the smallest size that failed (the device freed up), and it worked.
            return replace(
                learned,
                smallest_failed_size=None,
                failed_available=None,
                regrowths=snapshot.regrowths + 1,
            )
        if attempt.regrowing_from is None:
            return learned
        # Past the smallest size that failed, and it worked: memory was freed meanwhile.
        return replace(
            learned,
            current_size=attempt.size,
            smallest_failed_size=None,
            regrowths=snapshot.regrowths + 1,
            successes_in_a_row=1,
        )
    if attempt.regrowing_from is not None:
        if snapshot.current_size != attempt.regrowing_from:
            # Another call changed the size meanwhile; its news is fresher.
            return replace(learned, successes=successes)
        return replace(
            learned,
            successes=successes,
            current_size=attempt.size,
            regrowths=snapshot.regrowths + 1,
            successes_in_a_row=1,
        )
    if attempt.size == snapshot.current_size:
        return replace(
            learned, successes=successes, successes_in_a_row=snapshot.successes_in_a_row + 1
        )
    return replace(learned, successes=successes)


def _probe_size(snapshot: AdaptiveBatchSnapshot, failed: int) -> int:
    """A small size to measure at after ``failed`` ran out of memory with nothing learned:
    halfway between ``min_size`` and ``failed`` on a log scale, so a probe that fails too is
    followed by a smaller one and a few probes reach any size."""
    probe = math.isqrt(snapshot.min_size * failed)
    return max(snapshot.min_size, min(probe, failed - 1))


def _corrected(snapshot: AdaptiveBatchSnapshot, attempt: Attempt) -> AdaptiveBatchSnapshot:
    """The snapshot after the predicted ``attempt`` ran out of memory: a wrong prediction."""
    floor = snapshot.memory_per_item_floor
    units = attempt.work_units
    if attempt.available is not None and units > 0:
        # The attempt did not fit in what was available: each unit needs more than this.
        proved = attempt.available / units
        floor = proved if floor is None else max(floor, proved)
    return replace(
        snapshot,
        wrong_predictions=snapshot.wrong_predictions + 1,
        wrong_predictions_in_a_row=snapshot.wrong_predictions_in_a_row + 1,
        memory_per_item_floor=floor,
    )


def after_oom(
    snapshot: AdaptiveBatchSnapshot, attempt: Attempt, work: Work = UNLIMITED
) -> tuple[Attempt | None, AdaptiveBatchSnapshot]:
    """The attempt to retry with after ``attempt`` ran out of memory (``None``: no smaller
    size is allowed), and the snapshot that records the error. ``work`` is what is left
    (the failed attempt's work, for the same chunk retried)."""
    failed_units = attempt.work_units
    ceiling = _ceiling(snapshot, attempt.available)
    floor = snapshot.largest_success
    lowered = ceiling is None or failed_units <= ceiling
    failed = replace(
        snapshot,
        oom_count=snapshot.oom_count + 1,
        successes_in_a_row=0,
        smallest_failed_size=failed_units if lowered else ceiling,
        failed_available=attempt.available if lowered else snapshot.failed_available,
    )
    if floor is not None and failed_units <= floor:
        # What fitted no longer does: the work needs more memory now, or the device has
        # less. Neither the floor nor the curve measured before can be trusted.
        failed = replace(failed, largest_success=None, measured=())
    if attempt.probing_from is not None:
        failed = replace(failed, failed_probes=failed.failed_probes + 1)
        floor_attempt = _capped(
            Attempt(
                attempt.probing_from,
                units=work.units_of(attempt.probing_from),
                predicted=True,
            ),
            work,
        )
        return floor_attempt, _with_tried(failed, floor_attempt.size)
    if attempt.regrowing_from is not None:
        failed = replace(
            failed,
            failed_regrowths=failed.failed_regrowths + 1,
            failed_regrowth_sizes=(*failed.failed_regrowth_sizes, attempt.size),
        )
        back = attempt.regrowing_from
        if not attempt.predicted:
            back = min(back, failed.current_size)
        back_attempt = _capped(
            Attempt(back, units=work.units_of(back), predicted=attempt.predicted), work
        )
        return back_attempt, _with_tried(failed, back_attempt.size)
    if attempt.size <= snapshot.min_size:
        return None, failed
    retry: Attempt | None = None
    if attempt.predicted:
        failed = _corrected(failed, attempt)
        floor = failed.largest_success
        if floor is not None and floor < failed_units:
            # What worked is the retry that surely works (unless the work changed, which
            # its measurement then shows); the bisection waits for the next prediction.
            size = work.largest_within(floor)
            if 0 < size < attempt.size:
                retry = Attempt(size, units=work.units_of(size), predicted=True)
        if retry is None:
            predicted = _prediction(failed, work, attempt.available, below_failure=True)
            if predicted is not None and predicted[0].size < attempt.size:
                retry = predicted[0]
    elif attempt.measurable and _memory_per_unit(failed, work) is None:
        probe = _probe_size(failed, attempt.size)
        retry = Attempt(probe, units=work.units_of(probe), probe=True)
    if retry is None:
        shrunk = _shrunk(failed, attempt.size)
        assert shrunk is not None
        if shrunk < failed.current_size:
            failed = replace(failed, current_size=shrunk, reductions=failed.reductions + 1)
        size = min(shrunk, failed.current_size)
        retry = Attempt(size, units=work.units_of(size))
    elif retry.size < failed.current_size:
        failed = replace(failed, current_size=retry.size, reductions=failed.reductions + 1)
    retry = _capped(retry, work)
    return retry, _with_tried(failed, retry.size)


def _capped(attempt: Attempt, work: Work) -> Attempt:
    """``attempt``, no longer than the items left."""
    if work.limit is None or attempt.size <= work.limit:
        return attempt
    size = max(work.limit, 1)
    return replace(attempt, size=size, units=work.units_of(size), regrowing_from=None)
