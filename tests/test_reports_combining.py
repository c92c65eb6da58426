"""How reports combine across ranks: declared once, as metadata on BatchReport's fields."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import memscope.reports
from memscope import BatchReport, InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports import CombinedReport, RankReport, TimelineEntry
from memscope.testing import GiB, MiB

EXPECTED_RULES = {
    "items": "sum",
    "calls": "sum",
    "failures": "sum",
    "cleanup_failures": "sum",
    "elapsed_seconds": "max",
    "peak_allocated": "max",
    "peak_reserved": "max",
    "cache_clears": "sum",
    "gc_runs": "sum",
    "gc_seconds": "sum",
    "host_resident_peak": "max",
    "ooms": "sum",
    "oom_retries": "sum",
    "batch_size_reductions": "sum",
    "allocator_ooms": "sum",
    "allocator_ooms_recovered": "sum",
    "largest_oom_request": "max",
    "alloc_retries": "sum",
    "cleanups": "sum",
    "skipped": "sum",
    "skipped_failed": "sum",
    "retried": "sum",
    "memory_growth_per_item": "max",
}
"""The combine rule of every BatchReport field that has one; the others have none."""


def make_report(**changes: Any) -> BatchReport:
    """A GPU batch report with plain figures, changed where the test says."""
    figures: dict[str, Any] = {
        "device": "cuda:0",
        "items": 10,
        "calls": 10,
        "failures": 0,
        "cleanup_failures": 0,
        "elapsed_seconds": 2.0,
        "usage_start": 0.1,
        "usage_end": 0.2,
        "peak_allocated": 3 * GiB,
        "peak_reserved": 4 * GiB,
        "cache_clears": 2,
        "gc_runs": 1,
        "gc_seconds": 0.5,
    }
    figures.update(changes)
    return BatchReport(**figures)


def combine(*reports: BatchReport | None) -> CombinedReport:
    """The combined report of ranks 0, 1, ... holding ``reports`` (``None``: a failed rank)."""
    return CombinedReport(
        tuple(
            RankReport(rank, "node-a", report, error=None if report else "RuntimeError: x")
            for rank, report in enumerate(reports)
        )
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ReportWithImageFigures(BatchReport):
    """A report that gains figures later, each declaring (or not) how it combines."""

    images_skipped: int = dataclasses.field(default=0, metadata={"combine": "sum"})
    largest_image: int | None = dataclasses.field(default=None, metadata={"combine": "max"})
    retried_pixels: int | None = dataclasses.field(default=None, metadata={"combine": "sum"})
    model_name: str = "unet"


def vars_of(report: BatchReport) -> dict[str, Any]:
    """A report's fields as keyword arguments (slots dataclasses have no ``__dict__``)."""
    return {field.name: getattr(report, field.name) for field in dataclasses.fields(report)}


def rules_of(report_type: type[BatchReport]) -> dict[str, str]:
    """The ``combine`` metadata of ``report_type``'s fields, read straight from dataclasses."""
    return {
        field.name: field.metadata["combine"]
        for field in dataclasses.fields(report_type)
        if "combine" in field.metadata
    }


def test_batch_report_fields_declare_how_they_combine() -> None:
    """Counts are summed, peaks and elapsed time take the largest rank's, per-rank figures
    (device, usage, cadence, limits) have no rule."""
    assert rules_of(BatchReport) == EXPECTED_RULES
    unruled = {field.name for field in dataclasses.fields(BatchReport)} - EXPECTED_RULES.keys()
    assert {"device", "usage_start", "every", "host_limit", "rank", "timeline"} <= unruled


def test_totals_hold_exactly_the_fields_with_a_rule_in_field_order() -> None:
    """totals has one key per field with combine metadata, in the order the fields are
    declared, and nothing for fields without it."""
    totals = combine(make_report(), make_report()).totals
    assert list(totals) == list(EXPECTED_RULES)
    assert "every" not in totals
    assert "usage_start" not in totals


def test_sum_fields_add_up_and_max_fields_take_the_largest() -> None:
    """Cleanups add up and the host peak is the largest rank's, as their metadata says."""
    totals = combine(
        make_report(cleanups=3, host_resident_peak=2 * GiB, every=5),
        make_report(cleanups=4, host_resident_peak=5 * GiB, every=7),
    ).totals
    assert totals["cleanups"] == 7
    assert totals["host_resident_peak"] == 5 * GiB
    assert totals["items"] == 20
    assert totals["elapsed_seconds"] == 2.0


def test_figures_no_rank_has_total_none_and_sums_over_no_reports_are_zero() -> None:
    """A peak no rank knows totals None; with no reports at all counts total 0."""
    assert combine(make_report(), make_report()).totals["host_resident_peak"] is None
    totals = combine(None, None).totals
    assert totals["items"] == 0
    assert totals["cleanups"] == 0
    assert totals["peak_allocated"] is None


def test_a_figure_added_with_metadata_is_totalled_with_no_other_change() -> None:
    """A subclass field with combine metadata is summed or maxed; one without is not."""
    combined = combine(
        ReportWithImageFigures(**vars_of(make_report()), images_skipped=2, largest_image=3 * MiB),
        ReportWithImageFigures(**vars_of(make_report()), images_skipped=5, largest_image=MiB),
    )
    totals = combined.totals
    assert totals["images_skipped"] == 7
    assert totals["largest_image"] == 3 * MiB
    assert totals["retried_pixels"] is None
    assert "model_name" not in totals
    assert totals["items"] == 20


def test_a_figure_added_with_metadata_is_totalled_beside_plain_reports() -> None:
    """Ranks with plain reports and ranks with the subclass combine; the plain ones add
    nothing to the new figure."""
    totals = combine(
        make_report(),
        ReportWithImageFigures(**vars_of(make_report()), images_skipped=2),
    ).totals
    assert totals["images_skipped"] == 2
    assert totals["items"] == 20


def test_unknown_combine_rule_is_refused_naming_the_field_and_value() -> None:
    """A field declaring combine="mean" makes totals fail with the field and rule named."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class ReportWithAverage(BatchReport):
        mean_item_seconds: float = dataclasses.field(default=0.0, metadata={"combine": "mean"})

    combined = combine(ReportWithAverage(**vars_of(make_report())))
    with pytest.raises(InvalidArgumentError, match=r"mean_item_seconds.*combine='mean'"):
        _ = combined.totals


def test_field_name_lists_are_gone_from_the_public_namespace() -> None:
    """The metadata replaces SUMMED_FIELDS and LARGEST_FIELDS: neither is exported."""
    assert "SUMMED_FIELDS" not in memscope.reports.__all__
    assert "LARGEST_FIELDS" not in memscope.reports.__all__
    assert not hasattr(memscope.reports, "SUMMED_FIELDS")


def test_table_totals_row_follows_the_metadata() -> None:
    """items/s has no rule and no total; the peaks' totals are the largest rank's."""
    table = combine(
        make_report(host_resident_peak=GiB), make_report(peak_allocated=5 * GiB)
    ).table()
    header, rank_0, rank_1, totals = table.splitlines()[1:]
    assert "items/s" in header
    assert "peak resident" in header
    cells = totals.split()
    assert cells[:2] == ["all", "20"]
    assert "5.0 GiB" in totals
    assert "1.0 GiB" in totals
    # The rank rows give items/s (10 items in 2 s); the totals row leaves its cell empty.
    assert "5.00" in rank_0
    assert "5.00" in rank_1
    assert "5.00" not in totals


def test_table_leaves_out_columns_no_rank_has_a_figure_for() -> None:
    """A CPU job's table has no peak allocated column; a GPU job unwatched on the host has
    no peak resident column."""
    cpu = make_report(
        device="cpu", peak_allocated=None, peak_reserved=None, host_resident_peak=2 * GiB
    )
    cpu_header = combine(cpu, cpu).table().splitlines()[1]
    assert "peak allocated" not in cpu_header
    assert "peak resident" in cpu_header
    gpu_header = combine(make_report()).table().splitlines()[1]
    assert "peak allocated" in gpu_header
    assert "peak resident" not in gpu_header


def test_timeline_is_kept_per_rank_not_combined() -> None:
    """Each rank's timeline stays in its row's report; totals have no timeline."""
    entry = TimelineEntry(item=1, seconds=0.1, usage=0.5, host_resident=GiB)
    combined = combine(make_report(timeline=(entry,)), make_report())
    assert "timeline" not in combined.totals
    assert combined.ranks[0].report is not None
    assert combined.ranks[0].report.timeline == (entry,)


# The one job report's files ---------------------------------------------------------------


def test_combined_report_round_trips_through_json(tmp_path: Path) -> None:
    """to_json writes the rows with kind torch.distributed; from_json rebuilds an equal report."""
    combined = combine(make_report(cleanups=3), None)
    path = combined.to_json(tmp_path / "job.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "torch.distributed"
    assert data["failed_ranks"] == [1]
    assert CombinedReport.from_json(path) == combined
    assert CombinedReport.from_dict(combined.to_dict()) == combined


def test_combined_report_csv_has_a_line_per_rank_and_the_totals(tmp_path: Path) -> None:
    """to_csv writes rank, host, status and error, then the device and the figures, and a
    totals line whose rank is all."""
    path = combine(make_report(items=10), make_report(items=6), None).to_csv(tmp_path / "j.csv")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0])[:5] == ["rank", "host", "status", "error", "device"]
    assert [row["rank"] for row in rows] == ["0", "1", "2", "all"]
    assert [row["items"] for row in rows] == ["10", "6", "", "16"]
    assert rows[0]["items_per_second"] == "5"
    assert rows[2]["status"] == "failed: RuntimeError: x"
    assert rows[3]["status"] == "1 failed"
    assert rows[3]["peak_allocated"] == str(3 * GiB)


def test_a_ray_job_report_is_not_read_as_a_rank_report() -> None:
    """from_dict refuses a report of another kind and names the class that reads it."""
    data = combine(make_report()).to_dict()
    data["kind"] = "ray"
    with pytest.raises(InvalidArgumentError, match=r"'ray'.*RayJobReport"):
        CombinedReport.from_dict(data)


def test_from_dict_refuses_what_is_not_a_job_report() -> None:
    """A dict without a list of rows is a type error naming what was expected."""
    with pytest.raises(InvalidArgumentTypeError, match="ranks"):
        CombinedReport.from_dict({"world_size": 2})


def test_from_json_names_a_file_that_is_not_json(tmp_path: Path) -> None:
    """A file that is not JSON is named in the error."""
    path = tmp_path / "job.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match=r"job\.json"):
        CombinedReport.from_json(path)


def test_a_subclass_declares_its_own_column() -> None:
    """A column made with CombinedReport.column shows each row's figure and its total."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class ImageJobReport(CombinedReport):
        columns = (
            *CombinedReport.columns,
            CombinedReport.column("skipped", lambda report: report.skipped, total="skipped"),
        )

    table = ImageJobReport(combine(make_report(skipped=2), make_report(skipped=5)).ranks).table()
    header, first, second, totals = table.splitlines()[1:]
    assert header.split()[-2:] == ["skipped", "status"]
    assert first.split()[-2:] == ["2", "ok"]
    assert second.split()[-2:] == ["5", "ok"]
    assert totals.split()[-2:] == ["7", "ok"]
