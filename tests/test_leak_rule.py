"""The leak rule at issue 24's targets: memory that wanders, repeats or is garbage raises (almost)
no alarm; a steady leak is one warning, found as soon as docs/leaks.md says.

The shapes are those of ``python -m benchmarks leaks`` (benchmarks/leaks.py), which prints the
table of docs/leaks.md; each is seeded, fed to a fresh :class:`LeakWatch`, one sample per item.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from benchmarks.leaks import SHAPES, Shape, operations_per_sample, run
from memscope import InvalidArgumentTypeError
from memscope.leaks import LeakWatch
from memscope.testing import GiB, MiB

BASELINE = 1 * GiB


def shape(prefix: str) -> Shape:
    """The benchmark's shape whose name starts with ``prefix``."""
    return next(candidate for candidate in SHAPES if candidate.name.startswith(prefix))


def warned_runs(chosen: Shape, seeds: int = 40) -> int:
    return sum(run(chosen, seed).warnings > 0 for seed in range(seeds))


# False alarms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "1. wandering, phi 0.99, 8 GiB",
        "1. wandering, phi 0.97, 24 GiB",
        "1. wandering, phi 0.95, 8 GiB",
        "1. wandering, phi 0.9, 8 GiB",
    ],
)
def test_memory_that_wanders_around_a_level_is_at_most_one_alarm_in_40(name: str) -> None:
    """An autocorrelated level (v = phi v + 5 MiB noise) over 1,000 items: <= 1 run of 40 warns."""
    assert warned_runs(shape(name)) <= 1


@pytest.mark.parametrize(
    "name",
    [
        "2. sine 500 MiB, period 20,",
        "2. sine 500 MiB, period 50,",
        "2. sine 500 MiB, period 100,",
        "2. sine 500 MiB, period 300, 8 GiB, 300 items",
        "2. sine 500 MiB, period 300, 8 GiB, 1,000 items",
        "2. sawtooth 500 MiB flushed by collections every 37,",
        "2. sawtooth 500 MiB flushed by collections every 100,",
        "2. sawtooth 500 MiB the code empties every 37,",
        "2. sawtooth 500 MiB the code empties every 100,",
    ],
)
def test_oscillating_memory_raises_no_alarm(name: str) -> None:
    """Sines of 500 MiB (periods 20 to 300 items) and sawtooths of 500 MiB (flushed by
    memscope's collections, or emptied by the code every 37 or 100 items): no warning in 40
    runs, the first rise included."""
    assert warned_runs(shape(name)) == 0


@pytest.mark.parametrize(
    "name",
    ["2. sine 500 MiB, period 1,000,", "2. sine 3 GiB, period 100,"],
)
def test_a_wave_that_passes_for_a_leak_is_one_warning_per_run(name: str) -> None:
    """The documented limits (a wave slower than the window, one large for the memory it sits
    on) may be named on their first rise, but once a run: the falls and rises after it never
    warn again, and the warning is cleared when the rise stops."""
    for seed in range(10):
        outcome = run(shape(name), seed)
        assert outcome.warnings <= 1, seed
        assert outcome.warnings == 0 or outcome.cleared, seed


def test_garbage_that_memscopes_collections_reclaim_is_no_leak() -> None:
    """64 MiB of cyclic garbage per item, collected at the threshold or when the watch asks:
    at most 1 run of 40 warns, and the watch asks for a handful of collections per run."""
    chosen = shape("3. 64 MiB/item of cyclic garbage")
    outcomes = [run(chosen, seed) for seed in range(40)]
    assert sum(outcome.warnings > 0 for outcome in outcomes) <= 1
    # 3 at the threshold, the rest asked for with a doubling wait: 20, 40, 80, then 128.
    assert max(outcome.collections for outcome in outcomes) <= 12


def test_memory_that_rises_back_to_where_it_came_down_from_is_no_leak() -> None:
    """500 MiB down over 100 items, then steadily back up over 100: the rise only returns to
    a level memory held, so nothing is named; 200 MiB past that level is named."""
    watch = LeakWatch("cuda:0", capacity=8 * GiB, search_suspects=False)
    top = 2 * GiB + 500 * MiB
    for item in range(1, 201):
        watch.observe(item, top - 5 * MiB * (100 - abs(100 - item)))
    assert watch.finding is None
    for item in range(201, 241):
        watch.observe(item, top + 5 * MiB * (item - 200))
    assert watch.finding is not None
    assert watch.finding.growth_per_item == pytest.approx(5 * MiB, rel=0.05)


def test_a_rise_is_judged_against_the_memory_it_started_from() -> None:
    """The sawtooth's first rise (5 MiB per item from 2 GiB on 8 GiB) and the kept leak (16 MiB
    per item from 1 GiB on 24 GiB) take the same share of their devices per item; the leak is
    1.6 % per item of what memory held, the rise 0.25 %: the leak is named by item 30, the rise
    not in 100 items. Both verdicts hold at three times the scale: the rule is scale-free."""
    for scale in (1, 3):
        rise = LeakWatch("cuda:0", capacity=8 * GiB * scale, search_suspects=False)
        leak = LeakWatch("cuda:0", capacity=24 * GiB * scale, search_suspects=False)
        leak_named = None
        for item in range(1, 101):
            rise.observe(item, scale * (2 * GiB + 5 * MiB * item))
            if leak.observe(item, scale * (BASELINE + 16 * MiB * item)) and leak_named is None:
                leak_named = item
        assert rise.finding is None, scale
        assert leak_named is not None, scale
        assert leak_named <= 30, scale


def test_slow_growth_near_the_capacity_is_named_before_it_fills_the_device() -> None:
    """5 MiB per item from 7 GiB on 8 GiB (0.07 % per item of what memory holds, full at about
    item 200): named as soon as memory would run out within four times the items watched,
    long before it does."""
    watch = LeakWatch("cuda:0", capacity=8 * GiB, search_suspects=False)
    named = None
    for item in range(1, 201):
        if watch.observe(item, 7 * GiB + 5 * MiB * item) is not None:
            named = item
            break
    assert named is not None
    assert named <= 60
    assert watch.finding is not None
    assert watch.finding.exhausted_at_item is not None
    assert watch.finding.exhausted_at_item - named >= 100


def test_slow_growth_is_named_once_it_has_gone_on_straight_for_a_whole_window() -> None:
    """1 MiB per item from 1 GiB, capacity unknown: not named over 124 samples, named at the
    judgement that fills the window of 128; half of it flat is no straight line."""
    watch = LeakWatch("cuda:0", search_suspects=False)
    for item in range(1, 125):
        watch.observe(item, BASELINE + MiB * item)
    assert watch.finding is None
    for item in range(125, 129):
        watch.observe(item, BASELINE + MiB * item)
    assert watch.finding is not None
    assert watch.finding.growth_per_item == pytest.approx(MiB)
    bent = LeakWatch("cuda:0", search_suspects=False)
    for item in range(1, 129):
        bent.observe(item, BASELINE + 2 * MiB * max(0, item - 64))
    assert bent.finding is None


@settings(max_examples=40, deadline=None)
@given(
    capacity_gib=st.sampled_from([8, 24, 80]),
    level=st.floats(0.02, 0.8),
    items_to_full=st.integers(40, 4000),
    jitter_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_a_steady_leak_is_named_before_most_of_the_device_is_gone(
    capacity_gib: int, level: float, items_to_full: int, jitter_share: float, seed: int
) -> None:
    """Whatever its level and rate, a steady leak that fills the device in 40 to 4,000 items,
    under jitter of up to 5 MiB and at most five times its rate, is named before 80 % of the
    way to a full device: the fast, urgent or long test drops no leak the rest would name."""
    capacity = capacity_gib * GiB
    start = level * capacity
    rate = (capacity - start) / items_to_full
    jitter = jitter_share * min(5 * MiB, 5 * rate)
    noise = random.Random(seed)
    watch = LeakWatch("cuda:0", capacity=capacity, search_suspects=False)
    named = None
    for item in range(1, items_to_full + 1):
        retained = max(0, round(start + rate * item + noise.gauss(0, jitter)))
        if watch.observe(item, retained) is not None:
            named = item
            break
    assert named is not None
    assert named <= 0.8 * items_to_full


# One warning per leak -----------------------------------------------------------------------


def test_a_steady_leak_is_exactly_one_warning_and_never_declared_over() -> None:
    """1 MiB per item + 5 MiB of noise for 3,000 items on 80 GiB: one warning, still active,
    in 50 runs of 50."""
    chosen = shape("4. 1 MiB/item + 5 MiB jitter, 80 GiB")
    for seed in range(50):
        outcome = run(chosen, seed)
        assert outcome.warnings == 1, seed
        assert not outcome.cleared, seed


def test_a_leak_that_slows_to_a_quarter_stays_one_finding() -> None:
    """The hysteresis: named at 16 MiB per item, then 4 MiB per item (over an eighth of the
    rate) for 300 items: the finding stays active, its rate follows."""
    watch = LeakWatch("cuda:0", capacity=24 * GiB, search_suspects=False)
    for item in range(1, 401):
        watch.observe(item, BASELINE + 16 * MiB * min(item, 100) + 4 * MiB * max(0, item - 100))
    finding = watch.finding
    assert finding is not None
    assert finding.active
    assert finding.growth_per_item == pytest.approx(4 * MiB, rel=0.05)


def test_growth_that_stops_is_cleared_after_two_judgements() -> None:
    """Growth that stops at item 60 is cleared once the latest 32 samples grow less than an
    eighth of the rate at two judgements in a row: within 40 items of the stop, one warning."""
    watch = LeakWatch("cuda:0", capacity=24 * GiB, search_suspects=False)
    cleared = None
    for item in range(1, 401):
        finding = watch.observe(item, BASELINE + 16 * MiB * min(item, 60))
        if finding is not None and not finding.active and cleared is None:
            cleared = item
    assert cleared is not None
    assert 60 < cleared <= 100


# Sensitivity --------------------------------------------------------------------------------


def test_a_16_mib_leak_seen_only_between_collections_is_confirmed_by_one() -> None:
    """Samples after cleanups that ran no collection ask for one; the floor it leaves confirms
    the leak: named within 30 items, rate within 10 %, one collection asked for."""
    chosen = shape("16 MiB/item +-2 MiB, collected only when asked")
    for seed in range(10):
        outcome = run(chosen, seed)
        assert outcome.named_at is not None
        assert outcome.named_at <= 30
        assert outcome.rate == pytest.approx(16 * MiB, rel=0.10)
        assert outcome.collections == 1


def test_a_1_mib_leak_on_24_gib_is_found_within_300_items() -> None:
    """1 MiB per item + 5 MiB of noise on a 24 GiB device: found by item 300 with its rate
    within 10 %, in 20 runs of 20."""
    chosen = shape("1 MiB/item + 5 MiB jitter, 24 GiB")
    for seed in range(20):
        outcome = run(chosen, seed)
        assert outcome.named_at is not None, seed
        assert outcome.named_at <= 300, seed
        assert outcome.rate == pytest.approx(MiB, rel=0.10), seed


# Floors and collections ---------------------------------------------------------------------


def test_growth_between_collections_asks_for_one_and_is_dropped_when_it_frees_it() -> None:
    """Garbage that grows 64 MiB per item with no collection: the watch names nothing and
    asks for a collection; the floor after it, back at the baseline, ends the request."""
    watch = LeakWatch("cuda:0", capacity=24 * GiB, search_suspects=False)
    item = 0
    while not watch.wants_collection:
        item += 1
        assert item < 100
        watch.observe(item, BASELINE + 64 * MiB * item, collected=False)
    assert watch.finding is None
    watch.observe(item + 1, BASELINE, collected=True)
    assert watch.finding is None
    assert not watch.wants_collection


def test_growth_a_collection_cannot_free_is_named_at_that_collection() -> None:
    """The same growth, but the collection frees nothing: named at the collection's item."""
    watch = LeakWatch("cuda:0", capacity=24 * GiB, search_suspects=False)
    item = 0
    while not watch.wants_collection:
        item += 1
        watch.observe(item, BASELINE + 16 * MiB * item, collected=False)
    finding = watch.observe(item + 1, BASELINE + 16 * MiB * (item + 1), collected=True)
    assert finding is not None
    assert finding.detected_at_item == item + 1
    assert finding.growth_per_item == pytest.approx(16 * MiB)


def test_the_growth_figure_is_that_of_the_floors_where_collections_come_now_and_then() -> None:
    """8 MiB of garbage per item, collected every 10th item, over a flat floor: the growth
    reads 0 (the floors'), not the garbage's 8 MiB per item after the last collection."""
    watch = LeakWatch("cpu", capacity=24 * GiB, sampled="resident", search_suspects=False)
    for item in range(5, 25, 5):
        collected = item % 10 == 0
        watch.observe(item, BASELINE + (0 if collected else 8 * MiB * 5), collected=collected)
    watch.observe(24, BASELINE + 8 * MiB * 4, collected=False)
    assert watch.growth_per_item == 0
    every_sample_a_floor = LeakWatch("cpu", capacity=24 * GiB, search_suspects=False)
    for item in range(1, 5):
        every_sample_a_floor.observe(item, BASELINE + 8 * MiB * item)
    assert every_sample_a_floor.growth_per_item == 8 * MiB


def test_count_only_judges_every_sample_and_never_speaks_of_cleanup() -> None:
    """after_cleanup=False: samples without a collection are judged as they are, nothing is
    asked for, and no text of the finding says "after GC"."""
    watch = LeakWatch("cuda:0", capacity=24 * GiB, after_cleanup=False, search_suspects=False)
    for item in range(1, 41):
        watch.observe(item, BASELINE + 16 * MiB * item, collected=False)
        assert not watch.wants_collection
    finding = watch.finding
    assert finding is not None
    for text in (finding.message(), finding.summary(), str(finding)):
        assert "after GC" not in text
        assert "without cleanup: count-only mode" in text


def test_count_only_on_the_cpu_never_speaks_of_gc() -> None:
    """The host's message in count-only mode says so too."""
    watch = LeakWatch(
        "cpu", capacity=24 * GiB, sampled="resident", after_cleanup=False, search_suspects=False
    )
    for item in range(1, 41):
        watch.observe(item, BASELINE + 16 * MiB * item)
    assert watch.finding is not None
    assert "after GC" not in str(watch.finding)


def test_collected_must_be_a_bool_or_none() -> None:
    """A collected flag of another type names the parameter."""
    with pytest.raises(InvalidArgumentTypeError, match="collected must be a bool or None"):
        LeakWatch("cuda:0").observe(1, BASELINE, collected=1)  # type: ignore[arg-type]


# Cost ---------------------------------------------------------------------------------------


def test_a_sample_costs_the_same_few_calls_however_long_the_run() -> None:
    """Amortised O(1): under 100 calls per observe, the same over 1,024 and 8,192 samples."""
    short, long = operations_per_sample(1024), operations_per_sample(8192)
    assert long < 100
    assert long == pytest.approx(short, rel=0.15)


def test_flat_memory_is_judged_without_fitting_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory that never rises past the levels it held is judged by its latest block alone:
    over 1,000 flat samples no line is fitted (the judgement's cost stays O(1)), and a leak
    that follows is still fitted and named."""
    from memscope import _leak_rule

    fits = 0
    original = _leak_rule.Blocks.trend

    def counting(self: _leak_rule.Blocks) -> _leak_rule.Trend | None:
        nonlocal fits
        fits += 1
        return original(self)

    monkeypatch.setattr(_leak_rule.Blocks, "trend", counting)
    watch = LeakWatch("cuda:0", capacity=24 * GiB, search_suspects=False)
    rng = random.Random(7)
    for item in range(1, 1001):
        watch.observe(item, 2 * GiB + rng.randrange(-MiB, MiB))
    assert fits == 0
    assert watch.finding is None
    for item in range(1001, 1301):
        watch.observe(item, 2 * GiB + (item - 1000) * 16 * MiB)
    assert fits > 0
    assert watch.finding is not None
