"""The Ray job's report without a cluster: the collector's records, the rows, the exports."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from memscope import BatchReport, InvalidArgumentError, InvalidArgumentTypeError
from memscope.ray import ActorBatchReport, ActorReport, RayJobReport
from memscope.ray._collector import (
    CLOSED,
    CONSTRUCTION_FAILED,
    FINISHED,
    READY,
    REGISTER,
    STARTED,
    CollectorState,
    job_report,
)
from memscope.reports import CombinedReport
from memscope.testing import GiB, MiB


def batch_report(**changes: Any) -> BatchReport:
    """One Ray batch's report on a GPU, with plain figures, changed where the test says."""
    figures: dict[str, Any] = {
        "device": "cuda:0",
        "items": 32,
        "calls": 0,
        "failures": 0,
        "cleanup_failures": 0,
        "elapsed_seconds": 2.0,
        "usage_start": 0.1,
        "usage_end": 0.2,
        "peak_allocated": 3 * GiB,
        "peak_reserved": 4 * GiB,
        "cache_clears": 1,
        "gc_runs": 1,
        "gc_seconds": 0.01,
        "cleanups": 2,
        "ooms": 0,
    }
    figures.update(changes)
    return BatchReport(**figures)


def actor_report(batches: int = 2, **changes: Any) -> ActorBatchReport:
    """An actor's figures after ``batches`` Ray batches of 32 rows, otherwise as
    :func:`batch_report` with the changes."""
    figures: dict[str, Any] = {"items": 32 * batches, "elapsed_seconds": 2.0 * batches}
    figures.update(changes)
    return ActorBatchReport.of(
        batch_report(**figures),
        batches=batches,
        split_batches=0,
        failed_batches=0,
        chunk_size=None,
        busy_seconds=1.0 * batches,
    )


def identity(actor: str | None, worker: str, **changes: Any) -> dict[str, Any]:
    """What a worker registers with."""
    data: dict[str, Any] = {
        "actor_id": actor,
        "node_id": "node-1",
        "node_ip": "10.0.0.1",
        "host": "gpu-host-1",
        "pid": 100,
        "gpu_ids": ["3"],
        "device": "cuda:0",
        "function": "Colorize",
        "constructing": actor is not None,
    }
    data.update(changes)
    return data


def finished(batch: int, report: ActorBatchReport | None, failure: str | None = None) -> Any:
    """What a worker sends when a batch ends."""
    return {"batch": batch, "report": report, "failure": failure}


# An actor's figures ----------------------------------------------------------------------


def test_an_actors_figures_are_its_batch_s_with_the_ray_batches_counted() -> None:
    """Every BatchReport figure is the actor's batch's as given; the Ray figures are added."""
    so_far = batch_report(items=64, ooms=2, peak_allocated=5 * GiB, usage_end=0.25)
    report = ActorBatchReport.of(so_far, batches=2, split_batches=2, failed_batches=1, chunk_size=8)
    for report_field in dataclasses.fields(BatchReport):
        assert getattr(report, report_field.name) == getattr(so_far, report_field.name)
    assert (report.batches, report.split_batches, report.failed_batches) == (2, 2, 1)
    assert report.chunk_size == 8


def test_actor_report_round_trips_through_a_dict() -> None:
    """An actor's report survives the trip to the collector (to_dict, from_dict)."""
    report = ActorBatchReport.of(
        batch_report(ooms=1), batches=1, split_batches=1, failed_batches=0, chunk_size=4
    )
    assert ActorBatchReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


# The collector's records ---------------------------------------------------------------


def collect(messages: list[tuple[str, str, Any]]) -> RayJobReport:
    """The report of a collector that received ``messages`` (worker, kind, data) in order."""
    state = CollectorState()
    for worker, kind, data in messages:
        state.record(worker, kind, data)
    count, records = state.records()
    assert count == len(messages)
    return job_report(records)


def test_two_actors_are_two_rows_in_the_order_they_started() -> None:
    """Each actor is a row with its node, device and figures; rank is the row's position."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w2", REGISTER, identity("a2", "w2", gpu_ids=["5"])),
            ("w1", READY, None),
            ("w2", READY, None),
            ("w1", STARTED, {"batch": 1, "rows": 32}),
            ("w1", FINISHED, finished(1, actor_report(1, ooms=3))),
            ("w2", STARTED, {"batch": 1, "rows": 32}),
            ("w2", FINISHED, finished(1, actor_report(1))),
            ("w1", CLOSED, None),
        ]
    )
    assert isinstance(report, CombinedReport)
    assert [row.actor_id for row in report.actors] == ["a1", "a2"]
    assert [row.rank for row in report.actors] == [0, 1]
    first, second = report.actors
    assert first.host == "gpu-host-1"
    assert first.node_ip == "10.0.0.1"
    assert second.gpu_ids == ("5",)
    assert first.closed
    assert not second.closed
    assert report.failed_ranks == ()
    assert report.totals["items"] == 64
    assert report.totals["ooms"] == 3
    assert report.totals["batches"] == 2


def test_a_graceful_close_brings_the_actor_s_final_figures() -> None:
    """The message of an actor shut down gracefully replaces its figures with the final ones
    (its batch's last cleanup counted) and marks it closed."""
    final = actor_report(1, cleanups=3)
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", READY, None),
            ("w1", STARTED, {"batch": 1, "rows": 32}),
            ("w1", FINISHED, finished(1, actor_report(1, cleanups=2))),
            ("w1", CLOSED, {"report": final}),
        ]
    )
    [row] = report.actors
    assert row.report == final
    assert row.closed
    assert row.error is None


def test_a_restarted_actor_shows_the_incarnation_that_died() -> None:
    """Ray restarts a dead actor under the same id: the dead incarnation stays, marked died."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", READY, None),
            ("w1", STARTED, {"batch": 1, "rows": 32}),
            ("w1", FINISHED, finished(1, actor_report(1))),
            ("w1", STARTED, {"batch": 2, "rows": 32}),
            ("w9", REGISTER, identity("a1", "w9", pid=200)),
            ("w9", READY, None),
            ("w9", STARTED, {"batch": 1, "rows": 32}),
            ("w9", FINISHED, finished(1, actor_report(1))),
        ]
    )
    dead, alive = report.actors
    assert (dead.actor_id, dead.incarnation, dead.worker_id) == ("a1", 0, "w1")
    assert (alive.actor_id, alive.incarnation, alive.pid) == ("a1", 1, 200)
    assert dead.error == "died during batch 2; Ray restarted it as incarnation 1"
    assert alive.error is None
    assert report.failed_ranks == (0,)
    assert report.died == (dead,)
    # What the dead incarnation finished before it died still counts.
    assert report.totals["items"] == 64


def test_an_actor_silent_in_the_middle_of_a_batch_is_reported_lost() -> None:
    """An actor that started a batch and sent nothing since is not shown as fine."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", READY, None),
            ("w1", STARTED, {"batch": 1, "rows": 32}),
        ]
    )
    [row] = report.actors
    assert row.error is not None
    assert row.error.startswith("lost during batch 1")
    assert row.report is None


def test_a_constructor_that_raised_is_reported() -> None:
    """An actor whose constructor raised is a row that says so."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", CONSTRUCTION_FAILED, "OSError: no checkpoint"),
        ]
    )
    [row] = report.actors
    assert row.error == "died while being constructed: OSError: no checkpoint"
    assert not row.closed


def test_a_failed_batch_is_shown_without_marking_the_actor_dead() -> None:
    """A batch that raised is the actor's last failure; the actor itself is fine."""
    failed = ActorBatchReport.of(
        batch_report(), batches=1, split_batches=0, failed_batches=1, chunk_size=None
    )
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", STARTED, {"batch": 1, "rows": 32}),
            ("w1", FINISHED, finished(1, failed, "ValueError: bad row")),
        ]
    )
    [row] = report.actors
    assert row.error is None
    assert row.last_failure == "ValueError: bad row"
    assert report.totals["failed_batches"] == 1


def test_task_workers_are_one_row_each() -> None:
    """A function run in Ray tasks has no actor: each worker process is a row of its own."""
    report = collect(
        [
            ("w1", REGISTER, identity(None, "w1")),
            ("w2", REGISTER, identity(None, "w2")),
            ("w1", FINISHED, finished(1, actor_report(1))),
        ]
    )
    assert [row.worker_id for row in report.actors] == ["w1", "w2"]
    assert [row.incarnation for row in report.actors] == [0, 0]
    assert report.failed_ranks == ()
    assert report.actors[0].label.startswith("task worker")


def test_messages_from_an_unregistered_worker_still_make_a_row() -> None:
    """A worker whose registration was lost is shown with what it sent."""
    report = collect([("w7", FINISHED, finished(1, actor_report(1)))])
    [row] = report.actors
    assert row.worker_id == "w7"
    assert row.report is not None


def test_unknown_messages_are_ignored() -> None:
    """A message of an unknown kind changes no record."""
    state = CollectorState()
    state.record("w1", "gossip", {"x": 1})
    assert state.records() == (1, [])


# Showing and exporting ------------------------------------------------------------------


def sample_report() -> RayJobReport:
    """Two actors, one of which died and was restarted."""
    return collect(
        [
            ("w1", REGISTER, identity("a1aaaaaaaaaa", "w1")),
            ("w1", FINISHED, finished(1, actor_report(2, ooms=1))),
            ("w1", STARTED, {"batch": 3, "rows": 32}),
            ("w2", REGISTER, identity("b2bbbbbbbbbb", "w2", host="gpu-host-2", node_id="node-2")),
            ("w2", FINISHED, finished(1, actor_report(3, peak_allocated=6 * GiB))),
            ("w3", REGISTER, identity("a1aaaaaaaaaa", "w3")),
            ("w3", FINISHED, finished(1, actor_report(1, peak_allocated=512 * MiB))),
        ]
    )


def test_table_has_a_row_per_actor_and_the_totals() -> None:
    """The table names each actor and its host, its figures, and the job's totals."""
    text = str(sample_report())
    lines = text.splitlines()
    assert lines[0] == "memscope report of 3 Ray actor(s) on 2 node(s)"
    assert lines[1].split()[:5] == ["actor", "host", "device", "batches", "rows"]
    assert lines[2].startswith("a1aaaaaa#0  gpu-host-1  cuda:0 (GPU 3)")
    assert lines[2].split()[5:8] == ["2", "64", "32.0"]  # batches, rows, rows per busy second
    assert "died during batch 3; Ray restarted it as incarnation 1" in lines[2]
    assert lines[3].startswith("b2bbbbbb#0  gpu-host-2")
    assert "6.0 GiB" in lines[3]
    assert lines[4].startswith("a1aaaaaa#1")
    assert lines[5].split()[:3] == ["all", "6", "192"]
    assert lines[5].endswith("1 of 3 died")


def test_json_round_trip(tmp_path: Path) -> None:
    """to_json writes the combined report's shape, with kind 'ray'; from_json reads it back."""
    report = sample_report()
    path = report.to_json(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["kind"] == "ray"
    assert data["world_size"] == 3
    assert data["failed_ranks"] == [0]
    assert data["ranks"][0]["actor_id"] == "a1aaaaaaaaaa"
    assert data["ranks"][0]["report"]["batches"] == 2
    assert RayJobReport.from_json(path) == report


def test_csv_has_identity_and_figures(tmp_path: Path) -> None:
    """to_csv writes one row per actor and a totals row, identity first, then the figures."""
    path = sample_report().to_csv(tmp_path / "report.csv")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["rank"] for row in rows] == ["0", "1", "2", "all"]
    assert rows[0]["actor_id"] == "a1aaaaaaaaaa"
    assert rows[0]["status"].startswith("died")
    assert rows[1]["host"] == "gpu-host-2"
    assert rows[1]["gpu_ids"] == "3"
    assert rows[1]["device"] == "cuda:0"
    assert rows[1]["peak_allocated"] == str(6 * GiB)
    assert rows[3]["items"] == "192"
    assert rows[3]["batches"] == "6"
    assert rows[3]["status"] == "1 died"


def test_from_dict_refuses_what_is_not_a_ray_report() -> None:
    """Reading something else as a Ray job report fails clearly."""
    with pytest.raises(InvalidArgumentTypeError, match="ranks"):
        RayJobReport.from_dict({"world_size": 2})


def test_from_json_refuses_a_file_that_is_not_json(tmp_path: Path) -> None:
    """A file that is not JSON is named in the error."""
    path = tmp_path / "report.json"
    path.write_text("not json")
    with pytest.raises(InvalidArgumentError, match=r"report\.json"):
        RayJobReport.from_json(path)


def test_actor_row_round_trips_through_a_dict() -> None:
    """An actor's row keeps its identity through to_dict and from_dict."""
    row = sample_report().actors[0]
    assert ActorReport.from_dict(json.loads(json.dumps(row.to_dict()))) == row
