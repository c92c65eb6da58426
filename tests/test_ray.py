"""memscope.ray on a real local Ray cluster: OOMs split batches, actors report, deaths show.

The cluster is started once for the module, on this machine only (2 CPUs, no dashboard,
every Ray server bound to the loopback address), and shut down after; each job is bounded
in time. The tests are skipped, with the reason, where Ray is not installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from memscope.ray import RayJobReport, ReportCollector, managed
from memscope.testing import oom_error

pytestmark = [
    pytest.mark.ray,
    # Ray Data warns about its own deprecated settings whenever it copies its context.
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*"),
]

ray = pytest.importorskip("ray", reason="memscope.ray needs Ray: pip install 'memscope[ray]'")
ray_data = pytest.importorskip(
    "ray.data", reason="memscope.ray needs Ray Data: pip install 'memscope[ray]'"
)

JOB_TIMEOUT = 240
"""Seconds a dataset may take before the test fails instead of hanging."""

ROWS = 200
BATCH_ROWS = 20
OOM_ABOVE = 8
"""Batches of more than this many rows run out of memory: each batch of 20 must be split."""
KILLED_ROW = 100
"""The actor that gets the batch holding this row exits on it, once."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster on the loopback address, for the whole module."""
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already running in this process")
    environment = {
        # Ray binds its servers to the node's address; on Linux it replaces a loopback one
        # with the machine's external address unless told it runs a single-machine cluster.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    saved_environment = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    constants = ray._private.ray_constants
    saved_cluster_flag = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    context = ray_data.DataContext.get_current()
    saved_context = (
        context.execution_options.preserve_order,
        context.wait_for_min_actors_s,
        context.enable_progress_bars,
    )
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            namespace="memscope-tests",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        # Workers cannot import this test module: its functions and classes travel by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        # Rows in input order; both actors up before the first batch, so both get batches.
        context.execution_options.preserve_order = True
        context.wait_for_min_actors_s = 120
        context.enable_progress_bars = False
        yield
    finally:
        (
            context.execution_options.preserve_order,
            context.wait_for_min_actors_s,
            context.enable_progress_bars,
        ) = saved_context
        with contextlib.suppress(ValueError):
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        constants.ENABLE_RAY_CLUSTER = saved_cluster_flag
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def consume(dataset: Any) -> list[dict[str, Any]]:
    """Every row of ``dataset``, or a test failure after JOB_TIMEOUT seconds."""
    outcome: dict[str, Any] = {}

    def take_all() -> None:
        try:
            outcome["rows"] = dataset.take_all()
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=take_all, daemon=True)
    worker.start()
    worker.join(JOB_TIMEOUT)
    if worker.is_alive():
        pytest.fail(f"the dataset did not finish within {JOB_TIMEOUT} s")
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["rows"])


class DoubleOnDevice:
    """A map_batches class: doubles the ids on its device, running out of memory on large
    batches and dying once, on the batch that holds KILLED_ROW."""

    def __init__(self, oom_above: int, kill_marker: Path, *, tag: str) -> None:
        self.oom_above = oom_above
        self.kill_marker = kill_marker
        self.tag = tag
        self.device = memscope_ray_device()
        self.batches_seen: list[object] = []

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids = batch["id"]
        if KILLED_ROW in ids and not self.kill_marker.exists():
            self.kill_marker.touch()
            os._exit(1)  # the process dies here; Ray restarts the actor
        if len(ids) > self.oom_above:
            raise oom_error("cuda")
        context = ray.get_runtime_context()
        count = len(ids)
        return {
            "id": ids,
            "doubled": (torch.as_tensor(ids, device=self.device) * 2).cpu().numpy(),
            "actor_id": [context.get_actor_id()] * count,
            "pid": [os.getpid()] * count,
            "memscope_batch": [active_batch_id(self.batches_seen)] * count,
            "cpus": [context.get_assigned_resources().get("CPU", 0.0)] * count,
            "tag": [self.tag] * count,
        }


def active_batch_id(kept: list[object]) -> int | None:
    """The id of the managed batch active in this worker's call, or None without one; the
    batch is kept alive in ``kept``, so no later batch can take over its id."""
    from memscope.batch import current_batch

    batch = current_batch()
    if batch is None:
        return None
    kept.append(batch)
    return id(batch)


def memscope_ray_device() -> torch.device:
    """The device memscope manages in this worker (imported here: it runs in the worker)."""
    from memscope.ray import actor_device

    return actor_device()


@dataclass(frozen=True)
class Job:
    """What one dataset run gave: its rows and memscope's report of it."""

    rows: list[dict[str, Any]]
    report: RayJobReport


@pytest.fixture(scope="module")
def actor_job(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    """200 rows through 2 managed actors, OOMs above 8 rows, one actor killed mid-job."""
    marker = tmp_path_factory.mktemp("ray") / "killed"
    with ReportCollector() as collector:
        with warnings.catch_warnings():
            # Ray 2.60 takes max_restarts as a deprecated extra keyword; it still applies it.
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray_data.range(ROWS, override_num_blocks=ROWS // BATCH_ROWS).map_batches(
                managed(DoubleOnDevice, collector=collector),
                fn_constructor_args=(OOM_ABOVE, marker),
                fn_constructor_kwargs={"tag": "kept"},
                compute=ray_data.ActorPoolStrategy(size=2, max_tasks_in_flight_per_actor=1),
                batch_size=BATCH_ROWS,
                num_cpus=0.5,
                max_restarts=2,
            )
        rows = consume(dataset)
        yield Job(rows, collector.report())


def test_every_row_comes_out_exactly_once_in_order(actor_job: Job) -> None:
    """Split batches and a dead actor lose no row and repeat none; the order is the input's."""
    assert [row["id"] for row in actor_job.rows] == list(range(ROWS))
    assert [row["doubled"] for row in actor_job.rows] == [2 * n for n in range(ROWS)]


def test_each_actor_runs_all_its_batches_in_one_managed_batch(actor_job: Job) -> None:
    """Every Ray batch of one actor process ran with the same managed batch active."""
    batches: dict[tuple[str, int], set[int | None]] = {}
    for row in actor_job.rows:
        batches.setdefault((row["actor_id"], row["pid"]), set()).add(row["memscope_batch"])
    assert len(batches) >= 2
    for process, seen in batches.items():
        assert len(seen) == 1, process
        assert None not in seen, process


def test_report_shows_both_actors_with_their_ooms_and_splits(actor_job: Job) -> None:
    """One report for the job: each of the 2 actors, with the OOMs it met and batches it split."""
    report = actor_job.report
    actor_ids = {row.actor_id for row in report.actors}
    assert len(actor_ids) == 2
    assert actor_ids == {row["actor_id"] for row in actor_job.rows}
    for actor_id in actor_ids:
        reports = [
            row.batch_report
            for row in report.actors
            if row.actor_id == actor_id and row.batch_report is not None
        ]
        assert sum(batch.ooms for batch in reports) >= 1, actor_id
        assert sum(batch.split_batches for batch in reports) >= 1, actor_id
    for row in report.actors:
        assert row.host
        assert row.node_id
        if row.batch_report is not None:
            assert row.batch_report.device == "cpu"
            # The size that worked is kept: it is at most what fits.
            assert row.batch_report.chunk_size is not None
            assert row.batch_report.chunk_size <= OOM_ABOVE
    # Every row was counted once, by the actor incarnation that finished its batch.
    assert report.totals["items"] == ROWS
    assert report.totals["batches"] >= ROWS // BATCH_ROWS


def test_killed_actor_shows_up_as_died(actor_job: Job) -> None:
    """The actor that exited mid-job is a row marked died, and its restart is another row."""
    report = actor_job.report
    [dead] = report.died
    assert dead.error is not None
    assert "Ray restarted it as incarnation 1" in dead.error
    restarted = [
        row for row in report.actors if row.actor_id == dead.actor_id and row.incarnation == 1
    ]
    assert len(restarted) == 1
    assert restarted[0].error is None
    assert restarted[0].worker_id != dead.worker_id
    assert report.failed_ranks == (dead.rank,)


def test_wrapped_class_keeps_constructor_arguments_and_ray_options(actor_job: Job) -> None:
    """fn_constructor_args/kwargs reach the class; num_cpus and max_restarts still apply."""
    assert {row["tag"] for row in actor_job.rows} == {"kept"}
    assert {row["cpus"] for row in actor_job.rows} == {0.5}
    # max_restarts=2 let Ray bring the killed actor back, under the same id.
    assert any(row.incarnation == 1 for row in actor_job.report.actors)


def test_report_exports_after_the_dataset_is_consumed(actor_job: Job, tmp_path: Path) -> None:
    """The job's report writes JSON and CSV, one row per actor incarnation and the totals."""
    report = actor_job.report
    read_back = RayJobReport.from_json(report.to_json(tmp_path / "job.json"))
    assert read_back == report
    lines = report.to_csv(tmp_path / "job.csv").read_text().splitlines()
    assert len(lines) == 1 + len(report.actors) + 1
    assert lines[-1].startswith("all,")
    assert str(report).splitlines()[0].startswith(f"memscope report of {len(report.actors)}")


BLOCK_ROWS = 100
"""The block retry job: 200 rows in 2 blocks, each of 5 batches of 20 rows."""
DYING_CALL = 3
"""The first actor to reach its third call exits in it, in the middle of its block."""


class DoubleUntilThirdCall:
    """A map_batches class that doubles the ids; the first actor to reach its third call
    exits in it, once, so Ray runs that actor's block again."""

    def __init__(self, died_marker: Path) -> None:
        self.died_marker = died_marker
        self.calls = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == DYING_CALL and not self.died_marker.exists():
            self.died_marker.touch()
            os._exit(1)  # mid-block: 2 batches of this block are done, 3 are not
        return {"id": batch["id"], "doubled": batch["id"] * 2}


def test_a_block_ray_runs_again_after_its_actor_died_counts_each_row_once(
    cluster: None, tmp_path: Path
) -> None:
    """200 rows in 2 blocks of 5 batches, an actor exiting on its third call: the dataset
    holds 200 distinct rows and the report counts 200 rows, the 40 redone ones apart."""
    died_marker = tmp_path / "died"
    with ReportCollector() as collector:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray_data.range(ROWS, override_num_blocks=ROWS // BLOCK_ROWS).map_batches(
                managed(DoubleUntilThirdCall, collector=collector),
                fn_constructor_args=(died_marker,),
                compute=ray_data.ActorPoolStrategy(size=2, max_tasks_in_flight_per_actor=1),
                batch_size=BATCH_ROWS,
                num_cpus=0.5,
                max_restarts=2,
            )
        rows = consume(dataset)
        report = collector.report()
    assert died_marker.exists()
    assert sorted(row["id"] for row in rows) == list(range(ROWS))
    assert [row["doubled"] for row in rows] == [2 * row["id"] for row in rows]
    assert report.totals["items"] == ROWS
    assert report.totals["redone_rows"] == (DYING_CALL - 1) * BATCH_ROWS
    [dead] = report.died
    assert dead.batch_report is not None
    assert dead.batch_report.redone_rows == (DYING_CALL - 1) * BATCH_ROWS
    assert dead.batch_report.batches == DYING_CALL - 1


def halve_on_device(frame: Any) -> Any:
    """A map_batches function on pandas batches that runs out of memory above 8 rows."""
    if len(frame) > OOM_ABOVE:
        raise oom_error("cuda")
    frame = frame.copy()
    frame["half"] = frame["id"] / 2
    return frame


def test_function_runs_managed_in_task_workers(cluster: None) -> None:
    """A managed function splits pandas batches too; each task worker is a row of the report."""
    with ReportCollector() as collector:
        dataset = ray_data.range(60, override_num_blocks=3).map_batches(
            managed(halve_on_device, collector=collector),
            batch_format="pandas",
            batch_size=20,
        )
        rows = consume(dataset)
        report = collector.report()
    assert [row["id"] for row in rows] == list(range(60))
    assert [row["half"] for row in rows] == [n / 2 for n in range(60)]
    assert report.actors
    assert all(row.actor_id is None for row in report.actors)
    assert report.totals["items"] == 60
    assert report.totals["ooms"] >= 1
    assert report.failed_ranks == ()
