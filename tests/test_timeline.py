"""The compact timeline: a read-only sequence of TimelineEntry kept as columns."""

from __future__ import annotations

import copy
import pickle
import tracemalloc
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings, strategies as st

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports import BatchReport, TimelineEntry
from memscope.reports._timeline import Timeline

_BYTES = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
_FIGURES = st.floats(allow_nan=False)


@st.composite
def entry_lists(draw: st.DrawFn) -> list[TimelineEntry]:
    """Entries with any figures; item numbers stepping evenly or not."""
    entries = draw(
        st.lists(
            st.builds(
                TimelineEntry,
                item=_BYTES,
                seconds=_FIGURES,
                usage=_FIGURES,
                allocated=st.none() | _BYTES,
                reserved=st.none() | _BYTES,
                gc_ran=st.booleans(),
                host_resident=st.none() | _BYTES,
            ),
            max_size=40,
        )
    )
    if draw(st.booleans()):
        first = draw(st.integers(-1000, 1000))
        step = draw(st.integers(-3, 3))
        entries = [
            TimelineEntry(
                first + step * row,
                entry.seconds,
                entry.usage,
                entry.allocated,
                entry.reserved,
                entry.gc_ran,
                entry.host_resident,
            )
            for row, entry in enumerate(entries)
        ]
    return entries


def _entries(count: int, *, start: int = 1) -> list[TimelineEntry]:
    return [
        TimelineEntry(
            start + row,
            row * 0.5,
            row / 100,
            allocated=None if row % 3 == 0 else row * 1000,
            reserved=row * 2000,
            gc_ran=row % 4 == 1,
            host_resident=None if row < 5 else 10**9 + row,
        )
        for row in range(count)
    ]


def _appended(entries: list[TimelineEntry]) -> Timeline:
    timeline = Timeline()
    for entry in entries:
        timeline.append(
            entry.item,
            entry.seconds,
            entry.usage,
            entry.allocated,
            entry.reserved,
            entry.gc_ran,
            entry.host_resident,
        )
    return timeline


@settings(max_examples=60, deadline=None)
@given(entry_lists())
def test_every_row_reads_back_as_the_entry_it_was(entries: list[TimelineEntry]) -> None:
    """Appended rows come back exactly, by index, negative index, iteration and equality."""
    timeline = _appended(entries)
    assert len(timeline) == len(entries)
    assert list(timeline) == entries
    assert [timeline[row] for row in range(len(entries))] == entries
    assert [timeline[-row] for row in range(1, len(entries) + 1)] == entries[::-1]
    assert timeline == entries
    assert timeline == tuple(entries)
    assert Timeline(entries) == timeline


@settings(max_examples=40, deadline=None)
@given(entry_lists(), st.slices(45))
def test_a_slice_is_a_timeline_of_the_same_rows(entries: list[TimelineEntry], index: slice) -> None:
    """timeline[a:b:c] is a Timeline equal to the list's slice, and appends continue it."""
    part = _appended(entries)[index]
    assert isinstance(part, Timeline)
    assert list(part) == entries[index]
    extra = TimelineEntry(7, 1.0, 0.5, 3, None, True, None)
    part.append(7, 1.0, 0.5, 3, None, True, None)
    assert list(part) == [*entries[index], extra]


@settings(max_examples=30, deadline=None)
@given(entry_lists())
def test_pickling_and_copying_keep_every_row(entries: list[TimelineEntry]) -> None:
    """A pickled, deep-copied or copied timeline equals the original."""
    timeline = _appended(entries)
    assert pickle.loads(pickle.dumps(timeline)) == entries
    assert copy.deepcopy(timeline) == entries
    assert timeline.copy() == entries


def test_a_copy_is_independent() -> None:
    """Rows appended to a copy do not appear in the original."""
    timeline = Timeline(_entries(10))
    copied = timeline.copy()
    copied.append(11, 5.0, 0.1)
    assert len(timeline) == 10
    assert len(copied) == 11
    assert timeline == _entries(10)


def test_evenly_stepping_items_keep_no_item_column() -> None:
    """Items 1, 2, 3 ... are kept as a start and a step; an irregular one writes them out."""
    timeline = Timeline(_entries(100))
    assert timeline._items is None
    timeline.append(500, 1.0, 0.2)
    assert timeline._items is not None
    assert [entry.item for entry in timeline] == [*range(1, 101), 500]


def test_a_figure_that_is_always_none_keeps_no_column() -> None:
    """The CPU's allocated and reserved (always None) take no memory at all."""
    timeline = Timeline()
    for row in range(50):
        timeline.append(row + 1, float(row), 0.0, None, None, False, 10**9)
    assert timeline._allocated is None
    assert timeline._reserved is None
    assert timeline._host_resident is not None
    assert {entry.allocated for entry in timeline} == {None}


def test_not_equal_to_other_rows_or_other_things() -> None:
    """A different row, a missing row or a non-sequence makes the comparison false."""
    entries = _entries(6)
    timeline = Timeline(entries)
    assert timeline != entries[:-1]
    assert timeline != [*entries[:-1], TimelineEntry(99, 0.0, 0.0)]
    assert timeline != "timeline"
    assert timeline != 6


@pytest.mark.parametrize(
    ("figures", "error", "named"),
    [
        ({"item": 1.5}, InvalidArgumentTypeError, "item must be an integer, got 1.5"),
        ({"item": "3"}, InvalidArgumentTypeError, "item must be an integer, got '3'"),
        ({"seconds": "now"}, InvalidArgumentTypeError, "seconds must be a number, got 'now'"),
        ({"usage": None}, InvalidArgumentTypeError, "usage must be a number, got None"),
        ({"allocated": 1.5}, InvalidArgumentTypeError, "allocated must be an integer or None"),
        ({"reserved": 2**64}, InvalidArgumentError, "reserved must be an integer within 64"),
        ({"host_resident": -(2**63)}, InvalidArgumentError, "host_resident must be an integer"),
        ({"gc_ran": None}, InvalidArgumentTypeError, "gc_ran must be a bool, got None"),
        ({"gc_ran": 300}, InvalidArgumentError, "gc_ran must be a bool, got 300"),
    ],
)
def test_a_bad_figure_is_named_and_leaves_the_timeline_as_it_was(
    figures: dict[str, object], error: type[Exception], named: str
) -> None:
    """A row no column can keep raises, naming the figure and its value; no row is added."""
    entries = _entries(12)
    for rows in (0, 1, 2, 12):
        timeline = Timeline(entries[:rows])
        row: dict[str, object] = {"item": rows + 1, "seconds": 1.0, "usage": 0.5}
        row.update(allocated=10, reserved=20, host_resident=30)
        row.update(figures)
        with pytest.raises(error, match=named.replace("*", r"\*")):
            timeline.append(**row)  # type: ignore[arg-type]
        assert timeline == entries[:rows]
        timeline.append(rows + 1, 2.0, 0.25)
        assert timeline[-1] == TimelineEntry(rows + 1, 2.0, 0.25)


def test_only_entries_build_a_timeline() -> None:
    """Timeline(...) of something other than TimelineEntry rows says so."""
    with pytest.raises(InvalidArgumentTypeError, match="must be TimelineEntry instances"):
        Timeline([(1, 0.0, 0.0)])  # type: ignore[list-item]


def test_index_errors() -> None:
    """An index past the end raises IndexError; a non-integer index a clear type error."""
    timeline = Timeline(_entries(3))
    with pytest.raises(IndexError, match="index 3 out of range for 3 entries"):
        timeline[3]
    with pytest.raises(IndexError):
        timeline[-4]
    with pytest.raises(InvalidArgumentTypeError, match="integers or slices, got 'a'"):
        timeline["a"]  # type: ignore[call-overload]


def test_a_million_rows_take_at_most_40_bytes_each() -> None:
    """A CUDA-like timeline (usage, allocated, reserved) keeps at most 40 bytes per row.

    50,000 rows keep the test fast; the columns grow linearly, so a million rows take the
    same per row (``python -m benchmarks overhead`` measures a million).
    """
    rows = 50_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        timeline = Timeline()
        append = timeline.append
        for row in range(rows):
            append(row + 1, row * 1e-3, 0.3, 1_000_000 + row, 2_000_000 + row, row % 5 == 0)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept / rows <= 40
    assert timeline[-1] == TimelineEntry(
        rows, (rows - 1) * 1e-3, 0.3, 1_000_000 + rows - 1, 2_000_000 + rows - 1
    )


def _report(timeline: tuple[TimelineEntry, ...] | Timeline) -> BatchReport:
    return BatchReport(
        device="cuda:0",
        items=len(timeline),
        calls=0,
        failures=0,
        cleanup_failures=0,
        elapsed_seconds=3.0,
        usage_start=0.1,
        usage_end=0.2,
        peak_allocated=None,
        peak_reserved=None,
        cache_clears=0,
        gc_runs=3,
        gc_seconds=0.01,
        # Until BatchReport.timeline is typed as a Sequence, tell mypy what it reads as.
        timeline=cast("tuple[TimelineEntry, ...]", timeline),
    )


def test_reports_with_a_compact_timeline_export_as_before(tmp_path: Path) -> None:
    """A report holding a Timeline writes the same JSON and CSV, and reads back equal."""
    entries = _entries(80)
    compact, plain = _report(Timeline(entries)), _report(tuple(entries))
    assert compact == plain
    assert compact.to_dict() == plain.to_dict()
    compact.to_csv(tmp_path / "compact.csv")
    plain.to_csv(tmp_path / "plain.csv")
    assert (tmp_path / "compact.csv").read_text() == (tmp_path / "plain.csv").read_text()
    compact.to_json(tmp_path / "compact.json")
    assert BatchReport.from_json(tmp_path / "compact.json") == compact
    assert pickle.loads(pickle.dumps(compact)) == plain
