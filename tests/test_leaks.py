"""Leak detection: a steady growth is named once, early, with its rate, its end and its holders;
jitter, a large item and a cache that fills once are not leaks.

Most tests feed :class:`LeakWatch` made-up figures, one per cleanup. The suspect search looks
at real tensors held by this module. The tests at the end go through ``managed_batch`` and
need the batch to run a watch (``report.leak``, ``report.memory_growth_per_item``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import memscope.leaks
from memscope import BatchReport, InvalidArgumentError, InvalidArgumentTypeError, managed_batch
from memscope.leaks import DEFAULT_MIN_SHARE, LeakWatch, SuspectSearch
from memscope.reports import LeakFinding, LeakSuspect, TimelineEntry
from memscope.reports._combined import combine_rules
from memscope.testing import FakeDevice, GiB, MiB
from memscope.units import format_bytes

BASELINE = 1 * GiB
"""What the model and the loop hold for good: the memory that stays in a healthy loop."""
CAPACITY = 24 * GiB
LEAK = 16 * MiB

KEPT_OUTPUTS: list[torch.Tensor] = []
"""An output list kept by mistake, for the suspect search to find."""


def watch_figures(
    figures: Iterable[float],
    *,
    capacity: int | None = CAPACITY,
    every: int = 1,
    **options: object,
) -> LeakWatch:
    """A watch on cuda:0 fed ``figures``, one per cleanup ``every`` items apart."""
    watch = LeakWatch("cuda:0", capacity=capacity, search_suspects=False, **options)  # type: ignore[arg-type]
    for index, retained in enumerate(figures, start=1):
        watch.observe(index * every, max(0, round(retained)))
    return watch


def leaking(items: int, *, rate: int = LEAK, jitter: float = 0.0, seed: int = 0) -> list[float]:
    """Figures that grow ``rate`` bytes per item from BASELINE, give or take ``jitter``."""
    noise = random.Random(seed)
    return [BASELINE + rate * item + noise.uniform(-jitter, jitter) for item in range(1, items + 1)]


def first_named_at(figures: list[float], **options: object) -> int | None:
    """The item at which a watch fed ``figures`` first names a leak, or ``None``."""
    watch = LeakWatch("cuda:0", capacity=CAPACITY, search_suspects=False, **options)  # type: ignore[arg-type]
    for item, retained in enumerate(figures, start=1):
        if watch.observe(item, round(retained)) is not None:
            return item
    return None


def warnings_logged(log: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in log.records if record.levelno == logging.WARNING]


# Naming a leak ------------------------------------------------------------------------------


def test_a_leak_of_16_mib_per_item_is_named_within_30_items_with_its_rate_and_end() -> None:
    """16 MiB per item on a 24 GiB device is named by item 30, at 16 MiB/item +-10 %, and
    projected to fill the device at item (24 GiB - 1 GiB) / 16 MiB = 1,472."""
    figures = leaking(200, jitter=2 * MiB)
    named_at = first_named_at(figures)
    assert named_at is not None
    assert named_at <= 30
    finding = watch_figures(figures[:named_at]).finding
    assert finding is not None
    assert finding.active
    assert finding.growth_per_item == pytest.approx(LEAK, rel=0.10)
    assert finding.exhausted_at_item == pytest.approx(1472, abs=15)
    assert finding.detected_at_item == named_at
    assert finding.capacity == CAPACITY
    assert finding.sampled == "allocated"


def test_the_projection_is_exact_on_exact_figures() -> None:
    """Without jitter the rate is 16 MiB and the device fills at item 1,472 exactly."""
    finding = watch_figures(leaking(40)).finding
    assert finding is not None
    assert finding.growth_per_item == LEAK
    assert finding.exhausted_at_item == 1472
    assert finding.retained_last == BASELINE + LEAK * finding.last_item


def test_a_noisy_leak_is_still_named_with_its_rate() -> None:
    """16 MiB per item under +-50 MiB of jitter is named within 40 items, rate within 10 %."""
    for seed in range(10):
        figures = leaking(120, jitter=50 * MiB, seed=seed)
        named_at = first_named_at(figures)
        assert named_at is not None, seed
        assert named_at <= 40, seed
        finding = watch_figures(figures).finding
        assert finding is not None
        assert finding.growth_per_item == pytest.approx(LEAK, rel=0.10), seed


def test_the_warning_is_logged_exactly_once(memscope_log: pytest.LogCaptureFixture) -> None:
    """A leak that goes on for 300 items is one WARNING, in the issue's words."""
    watch_figures(leaking(300))
    assert warnings_logged(memscope_log) == [
        "memory grows 16.0 MiB per item (after GC and cache clearing); at this rate cuda:0 is "
        "full at about item 1,472"
    ]


def test_the_finding_follows_the_leak_but_keeps_the_item_it_was_named_at() -> None:
    """As evidence comes in the rate and window follow it; detected_at_item stays."""
    watch = watch_figures(leaking(20))
    first = watch.finding
    assert first is not None
    for item, retained in enumerate(leaking(200)[20:], start=21):
        watch.observe(item, round(retained))
    later = watch.finding
    assert later is not None
    assert later.detected_at_item == first.detected_at_item
    assert later.last_item > first.last_item
    assert later.samples == memscope.leaks.DEFAULT_WINDOW == 128


def test_items_between_cleanups_count_in_the_rate() -> None:
    """Cleanups every 5 items, 80 MiB apart, are 16 MiB per item."""
    figures = [BASELINE + 5 * LEAK * sample for sample in range(1, 41)]
    watch = watch_figures(figures, every=5)
    assert watch.growth_per_item == pytest.approx(LEAK)
    assert watch.finding is not None
    assert watch.finding.exhausted_at_item == 1472


def test_on_the_cpu_the_message_speaks_of_the_host() -> None:
    """Resident memory is said to grow after GC, up to the host's memory limit."""
    watch = LeakWatch("cpu", capacity=CAPACITY, sampled="resident", search_suspects=False)
    for item, retained in enumerate(leaking(40), start=1):
        watch.observe(item, round(retained))
    assert watch.finding is not None
    assert watch.finding.message() == (
        "host memory (resident) grows 16.0 MiB per item (after GC); at this rate the host's "
        "memory limit is reached at about item 1,472"
    )


def test_without_a_capacity_nothing_is_projected_and_the_share_test_is_skipped() -> None:
    """With capacity None a leak is still named, with no item of exhaustion."""
    finding = watch_figures(leaking(40), capacity=None).finding
    assert finding is not None
    assert finding.exhausted_at_item is None
    assert finding.message() == ("memory grows 16.0 MiB per item (after GC and cache clearing)")


# Not a leak ---------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    jitter=st.floats(min_value=1 * MiB, max_value=50 * MiB),
    capacity=st.sampled_from([None, 16 * GiB, CAPACITY]),
)
def test_jitter_without_a_trend_raises_nothing(
    seed: int, jitter: float, capacity: int | None
) -> None:
    """Up to +-50 MiB of random jitter around a flat level for 300 items names no leak."""
    noise = random.Random(seed)
    figures = [2 * GiB + noise.uniform(-jitter, jitter) for _ in range(300)]
    watch = watch_figures(figures, capacity=capacity)
    assert watch.finding is None
    growth = watch.growth_per_item
    assert growth is not None
    assert abs(growth) < jitter / 8


def test_seeded_jitter_with_occasional_large_items_raises_nothing() -> None:
    """Normal jitter plus a 500 MiB item now and then (one in 20) names nothing in 300 items."""
    for seed in range(40):
        noise = random.Random(seed)
        figures = [
            2 * GiB + noise.gauss(0, 20 * MiB) + (500 * MiB if noise.random() < 0.05 else 0)
            for _ in range(300)
        ]
        assert watch_figures(figures, capacity=None).finding is None, seed


@pytest.mark.parametrize("size", [256 * MiB, 2 * GiB, 8 * GiB])
def test_a_single_large_item_is_not_a_leak(size: int) -> None:
    """One item that holds a lot for a moment, flat before and after, names nothing."""
    figures = [float(BASELINE)] * 300
    figures[100] += size
    watch = watch_figures(figures)
    assert watch.finding is None
    assert watch.growth_per_item == 0


@pytest.mark.parametrize("jitter", [0.0, 5 * MiB, 50 * MiB])
@pytest.mark.parametrize("size", [200 * MiB, 1 * GiB, 4 * GiB])
def test_a_single_large_item_that_leaves_memory_behind_is_not_a_leak(
    size: int, jitter: float
) -> None:
    """One step up (a cache built once, a larger workspace) is no steady growth."""
    for seed in range(5):
        noise = random.Random(seed)
        step_at = noise.randint(20, 150)
        figures = [
            BASELINE + (size if item >= step_at else 0) + noise.uniform(-jitter, jitter)
            for item in range(300)
        ]
        assert watch_figures(figures).finding is None, (seed, step_at)


def test_slow_growth_below_the_rate_threshold_is_not_a_leak() -> None:
    """Growth of 32 KiB per item, below the 64 KiB default, is measured but never named."""
    watch = watch_figures(leaking(2000, rate=32 * 1024), capacity=None)
    assert watch.finding is None
    assert watch.growth_per_item == pytest.approx(32 * 1024)


def test_growth_below_the_share_of_the_device_is_not_a_leak_yet() -> None:
    """1 MiB per item for 160 items is 160 MiB: under 1 % of an 80 GiB device, not named;
    without a capacity, the same growth is (straight over a whole window)."""
    figures = leaking(160, rate=1 * MiB)
    assert DEFAULT_MIN_SHARE == 0.01
    assert watch_figures(figures, capacity=80 * GiB).finding is None
    assert watch_figures(figures, capacity=None).finding is not None


def test_the_thresholds_can_be_set() -> None:
    """min_growth_per_item and min_share take sizes and fractions."""
    figures = leaking(160, rate=1 * MiB)
    assert watch_figures(figures, capacity=80 * GiB, min_share=0.001).finding is not None
    assert watch_figures(figures, capacity=None, min_growth_per_item="2MiB").finding is None


# Growth that stops ------------------------------------------------------------------------


def test_growth_that_stops_clears_the_suspicion(memscope_log: pytest.LogCaptureFixture) -> None:
    """A cache that grows 16 MiB per item for 60 items, then stays, is named, then cleared:
    the finding stays with cleared_at_item set and active false, and the growth reads 0."""
    figures = [BASELINE + LEAK * min(item, 60) for item in range(1, 301)]
    watch = LeakWatch("cuda:0", capacity=CAPACITY, search_suspects=False)
    named = cleared = None
    for item, retained in enumerate(figures, start=1):
        finding = watch.observe(item, retained)
        if finding is not None and named is None:
            named = item
        if finding is not None and not finding.active and cleared is None:
            cleared = item
    assert named is not None
    assert named <= 30
    assert cleared is not None
    assert 60 < cleared <= 100
    finding = watch.finding
    assert finding is not None
    assert not finding.active
    assert finding.cleared_at_item == cleared
    assert watch.growth_per_item == 0
    assert len(warnings_logged(memscope_log)) == 1
    assert any("has stopped" in record.getMessage() for record in memscope_log.records)
    assert "stopped at item" in finding.summary()


def test_a_leak_that_starts_again_is_named_again() -> None:
    """Growth, a plateau that clears it, then growth again: a second finding is named."""
    figures = [
        BASELINE + LEAK * min(item, 60) + LEAK * max(0, item - 200) for item in range(1, 301)
    ]
    first_detection = None
    watch = LeakWatch("cuda:0", capacity=CAPACITY, search_suspects=False)
    for item, retained in enumerate(figures, start=1):
        finding = watch.observe(item, retained)
        if finding is not None and first_detection is None:
            first_detection = finding.detected_at_item
    assert watch.finding is not None
    assert watch.finding.active
    assert first_detection is not None
    assert watch.finding.detected_at_item > 200 > first_detection


# The watch's inputs -----------------------------------------------------------------------


def test_growth_is_none_before_two_samples_and_unknown_figures_are_ignored() -> None:
    """None figures (a device that cannot tell) are skipped; one sample has no slope."""
    watch = LeakWatch("cuda:0", capacity=CAPACITY)
    assert watch.growth_per_item is None
    watch.observe(1, None)
    watch.observe(2, BASELINE)
    assert watch.growth_per_item is None
    assert watch.samples == 1
    watch.observe(3, BASELINE + 3 * MiB)
    assert watch.growth_per_item == pytest.approx(3 * MiB)


def test_a_sample_no_later_than_the_last_is_ignored() -> None:
    """The batch's final cleanup, at the same item count, adds no second point."""
    watch = LeakWatch("cuda:0")
    watch.observe(5, BASELINE)
    watch.observe(5, BASELINE + GiB)
    watch.observe(4, BASELINE + GiB)
    assert watch.samples == 1


def test_the_window_is_bounded() -> None:
    """However long the run, the watch holds at most ``window`` samples."""
    watch = watch_figures([float(BASELINE)] * 1000, window=32, min_samples=8)
    assert watch.samples == 32


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"device": 0}, InvalidArgumentTypeError, "device must be a str or a torch.device"),
        ({"capacity": -1}, InvalidArgumentError, "capacity must not be negative"),
        ({"capacity": 0}, InvalidArgumentError, "capacity must be positive"),
        ({"capacity": 1.5}, InvalidArgumentTypeError, "capacity must be a byte count"),
        ({"sampled": "reserved"}, InvalidArgumentError, "sampled must be one of"),
        ({"window": 2}, InvalidArgumentError, "window must be an int >= 8"),
        ({"min_samples": 200}, InvalidArgumentError, "min_samples must not exceed window"),
        ({"min_share": 0}, InvalidArgumentError, "min_share must be between 0 and 1"),
        ({"min_growth_per_item": "fast"}, InvalidArgumentError, "min_growth_per_item 'fast'"),
        ({"history_recorded": 1}, InvalidArgumentTypeError, "history_recorded must be a bool"),
        ({"search_suspects": "no"}, InvalidArgumentTypeError, "search_suspects must be a bool"),
    ],
)
def test_bad_options_name_the_parameter(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each bad option raises the library's error naming the parameter and the value."""
    arguments: dict[str, object] = {"device": "cuda:0", **options}
    with pytest.raises(error, match=message):
        LeakWatch(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("item", "retained", "error", "message"),
    [
        (-1, 0, InvalidArgumentError, "item must be an int >= 0"),
        (1.5, 0, InvalidArgumentTypeError, "item must be an int"),
        (1, -5, InvalidArgumentError, "retained must be an int >= 0"),
        (1, "1GiB", InvalidArgumentTypeError, "retained must be an int"),
    ],
)
def test_bad_samples_name_the_parameter(
    item: object, retained: object, error: type[Exception], message: str
) -> None:
    """observe() refuses items and figures that are not counts."""
    with pytest.raises(error, match=message):
        LeakWatch("cuda:0").observe(item, retained)  # type: ignore[arg-type]


def test_a_recorded_history_is_pointed_at() -> None:
    """On CUDA with memory history recorded, the finding says where the stack traces are."""
    finding = watch_figures(leaking(40), history_recorded=True).finding
    assert finding is not None
    assert any("memory_viz" in hint for hint in finding.hints)


# What holds it ----------------------------------------------------------------------------


def keep_an_output() -> None:
    """One colorization that appends its output to KEPT_OUTPUTS by mistake."""
    KEPT_OUTPUTS.append(torch.zeros(1, 4, 128, 128, dtype=torch.float16))


def test_the_watch_names_the_list_that_holds_the_leaked_tensors(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """Four cleanups after a leak is named, the search finds KEPT_OUTPUTS and every tensor
    in it (not only the newest), with their bytes, and reports what it cost."""
    watch = LeakWatch("cuda:0", capacity=CAPACITY)
    try:
        finding = None
        for item, retained in enumerate(leaking(60), start=1):
            keep_an_output()
            finding = watch.observe(item, round(retained))
            if finding is not None and finding.suspects:
                break
        assert finding is not None
        assert finding.suspects
        assert len(KEPT_OUTPUTS) == finding.detected_at_item + 4
        assert finding.search_seconds is not None
        assert finding.search_seconds > 0
        suspect = finding.suspects[0]
        assert suspect.holder == f"list `KEPT_OUTPUTS` in module {__name__}"
        assert (suspect.device, suspect.shape, suspect.dtype) == (
            "cpu",
            (1, 4, 128, 128),
            "float16",
        )
        assert suspect.count == len(KEPT_OUTPUTS)
        assert suspect.nbytes == len(KEPT_OUTPUTS) * 4 * 128 * 128 * 2
        assert str(suspect) == (
            f"list `KEPT_OUTPUTS` in module {__name__} holds {len(KEPT_OUTPUTS)} tensors of "
            f"1x4x128x128 float16 on cpu, {format_bytes(suspect.nbytes)}"
        )
        assert any("leak suspects" in record.getMessage() for record in memscope_log.records)
        assert len(warnings_logged(memscope_log)) == 1
    finally:
        KEPT_OUTPUTS.clear()


def test_no_search_runs_on_a_healthy_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that does not leak never starts the suspect search: it costs nothing."""
    started: list[object] = []
    monkeypatch.setattr(memscope.leaks, "SuspectSearch", lambda: started.append(1))
    watch = LeakWatch("cuda:0", capacity=CAPACITY)
    for item in range(1, 200):
        watch.observe(item, BASELINE)
    assert started == []


def test_the_search_skips_tensors_that_died_and_names_locals_and_attributes() -> None:
    """A loop variable's tensor is gone by the last step; a local list and an object's
    attribute list are named with the function they live in."""

    class Colorizer:
        def __init__(self) -> None:
            self.history: list[torch.Tensor] = []

    colorizer = Colorizer()
    kept: list[torch.Tensor] = []
    search = SuspectSearch()
    output = torch.ones(3)
    for _ in range(3):
        output = torch.ones(3)
        kept.append(torch.ones(5))
        colorizer.history.append(torch.ones(7, dtype=torch.float64))
    assert search.take_candidates() >= 7
    del output
    suspects = search.suspects()
    by_shape = {suspect.shape: suspect for suspect in suspects}
    assert set(by_shape) == {(5,), (7,)}
    assert by_shape[(5,)].holder is not None
    assert by_shape[(5,)].holder.startswith("list `kept` in ")
    assert "test_the_search_skips_tensors_that_died" in by_shape[(5,)].holder
    assert by_shape[(7,)].holder is not None
    assert by_shape[(7,)].holder.startswith("list `history` of Colorizer `colorizer` in ")
    assert (by_shape[(7,)].count, by_shape[(7,)].nbytes) == (3, 3 * 7 * 8)
    assert search.seconds > 0


def test_the_search_finds_what_no_name_reaches_through_the_collector() -> None:
    """Tensors in a list held only by an object in another object's list are still grouped,
    their holder found with gc.get_referrers."""

    class Node:
        def __init__(self) -> None:
            self.items: list[torch.Tensor] = []

    nodes = [Node()]
    search = SuspectSearch()
    for _ in range(2):
        nodes[0].items.append(torch.ones(11))
    search.take_candidates()
    (suspect,) = [suspect for suspect in search.suspects() if suspect.shape == (11,)]
    assert suspect.count == 2
    assert suspect.holder is not None
    assert "Node" in suspect.holder


def test_suspects_need_the_candidates_first() -> None:
    """suspects() before take_candidates() is a usage error."""
    with pytest.raises(InvalidArgumentError, match="take_candidates"):
        SuspectSearch().suspects()


def test_views_count_their_storage_once() -> None:
    """Two views of one 400-byte storage, their base gone, count 400 bytes, not 800."""
    search = SuspectSearch()
    base = torch.ones(100)
    views = [base[:10], base[10:20]]
    del base
    search.take_candidates()
    (suspect,) = [s for s in search.suspects() if s.holder and "`views`" in s.holder]
    assert (suspect.count, suspect.nbytes) == (2, 400)
    del views


# The finding in reports -------------------------------------------------------------------


def make_finding(**changes: object) -> LeakFinding:
    """A finding with a suspect, as a batch on cuda:0 would report it."""
    figures: dict[str, object] = {
        "device": "cuda:0",
        "sampled": "allocated",
        "growth_per_item": float(LEAK),
        "detected_at_item": 17,
        "first_item": 1,
        "last_item": 17,
        "samples": 17,
        "retained_first": BASELINE + LEAK,
        "retained_last": BASELINE + 17 * LEAK,
        "retained_lowest": BASELINE + LEAK,
        "noise": 0.0,
        "capacity": CAPACITY,
        "exhausted_at_item": 1472,
        "suspects": (
            LeakSuspect(
                device="cuda:0",
                shape=(1, 4, 128, 128),
                dtype="float16",
                count=58,
                nbytes=58 * 131072,
                holder="list `outputs` in module colorize",
            ),
        ),
        "search_seconds": 0.25,
    }
    figures.update(changes)
    return LeakFinding(**figures)  # type: ignore[arg-type]


def make_report(**changes: object) -> BatchReport:
    """A 40-item cuda:0 report with a timeline whose allocated bytes grow 16 MiB per item."""
    figures: dict[str, object] = {
        "device": "cuda:0",
        "items": 40,
        "calls": 40,
        "failures": 0,
        "cleanup_failures": 0,
        "elapsed_seconds": 4.0,
        "usage_start": 0.05,
        "usage_end": 0.07,
        "peak_allocated": 2 * GiB,
        "peak_reserved": 2 * GiB,
        "cache_clears": 0,
        "gc_runs": 0,
        "gc_seconds": 0.0,
        "memory_growth_per_item": float(LEAK),
        "leak": make_finding(),
        "timeline": tuple(
            TimelineEntry(
                item=item, seconds=item / 10, usage=0.05, allocated=BASELINE + LEAK * item
            )
            for item in range(1, 41)
        ),
    }
    figures.update(changes)
    return BatchReport(**figures)  # type: ignore[arg-type]


def test_the_suspect_reads_like_the_issue() -> None:
    """A suspect says who holds how many tensors of which shape and dtype, and their bytes."""
    (suspect,) = make_finding().suspects
    assert str(suspect) == (
        "list `outputs` in module colorize holds 58 tensors of 1x4x128x128 float16 on cuda:0, "
        "7.2 MiB"
    )
    unheld = dataclasses.replace(suspect, holder=None, count=1, shape=())
    assert str(unheld).startswith("1 tensor of scalar float16 on cuda:0")


def test_a_report_with_a_leak_goes_to_json_and_back(tmp_path: Path) -> None:
    """from_json rebuilds the growth, the LeakFinding and its suspects, shapes as tuples."""
    report = make_report()
    path = report.to_json(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["memory_growth_per_item"] == LEAK
    assert data["leak"]["suspects"][0]["shape"] == [1, 4, 128, 128]
    assert BatchReport.from_json(path) == report
    cleared = make_report(leak=make_finding(cleared_at_item=90, suspects=(), hints=("x",)))
    assert BatchReport.from_dict(json.loads(json.dumps(cleared.to_dict()))) == cleared


def test_reports_without_the_leak_fields_still_load() -> None:
    """A report dict from before leak detection loads with no growth and no leak."""
    data = make_report().to_dict()
    del data["memory_growth_per_item"], data["leak"]
    report = BatchReport.from_dict(data)
    assert (report.memory_growth_per_item, report.leak) == (None, None)


def test_a_broken_leak_in_json_names_what_is_wrong() -> None:
    """A leak entry that is no finding raises the library's errors, saying what it lacks."""
    data = make_report().to_dict()
    data["leak"] = {"device": "cuda:0"}
    with pytest.raises(InvalidArgumentError, match="a leak finding lacks 'capacity'"):
        BatchReport.from_dict(data)
    data["leak"] = "leaky"
    with pytest.raises(InvalidArgumentTypeError, match="a leak finding must be a JSON object"):
        BatchReport.from_dict(data)


def test_the_summary_mentions_the_growth_and_the_leak() -> None:
    """The summary line gives the growth per item, the leak's rate, end and main suspect."""
    summary = make_report().summary()
    assert "memory growth 16.0 MiB/item" in summary
    assert (
        "leak suspected at item 17: memory grows 16.0 MiB per item (after GC and cache "
        "clearing); at this rate cuda:0 is full at about item 1,472; held by list `outputs` "
        "in module colorize holds 58 tensors" in summary
    )
    plain = make_report(memory_growth_per_item=None, leak=None).summary()
    assert "growth" not in plain
    assert "leak" not in plain


def test_the_csv_holds_the_fitted_line() -> None:
    """fitted_memory follows allocated on a timeline that grows exactly 16 MiB per item."""
    import csv
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = make_report().to_csv(Path(folder) / "timeline.csv")
        rows = list(csv.DictReader(path.open(newline="")))
    assert [int(row["fitted_memory"]) for row in rows] == [int(row["allocated"]) for row in rows]
    without = make_report(memory_growth_per_item=None)
    with tempfile.TemporaryDirectory() as folder:
        rows = list(csv.DictReader(without.to_csv(Path(folder) / "t.csv").open(newline="")))
    assert {row["fitted_memory"] for row in rows} == {""}


def test_the_csv_fits_only_the_last_64_items() -> None:
    """On a 100-item timeline the first 36 rows have no fitted figure, the last 64 do."""
    import csv
    import tempfile

    timeline = tuple(
        TimelineEntry(item=item, seconds=0.0, usage=0.0, allocated=BASELINE)
        for item in range(1, 101)
    )
    report = make_report(timeline=timeline, memory_growth_per_item=0.0)
    with tempfile.TemporaryDirectory() as folder:
        rows = list(csv.DictReader(report.to_csv(Path(folder) / "t.csv").open(newline="")))
    fitted = [row["fitted_memory"] for row in rows]
    assert fitted[:36] == [""] * 36
    assert fitted[36:] == [str(BASELINE)] * 64


def test_the_plot_draws_the_fitted_line_and_the_leak() -> None:
    """The bytes panel has a dashed fitted line and a dotted line where the leak was named."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    figure = draw_timeline(make_report())
    labels = [line.get_label() for axes in figure.axes for line in axes.get_lines()]
    assert "fitted growth (16.0 MiB/item)" in labels
    assert "leak named (item 17)" in labels


def test_the_plot_draws_no_line_for_slight_or_short_growth() -> None:
    """Without a leak, growth under 64 KiB per item, or a timeline under 12 items, the bytes
    panel shows allocated and reserved only."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    slight = make_report(leak=None, memory_growth_per_item=32.0 * 1024)
    short = make_report(leak=None, timeline=make_report().timeline[:11])
    for report in (slight, short):
        labels = {line.get_label() for line in draw_timeline(report).axes[1].get_lines()}
        assert labels == {"allocated"}


def test_growth_combines_by_the_largest_rank_and_the_leak_not_at_all() -> None:
    """memory_growth_per_item has combine rule max; leak has none."""
    rules = combine_rules(BatchReport)
    assert rules["memory_growth_per_item"] == "max"
    assert "leak" not in rules


def test_the_leak_module_imports_only_what_it_may() -> None:
    """memscope.leaks imports memscope.reports, units, exceptions and _validation only (no
    batch, decorator or oom: the batch imports it)."""
    tree = ast.parse(Path(memscope.leaks.__file__).read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memscope")
    }
    allowed = (
        "memscope.reports",
        "memscope.units",
        "memscope.exceptions",
        "memscope._validation",
        "memscope._leak_rule",
        "memscope._suspects",
    )
    assert imported
    assert all(module.startswith(allowed) for module in imported), imported


# Through managed_batch (needs the batch to run a LeakWatch) ---------------------------------


def test_managed_batch_names_a_leak_in_its_report(memscope_log: pytest.LogCaptureFixture) -> None:
    """A batch whose allocated memory grows 16 MiB per item reports the growth, names the leak
    once with the device filling at item 1,472, and logs one WARNING."""
    with (
        FakeDevice("cuda", total=CAPACITY) as fake,
        managed_batch("cuda", every=1) as batch,
    ):
        for item in batch.track(range(1, 41)):
            fake.set_memory(allocated=BASELINE + LEAK * item)
    report = batch.report
    assert report.memory_growth_per_item == pytest.approx(LEAK, rel=0.10)
    assert report.leak is not None
    assert report.leak.device == "cuda:0"
    assert report.leak.exhausted_at_item == pytest.approx(1472, abs=15)
    assert warnings_logged(memscope_log) == [
        "memory grows 16.0 MiB per item (after GC and cache clearing); at this rate cuda:0 is "
        "full at about item 1,472"
    ]
    assert "leak suspected at item" in report.summary()


def test_a_count_only_batch_says_its_growth_was_measured_without_cleanup(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """In count-only mode (every=None, sampled at the timeline's readings) the leak message
    says no cleanup ran, not "after GC and cache clearing"."""
    with (
        FakeDevice("cuda", total=CAPACITY) as fake,
        managed_batch("cuda", every=None, timeline=True) as batch,
    ):
        for item in batch.track(range(1, 41)):
            fake.set_memory(allocated=BASELINE + LEAK * item)
    leak = batch.report.leak
    assert leak is not None
    assert leak.after_cleanup is False
    assert warnings_logged(memscope_log) == [
        "memory grows 16.0 MiB per item (without cleanup: count-only mode); at this rate "
        "cuda:0 is full at about item 1,472"
    ]
    assert type(leak).from_dict(leak.to_dict()) == leak


def test_managed_batch_on_a_steady_loop_reports_no_growth_and_no_leak() -> None:
    """A batch whose allocated memory stays put reports a growth of 0 and no leak."""
    with (
        FakeDevice("cuda", total=CAPACITY) as fake,
        managed_batch("cuda", every=1) as batch,
    ):
        for _ in batch.track(range(100)):
            fake.set_memory(allocated=BASELINE)
    assert batch.report.memory_growth_per_item == 0
    assert batch.report.leak is None


@pytest.mark.parametrize(
    "allocated",
    [
        pytest.param(
            lambda item: 2 * GiB + 5 * MiB * (item % 100), id="sawtooth emptied every 100"
        ),
        pytest.param(
            lambda item: 2 * GiB + 250 * MiB * math.sin(2 * math.pi * item / 300),
            id="sine of 500 MiB, period 300",
        ),
    ],
)
def test_managed_batch_names_no_leak_on_the_first_rise_of_a_wave(
    allocated: Callable[[int], float], memscope_log: pytest.LogCaptureFixture
) -> None:
    """On an 8 GiB fake CUDA device, a cache the code fills for 100 items and empties, and a
    sine of period 300, over 600 items at every=1: no WARNING and no leak in the report."""
    with (
        FakeDevice("cuda", total=8 * GiB) as fake,
        managed_batch("cuda", every=1) as batch,
    ):
        for item in batch.track(range(1, 601)):
            fake.set_memory(allocated=round(allocated(item)))
    assert batch.report.leak is None
    assert warnings_logged(memscope_log) == []


def test_managed_batch_with_a_cadence_measures_growth_per_item() -> None:
    """Cleaning up every 5 items, the growth is still per item."""
    with (
        FakeDevice("cuda", total=CAPACITY) as fake,
        managed_batch("cuda", every=5) as batch,
    ):
        for item in batch.track(range(1, 201)):
            fake.set_memory(allocated=BASELINE + LEAK * item)
    assert batch.report.memory_growth_per_item == pytest.approx(LEAK, rel=0.10)
    assert batch.report.leak is not None


def test_managed_batch_finds_the_list_that_holds_the_leak() -> None:
    """Through the batch, the suspects name the list the loop appended to."""
    try:
        with (
            FakeDevice("cuda", total=CAPACITY) as fake,
            managed_batch("cuda", every=1) as batch,
        ):
            for item in batch.track(range(1, 61)):
                keep_an_output()
                fake.set_memory(allocated=BASELINE + LEAK * item)
        leak = batch.report.leak
        assert leak is not None
        assert leak.suspects
        assert leak.suspects[0].holder == f"list `KEPT_OUTPUTS` in module {__name__}"
    finally:
        KEPT_OUTPUTS.clear()
