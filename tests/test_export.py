"""The batch timeline, and reports as files: JSON, CSV and a plot."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest

from memscope import (
    BatchReport,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    auto_clear,
    managed_batch,
)
from memscope.reports import TimelineEntry
from memscope.testing import FakeDevice, GiB, RecordingManager

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CSV_COLUMNS = [
    "item",
    "seconds",
    "usage",
    "allocated",
    "reserved",
    "gc_ran",
    "host_resident",
    "fitted_memory",
    "usage_of",
]


def _cuda_report(usages: list[float], *, threshold: float = 0.5) -> BatchReport:
    """A batch on a fake 8 GiB CUDA device whose usage is ``usages[i]`` during item i+1."""
    with (
        FakeDevice("cuda", total=8 * GiB) as fake,
        managed_batch("cuda", memory_threshold=threshold, every=1, timeline=True) as batch,
    ):
        for usage in batch.track(usages):
            fake.set_usage(usage)
    return batch.report


def _report_with_gaps() -> BatchReport:
    """A hand-made report whose timeline has figures the device could not tell."""
    return BatchReport(
        device="cuda:0",
        items=2,
        calls=2,
        failures=0,
        cleanup_failures=0,
        elapsed_seconds=1.5,
        usage_start=0.1,
        usage_end=0.3,
        peak_allocated=3 * GiB,
        peak_reserved=4 * GiB,
        cache_clears=3,
        gc_runs=1,
        gc_seconds=0.06,
        memory_threshold=0.8,
        timeline=(
            TimelineEntry(item=1, seconds=0.5, usage=0.25, allocated=2 * GiB, reserved=None),
            TimelineEntry(item=2, seconds=1.25, usage=0.85, allocated=None, gc_ran=True),
        ),
    )


# The timeline --------------------------------------------------------------------------


def test_timeline_is_off_by_default() -> None:
    """Without timeline=True a batch records no timeline (it costs a snapshot per item)."""
    with managed_batch(manager=RecordingManager()) as batch:
        for _ in batch.track(range(3)):
            pass
    assert batch.report.timeline == ()


def test_timeline_must_be_a_bool() -> None:
    """timeline= is checked when the batch is made."""
    with pytest.raises(InvalidArgumentTypeError, match="timeline must be True or False"):
        managed_batch(timeline=1)  # type: ignore[arg-type]


def test_timeline_has_one_entry_per_item_with_device_figures() -> None:
    """Each item gets its index, seconds since the start, usage, allocated and reserved."""
    report = _cuda_report([0.1, 0.25, 0.375])
    assert [entry.item for entry in report.timeline] == [1, 2, 3]
    assert [entry.usage for entry in report.timeline] == pytest.approx([0.1, 0.25, 0.375])
    assert [entry.allocated for entry in report.timeline] == [
        round(0.1 * 8 * GiB),
        2 * GiB,
        3 * GiB,
    ]
    assert [entry.reserved for entry in report.timeline] == [
        entry.allocated for entry in report.timeline
    ]
    seconds = [entry.seconds for entry in report.timeline]
    assert seconds == sorted(seconds)
    assert seconds[0] >= 0
    assert seconds[-1] <= report.elapsed_seconds


def test_timeline_marks_the_items_where_a_gc_ran() -> None:
    """gc_ran is true exactly at the items whose cleanup collected garbage."""
    report = _cuda_report([0.2, 0.6, 0.3, 0.7, 0.1], threshold=0.5)
    assert [entry.gc_ran for entry in report.timeline] == [False, True, False, True, False]
    assert report.gc_runs == 2


def test_timeline_follows_the_batch_cadence_with_a_decorated_function_inside() -> None:
    """Inside a batch, a GC run is marked where the batch's one cadence collected, whatever
    cadence an @auto_clear function inside it was given."""
    with FakeDevice("cuda", total=8 * GiB) as fake:

        @auto_clear(every=1)
        def colorize(usage: float) -> None:
            fake.set_usage(usage)

        with managed_batch("cuda", memory_threshold=0.5, every=2, timeline=True) as batch:
            for usage in batch.track([0.9, 0.9, 0.9, 0.1]):
                colorize(usage)
    assert [entry.gc_ran for entry in batch.report.timeline] == [False, True, False, False]
    assert batch.report.gc_runs == 1


def test_timeline_on_the_cpu_has_no_byte_figures() -> None:
    """The CPU cannot tell allocated or reserved memory: those fields are None, and the usage
    is the host's share of its limit."""
    with managed_batch("cpu", timeline=True) as batch:
        batch.step()
    (entry,) = batch.report.timeline
    assert (entry.item, entry.allocated, entry.reserved) == (1, None, None)
    assert entry.host_resident is not None
    assert batch.report.host_limit is not None
    assert entry.usage == entry.host_resident / batch.report.host_limit


def test_report_carries_the_threshold() -> None:
    """The report records the threshold its manager collected at, for plots and readers."""
    with managed_batch(manager=RecordingManager(memory_threshold=0.65)) as batch:
        pass
    assert batch.report.memory_threshold == 0.65


# JSON ----------------------------------------------------------------------------------


def test_to_dict_with_a_timeline_is_json_serialisable() -> None:
    """to_dict() survives JSON unchanged, the timeline as a list of objects."""
    data = _report_with_gaps().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["timeline"][1] == {
        "item": 2,
        "seconds": 1.25,
        "usage": 0.85,
        "allocated": None,
        "reserved": None,
        "gc_ran": True,
        "host_resident": None,
    }


def test_json_round_trip(tmp_path: Path) -> None:
    """A report written with to_json() reads back equal, timeline included."""
    report = _cuda_report([0.2, 0.6, 0.3])
    path = report.to_json(tmp_path / "report.json")
    assert path == tmp_path / "report.json"
    assert json.loads(path.read_text())["items_per_second"] == report.items_per_second
    assert BatchReport.from_json(path) == report
    assert BatchReport.from_json(_report_with_gaps().to_json(tmp_path / "gaps.json")) == (
        _report_with_gaps()
    )


def test_from_dict_reads_reports_without_the_newer_fields() -> None:
    """A report dict from before the timeline existed still loads, with the defaults."""
    data = _report_with_gaps().to_dict()
    del data["timeline"], data["memory_threshold"], data["items_per_second"]
    report = BatchReport.from_dict(data)
    assert report.timeline == ()
    assert report.memory_threshold is None
    assert report.items == 2


def test_from_dict_reads_reports_without_host_peak_cleanups_or_cadence() -> None:
    """A report dict from before host peaks, cleanup counts and the cadence were recorded
    loads with host_resident_peak None, cleanups 0, every None and no host_resident."""
    data = _report_with_gaps().to_dict()
    del data["host_resident_peak"], data["cleanups"], data["every"]
    for entry in data["timeline"]:
        del entry["host_resident"]
    report = BatchReport.from_dict(data)
    assert (report.host_resident_peak, report.cleanups, report.every) == (None, 0, None)
    assert [entry.host_resident for entry in report.timeline] == [None, None]
    assert report == _report_with_gaps()


def test_host_peak_cleanups_cadence_and_host_timeline_round_trip_through_json(
    tmp_path: Path,
) -> None:
    """host_resident_peak, cleanups, every and each entry's host_resident survive to_json and
    from_json, and appear under their own names in the file."""
    report = dataclasses.replace(
        _report_with_gaps(),
        host_resident_start=1 * GiB,
        host_resident_end=2 * GiB,
        host_resident_peak=3 * GiB,
        host_limit=16 * GiB,
        cleanups=4,
        every=5,
        timeline=(
            TimelineEntry(item=1, seconds=0.5, usage=0.25, host_resident=GiB + 7),
            TimelineEntry(item=2, seconds=1.25, usage=0.85, host_resident=None),
        ),
    )
    path = report.to_json(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert (data["host_resident_peak"], data["cleanups"], data["every"]) == (3 * GiB, 4, 5)
    assert [entry["host_resident"] for entry in data["timeline"]] == [GiB + 7, None]
    assert BatchReport.from_json(path) == report


def test_from_dict_names_what_is_missing() -> None:
    """A dict that is not a report fails with the missing fields named."""
    data = _report_with_gaps().to_dict()
    del data["items"], data["device"]
    with pytest.raises(InvalidArgumentError, match="lacks 'device', 'items'"):
        BatchReport.from_dict(data)


def test_from_json_refuses_a_file_that_holds_no_object(tmp_path: Path) -> None:
    """A JSON file holding a list is not a report: a TypeError naming the file."""
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(InvalidArgumentTypeError, match=r"list\.json"):
        BatchReport.from_json(path)


# CSV -----------------------------------------------------------------------------------


def test_csv_has_a_header_and_one_row_per_item(tmp_path: Path) -> None:
    """to_csv() writes the timeline's columns, then one row per item in order."""
    report = _cuda_report([0.2, 0.6, 0.3])
    with report.to_csv(tmp_path / "timeline.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == CSV_COLUMNS
    assert [row[0] for row in rows[1:]] == ["1", "2", "3"]
    assert [float(row[2]) for row in rows[1:]] == pytest.approx([0.2, 0.6, 0.3])
    assert [int(row[3]) for row in rows[1:]] == [entry.allocated for entry in report.timeline]
    assert [row[5] for row in rows[1:]] == ["false", "true", "false"]
    assert [row[6] for row in rows[1:]] == ["", "", ""]


def test_csv_leaves_unknown_figures_empty(tmp_path: Path) -> None:
    """A figure the device could not tell is an empty cell, not 'None'."""
    with _report_with_gaps().to_csv(tmp_path / "timeline.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows[0]["reserved"] == ""
    assert rows[1]["allocated"] == ""
    assert rows[0]["allocated"] == str(2 * GiB)
    assert float(rows[1]["seconds"]) == 1.25


def test_csv_has_a_host_resident_column_empty_where_unknown(tmp_path: Path) -> None:
    """host_resident is the last column: the bytes where known, an empty cell where not."""
    report = dataclasses.replace(
        _report_with_gaps(),
        timeline=(
            TimelineEntry(item=1, seconds=0.5, usage=0.25, host_resident=300 * 1024**2),
            TimelineEntry(item=2, seconds=1.25, usage=0.85),
        ),
    )
    with report.to_csv(tmp_path / "timeline.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["host_resident"] for row in rows] == [str(300 * 1024**2), ""]
    assert [int(row["host_resident"]) for row in rows if row["host_resident"]] == [
        report.timeline[0].host_resident
    ]


def test_csv_without_a_timeline_is_just_the_header(tmp_path: Path) -> None:
    """A report without a timeline still writes a well-formed CSV."""
    with managed_batch(manager=RecordingManager()) as batch:
        batch.step()
    path = batch.report.to_csv(tmp_path / "timeline.csv")
    assert path.read_text().splitlines() == [",".join(CSV_COLUMNS)]


# The plot ------------------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """report.plot() writes a PNG file."""
    pytest.importorskip("matplotlib")
    path = _cuda_report([0.2, 0.6, 0.3]).plot(tmp_path / "timeline.png")
    assert path == tmp_path / "timeline.png"
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_shows_usage_threshold_and_gc_runs() -> None:
    """The plot draws usage over items, the threshold as a line, GC runs as markers."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    report = _cuda_report([0.2, 0.6, 0.3, 0.7, 0.1], threshold=0.5)
    figure = draw_timeline(report)
    usage_axes, bytes_axes = figure.axes
    lines = {line.get_label(): line for line in usage_axes.get_lines()}
    assert list(lines["device memory usage"].get_xdata()) == [1, 2, 3, 4, 5]
    assert list(lines["device memory usage"].get_ydata()) == pytest.approx(
        [0.2, 0.6, 0.3, 0.7, 0.1]
    )
    assert list(lines["GC threshold (50%)"].get_ydata()) == [0.5, 0.5]
    (gc_markers,) = usage_axes.collections
    assert gc_markers.get_label() == "GC ran"
    assert gc_markers.get_offsets().tolist() == [[2, pytest.approx(0.6)], [4, pytest.approx(0.7)]]
    assert {line.get_label() for line in bytes_axes.get_lines()} == {"allocated", "reserved"}
    assert usage_axes.get_ylabel() == "device memory usage"
    assert bytes_axes.get_xlabel() == "item"
    assert figure.get_suptitle().startswith("memscope: cuda:0, 5 items")


def test_plot_of_a_cpu_batch_without_host_figures_says_the_cpu_reports_none() -> None:
    """A CPU report with neither device nor host figures says why its line sits at zero."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    report = BatchReport(
        device="cpu",
        items=1,
        calls=1,
        failures=0,
        cleanup_failures=0,
        elapsed_seconds=0.1,
        usage_start=0.0,
        usage_end=0.0,
        peak_allocated=None,
        peak_reserved=None,
        cache_clears=0,
        gc_runs=0,
        gc_seconds=0.0,
        timeline=(TimelineEntry(item=1, seconds=0.1, usage=0.0),),
    )
    figure = draw_timeline(report)
    (usage_axes,) = figure.axes
    texts = [text.get_text() for text in usage_axes.texts]
    assert texts == ["cpu reports no memory figures: usage reads 0%"]
    assert usage_axes.get_xlabel() == "item"


def test_plot_without_a_timeline_says_how_to_record_one() -> None:
    """A report without a timeline plots a note naming timeline=True, and no item numbers
    (there are no items to number)."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    with managed_batch(manager=RecordingManager()) as batch:
        batch.step()
    axes = draw_timeline(batch.report).axes[0]
    assert any("timeline=True" in text.get_text() for text in axes.texts)
    assert list(axes.get_xticks()) == []


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib, plot() raises an ImportError naming pip install 'memscope[plot]'."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'memscope\[plot\]'"):
        _report_with_gaps().plot(tmp_path / "timeline.png")
    assert not (tmp_path / "timeline.png").exists()


# Units, the terminal text and the host panel's range ---------------------------------------

MiB = 1024**2


def test_json_says_what_each_figure_is_measured_in(tmp_path: Path) -> None:
    """The JSON file's ``units`` map names bytes, seconds and bytes per item, and says what
    usage is a share of; the figures keep their names."""
    data = json.loads(_report_with_gaps().to_json(tmp_path / "report.json").read_text())
    units = data["units"]
    assert units["memory_growth_per_item"].startswith("bytes per item")
    assert units["peak_allocated"] == "bytes"
    assert units["elapsed_seconds"] == "seconds"
    assert units["timeline"]["host_resident"] == "bytes"
    assert "budget" in units["usage_start"]
    assert "host's limit" in units["usage_start"]
    assert data["peak_allocated"] == 3 * GiB


def test_from_json_reads_files_with_and_without_units(tmp_path: Path) -> None:
    """A file written before the units map and one written with it read back the same."""
    report = _report_with_gaps()
    new = report.to_json(tmp_path / "new.json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report.to_dict()))
    assert "units" not in json.loads(old.read_text())
    assert BatchReport.from_json(new) == BatchReport.from_json(old) == report


def _cpu_report(residents: list[int], *, limit: int | None = None) -> BatchReport:
    """A CPU batch that watched the host: resident memory ``residents[i]`` after item i+1."""
    return dataclasses.replace(
        _report_with_gaps(),
        device="cpu",
        usage_start=0.0,
        usage_end=0.0,
        peak_allocated=None,
        peak_reserved=None,
        host_resident_start=residents[0],
        host_resident_end=residents[-1],
        host_resident_peak=max(residents),
        host_limit=limit,
        items=len(residents),
        timeline=tuple(
            TimelineEntry(item=index + 1, seconds=0.1 * index, usage=0.0, host_resident=value)
            for index, value in enumerate(residents)
        ),
    )


def test_str_of_a_report_is_a_few_short_lines() -> None:
    """``str(report)`` is a head line and labelled lines of at most 100 characters, while
    ``summary()`` stays one line for logs."""
    report = dataclasses.replace(
        _cpu_report([288 * MiB, 380 * MiB, 473 * MiB], limit=int(23.5 * GiB)),
        memory_growth_per_item=8.0 * MiB,
        budget=461 * MiB,
        skipped=2,
        failures=1,
    )
    lines = str(report).splitlines()
    assert lines[0] == "cpu: 3 items in 1.50 s (2.00 items/s)"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  host",
        "  memory growth",
        "  cleanup",
        "  failures",
        "  earlier runs",
    ]
    assert all(len(line) <= 100 for line in lines), lines
    assert lines[1] == (
        "  host: resident 288.0 MiB -> 473.0 MiB (peak 473.0 MiB) of 23.5 GiB limit"
    )
    assert lines[2] == "  memory growth: 8.0 MiB/item"
    assert lines[3] == "  cleanup: 3 cache clears, 1 GC run (60 ms); budget 461.0 MiB"
    assert "\n" not in report.summary()
    assert report.summary().startswith("cpu: 3 items in 1.50 s (2.00 items/s), host memory")


def test_the_host_panel_scales_to_the_data_not_to_a_far_limit() -> None:
    """90 MiB of growth under a 23.5 GiB limit fills the panel: the y range is the data's,
    in MiB, the limit is named in the axis label and drawn as no line."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    residents = [300 * MiB + step * 10 * MiB for step in range(10)]
    (axes,) = draw_timeline(_cpu_report(residents, limit=int(23.5 * GiB))).axes
    bottom, top = axes.get_ylim()
    assert 280 <= bottom < 300
    assert 390 < top <= 410
    assert axes.get_ylabel() == "host memory (MiB; limit 23.5 GiB)"
    assert [line.get_label() for line in axes.get_lines()] == ["host memory (resident)"]


def test_the_host_panel_draws_a_limit_in_range_as_a_line() -> None:
    """A limit just above the data is drawn as a line, inside the y range."""
    pytest.importorskip("matplotlib")
    from memscope.reports._plot import draw_timeline

    residents = [300 * MiB + step * 10 * MiB for step in range(10)]
    (axes,) = draw_timeline(_cpu_report(residents, limit=420 * MiB)).axes
    labels = [line.get_label() for line in axes.get_lines()]
    assert "limit (420.0 MiB)" in labels
    assert axes.get_ylim()[1] > 420
    assert axes.get_ylabel() == "host memory (MiB)"


def test_the_legend_stands_beside_the_data() -> None:
    """Every panel's legend is drawn to the right of its axes, never over the lines."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from memscope.reports._plot import draw_timeline

    for report in (_cpu_report([300 * MiB, 310 * MiB], limit=320 * MiB), _report_with_gaps()):
        figure = draw_timeline(report)
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        for axes in figure.axes:
            legend = axes.get_legend()
            assert legend is not None
            assert legend.get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1
