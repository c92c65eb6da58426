"""The Ray job's report without a cluster: the collector's records, the rows, the exports."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

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


def test_csv_joins_an_actors_gpu_ids(tmp_path: Path) -> None:
    """An actor given two GPUs has both in its CSV cell, joined by a semicolon."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1aaaaaaaaaa", "w1", gpu_ids=["0", "1"])),
            ("w1", FINISHED, finished(1, actor_report(1))),
        ]
    )
    with report.to_csv(tmp_path / "report.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows[0]["gpu_ids"] == "0;1"
    assert rows[0]["incarnation"] == "0"


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


# Rows counted once across block retries ---------------------------------------------------


def started(batch: int, block: str | None = None) -> Any:
    """What a worker sends when a batch of 20 rows whose content is named ``block`` starts."""
    return {"batch": batch, "rows": 20, "block": block}


def rows_so_far(batches: int) -> ActorBatchReport:
    """An actor's figures after ``batches`` Ray batches of 20 rows."""
    return actor_report(batches, items=20 * batches)


def block_messages(
    worker: str, block: str, batches: int, *, done_before: int = 0, first: int = 0
) -> list[tuple[str, str, Any]]:
    """``worker`` running batches ``first``... of ``block`` (20 rows each), after
    ``done_before`` batches of its own."""
    messages: list[tuple[str, str, Any]] = []
    for offset in range(batches):
        number = done_before + offset + 1
        messages.append((worker, STARTED, started(number, f"{block}-{first + offset}")))
        messages.append((worker, FINISHED, finished(number, rows_so_far(number))))
    return messages


def test_a_block_retried_after_its_actor_died_counts_its_rows_once() -> None:
    """200 rows in 2 blocks of 5 batches; the actor running block A dies on its third batch,
    and Ray runs block A again on the restarted actor: 200 rows, 40 of them redone."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w2", REGISTER, identity("a2", "w2")),
            *block_messages("w1", "A", 2),
            ("w1", STARTED, started(3, "A-2")),
            *block_messages("w2", "B", 5),
            ("w9", REGISTER, identity("a1", "w9")),
            *block_messages("w9", "A", 5),
        ]
    )
    dead, other, restarted = report.actors
    assert report.totals["items"] == 200
    assert report.totals["redone_rows"] == 40
    assert dead.batch_report is not None
    assert (dead.batch_report.items, dead.batch_report.redone_rows) == (0, 40)
    assert other.batch_report is not None
    assert (other.batch_report.items, other.batch_report.redone_rows) == (100, 0)
    assert restarted.batch_report is not None
    assert (restarted.batch_report.items, restarted.batch_report.redone_rows) == (100, 0)
    # The work is still shown: the dead incarnation ran its 2 batches.
    assert dead.batch_report.batches == 2
    assert dead.error == "died during batch 3; Ray restarted it as incarnation 1"


def test_only_the_block_that_ran_again_moves_the_dead_actor_s_rows() -> None:
    """The blocks an actor finished before the one it died in keep their rows."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            *block_messages("w1", "A", 2),
            *block_messages("w1", "B", 1, done_before=2),
            ("w1", STARTED, started(4, "B-1")),
            ("w2", REGISTER, identity("a1", "w2")),
            *block_messages("w2", "B", 3),
            *block_messages("w2", "C", 2, done_before=3),
        ]
    )
    dead, restarted = report.actors
    assert dead.batch_report is not None
    assert (dead.batch_report.items, dead.batch_report.redone_rows) == (40, 20)
    assert restarted.batch_report is not None
    assert restarted.batch_report.items == 100
    assert report.totals["items"] == 140


def test_a_block_that_died_twice_counts_from_the_incarnation_that_finished_it() -> None:
    """Block A dies after 2 batches, then after 1 on the restart; the third run finishes it."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            *block_messages("w1", "A", 2),
            ("w2", REGISTER, identity("a1", "w2")),
            *block_messages("w2", "A", 1),
            ("w3", REGISTER, identity("a1", "w3")),
            *block_messages("w3", "A", 5),
        ]
    )
    first, second, third = (row.batch_report for row in report.actors)
    assert first is not None
    assert second is not None
    assert third is not None
    assert [(row.items, row.redone_rows) for row in (first, second, third)] == [
        (0, 40),
        (0, 20),
        (100, 0),
    ]
    assert report.totals["items"] == 100


def test_an_actor_that_lived_keeps_every_row_however_its_batches_look() -> None:
    """Only incarnations that died give rows up: equal batches of a live actor all count."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", STARTED, started(1, "same")),
            ("w1", FINISHED, finished(1, rows_so_far(1))),
            ("w1", STARTED, started(2, "same")),
            ("w1", FINISHED, finished(2, rows_so_far(2))),
            ("w1", CLOSED, None),
            ("w2", REGISTER, identity("a2", "w2")),
            ("w2", STARTED, started(1, "same")),
            ("w2", FINISHED, finished(1, rows_so_far(1))),
        ]
    )
    assert report.totals["items"] == 60
    assert report.totals["redone_rows"] == 0


def test_a_restart_that_began_with_other_batches_moves_nothing() -> None:
    """A dead incarnation whose last batches the next one did not begin with keeps its rows."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            *block_messages("w1", "A", 2),
            ("w2", REGISTER, identity("a1", "w2")),
            *block_messages("w2", "B", 5),
        ]
    )
    assert report.totals["items"] == 140
    assert report.totals["redone_rows"] == 0


def test_a_task_worker_lost_mid_block_gives_up_the_batches_another_worker_ran() -> None:
    """For a function in Ray tasks, the block a lost worker was in may run anywhere."""
    report = collect(
        [
            ("w1", REGISTER, identity(None, "w1")),
            *block_messages("w1", "A", 2),
            ("w1", STARTED, started(3, "A-2")),
            ("w2", REGISTER, identity(None, "w2")),
            *block_messages("w2", "B", 2),
            *block_messages("w2", "A", 5, done_before=2),
        ]
    )
    lost, other = report.actors
    assert lost.batch_report is not None
    assert (lost.batch_report.items, lost.batch_report.redone_rows) == (0, 40)
    assert other.batch_report is not None
    assert other.batch_report.items == 140
    assert report.totals["items"] == 140


def test_unnamed_batches_always_count() -> None:
    """Batches sent without a name cannot be matched to a retry: each counts."""
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", STARTED, {"batch": 1, "rows": 20}),
            ("w1", FINISHED, finished(1, rows_so_far(1))),
            ("w2", REGISTER, identity("a1", "w2")),
            ("w2", STARTED, {"batch": 1, "rows": 20}),
            ("w2", FINISHED, finished(1, rows_so_far(1))),
        ]
    )
    assert report.totals["items"] == 40
    assert report.totals["redone_rows"] == 0


def test_a_failed_batch_s_partial_rows_go_with_its_block() -> None:
    """A batch that raised after some chunks counts the rows of those chunks as its own."""
    partial = actor_report(1, items=12)
    report = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            ("w1", STARTED, started(1, "A-0")),
            ("w1", FINISHED, finished(1, partial, "ValueError: bad row")),
            ("w2", REGISTER, identity("a1", "w2")),
            *block_messages("w2", "A", 1),
        ]
    )
    first, _ = report.actors
    assert first.batch_report is not None
    assert (first.batch_report.items, first.batch_report.redone_rows) == (0, 12)
    assert report.totals["items"] == 20


def test_redone_rows_show_in_the_table_only_when_there_are_some(tmp_path: Path) -> None:
    """The table gains a redone column for a job with a retried block; CSV and JSON keep it."""
    plain = str(sample_report()).splitlines()
    assert "redone" not in plain[1]
    retried = collect(
        [
            ("w1", REGISTER, identity("a1", "w1")),
            *block_messages("w1", "A", 2),
            ("w2", REGISTER, identity("a1", "w2")),
            *block_messages("w2", "A", 5),
        ]
    )
    header, first, _, totals = str(retried).splitlines()[1:]
    assert header.split()[-2:] == ["redone", "status"]
    assert first.endswith("  40  died; Ray restarted it as incarnation 1")
    assert totals.split()[1:3] == ["7", "100"]  # batches, rows
    assert totals.split()[-5] == "40"
    with retried.to_csv(tmp_path / "job.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["redone_rows"] for row in rows] == ["40", "0", "40"]
    assert [row["items"] for row in rows] == ["0", "100", "100"]
    assert RayJobReport.from_json(retried.to_json(tmp_path / "job.json")) == retried


@st.composite
def retried_jobs(draw: st.DrawFn) -> tuple[list[tuple[str, str, Any]], int, int]:
    """A job's messages: blocks of 1-5 batches of distinct content handed to 1-3 actors (or
    task workers), each block run in 1-3 attempts; every attempt but the last dies after 0 or
    more of its batches and Ray restarts the actor, whose next incarnation begins with the
    block again. With the rows the dataset holds and the rows processed in all."""
    messages: list[tuple[str, str, Any]] = []
    # A function in Ray tasks has no actor id: its retries are looked for in every worker.
    tasks = draw(st.booleans())
    actors = draw(st.integers(1, 3))
    worker_of = {actor: f"a{actor}-0" for actor in range(actors)}
    done_by_worker: dict[str, int] = {}
    dataset_rows = processed_rows = 0
    for actor, worker in worker_of.items():
        messages.append((worker, REGISTER, identity(None if tasks else f"a{actor}", worker)))
    for block in range(draw(st.integers(1, 5))):
        batches = draw(st.integers(1, 5))
        attempts = draw(st.integers(1, 3))
        actor = draw(st.integers(0, actors - 1))
        dataset_rows += 20 * batches
        for attempt in range(attempts):
            worker = worker_of[actor]
            last = attempt == attempts - 1
            ran = batches if last else draw(st.integers(0, batches - 1))
            before = done_by_worker.get(worker, 0)
            messages += block_messages(worker, f"block{block}", ran, done_before=before)
            done_by_worker[worker] = before + ran
            processed_rows += 20 * ran
            if not last:
                # The incarnation dies in its block's next batch; Ray restarts the actor.
                messages.append((worker, STARTED, started(before + ran + 1, f"block{block}")))
                worker = worker_of[actor] = f"a{actor}-{len(done_by_worker)}-{attempt + 1}"
                messages.append(
                    (worker, REGISTER, identity(None if tasks else f"a{actor}", worker))
                )
    return messages, dataset_rows, processed_rows


@given(retried_jobs())
@settings(max_examples=200, deadline=None)
def test_every_row_counts_once_however_blocks_are_retried(
    job: tuple[list[tuple[str, str, Any]], int, int],
) -> None:
    """Nothing lost, nothing twice: the totals hold each block's rows once, and the rows of
    the attempts Ray ran again are all in redone_rows."""
    messages, dataset_rows, processed_rows = job
    totals = collect(messages).totals
    assert totals["items"] == dataset_rows
    assert totals["items"] + totals["redone_rows"] == processed_rows
