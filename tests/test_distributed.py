"""Reports across the ranks of a torch.distributed job: the rank in each report, combining
reports, and gathering them for real over gloo between two processes on this machine."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from hypothesis import given, settings, strategies as st

from memscope import (
    BatchReport,
    BatchStateError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemscopeError,
    managed_batch,
)
from memscope.distributed import gather_reports, gathered_reports
from memscope.distributed._checks import check_timeout, how_it_failed
from memscope.exceptions import ReportGatherError
from memscope.reports import CombinedReport, RankReport, process_rank
from memscope.testing import FakeDevice, GiB, RecordingManager


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without a launcher's variables, whatever runs the suite."""
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def make_report(**changes: Any) -> BatchReport:
    """A batch report with plain figures, changed where the test says."""
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
        "cache_clears": 10,
        "gc_runs": 1,
        "gc_seconds": 0.5,
    }
    figures.update(changes)
    return BatchReport(**figures)


# The rank of this process ----------------------------------------------------------------


def test_process_rank_is_none_outside_a_distributed_job() -> None:
    """Without torch.distributed or torchrun's variables there is no rank."""
    assert process_rank() == (None, None)


def test_process_rank_falls_back_to_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before init_process_group, RANK and WORLD_SIZE from torchrun give the rank."""
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert process_rank() == (2, 4)


def test_malformed_rank_variable_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, memscope_log: pytest.LogCaptureFixture
) -> None:
    """A RANK that is not an int gives no rank and a warning quoting it; nothing raises."""
    monkeypatch.setenv("RANK", "zero")
    assert process_rank() == (None, None)
    assert "RANK='zero'" in memscope_log.text


def test_batch_report_names_the_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """managed_batch fills rank and world size in; summary() and to_dict() show them."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with managed_batch(manager=RecordingManager()) as batch:
        batch.step()
    report = batch.report
    assert (report.rank, report.world_size) == (1, 2)
    assert report.summary().startswith("rank 1/2 cpu: 1 item in")
    data = json.loads(json.dumps(report.to_dict()))
    assert (data["rank"], data["world_size"]) == (1, 2)


def test_single_process_report_has_no_rank() -> None:
    """Outside a distributed job the report and its summary carry no rank; the dict keeps
    its shape with the rank fields as null."""
    with managed_batch(manager=RecordingManager()) as batch:
        batch.step()
    report = batch.report
    assert (report.rank, report.world_size) == (None, None)
    assert report.summary().startswith("cpu: 1 item in")
    assert report.to_dict()["rank"] is None
    assert report.to_dict()["world_size"] is None


def test_report_without_rank_fields_still_constructs() -> None:
    """Existing BatchReport constructor calls work unchanged: the new fields default to None."""
    report = make_report()
    assert (report.rank, report.world_size) == (None, None)


# Combining reports --------------------------------------------------------------------------


def two_rank_report(*, failed: bool = False) -> CombinedReport:
    """Rank 0 processed 10 items, rank 1 processed 6 (and, if ``failed``, then raised)."""
    return CombinedReport(
        (
            RankReport(0, "node-a", make_report(rank=0, world_size=2)),
            RankReport(
                1,
                "node-a",
                make_report(
                    device="cuda:1",
                    items=6,
                    peak_allocated=5 * GiB,
                    peak_reserved=6 * GiB,
                    gc_runs=3,
                    elapsed_seconds=3.0,
                    rank=1,
                    world_size=2,
                ),
                error="RuntimeError: boom" if failed else None,
            ),
        )
    )


def test_totals_sum_counts_and_take_largest_peak() -> None:
    """Items, GC runs and cache clears add up; peaks and elapsed time are the largest rank's."""
    totals = two_rank_report().totals
    assert totals["items"] == 16
    assert totals["gc_runs"] == 4
    assert totals["cache_clears"] == 20
    assert totals["gc_seconds"] == 1.0
    assert totals["peak_allocated"] == 5 * GiB
    assert totals["peak_reserved"] == 6 * GiB
    assert totals["elapsed_seconds"] == 3.0


def test_totals_skip_ranks_without_report_and_missing_peaks() -> None:
    """A rank with no report adds nothing; peaks no rank knows stay None."""
    combined = CombinedReport(
        (
            RankReport(0, "cpu-box", make_report(device="cpu", peak_allocated=None)),
            RankReport(1, "cpu-box", None, error="ValueError: bad input"),
        )
    )
    assert combined.totals["items"] == 10
    assert combined.totals["peak_allocated"] is None
    assert combined.failed_ranks == (1,)
    assert len(combined.reports) == 1


def test_out_of_memory_counts_are_totalled() -> None:
    """OOMs, retries and batch-size reductions add up across ranks and show in the table."""
    combined = CombinedReport(
        (
            RankReport(0, "h", dataclasses.replace(make_report(), ooms=2, oom_retries=2)),
            RankReport(1, "h", dataclasses.replace(make_report(), ooms=1, batch_size_reductions=1)),
        )
    )
    assert combined.totals["ooms"] == 3
    assert combined.totals["oom_retries"] == 2
    assert combined.totals["batch_size_reductions"] == 1
    assert "OOMs" in combined.table()


def test_combined_report_dict_survives_json() -> None:
    """to_dict() is JSON-serialisable and holds world size, failures, totals and rows."""
    data = json.loads(json.dumps(two_rank_report(failed=True).to_dict()))
    assert data["world_size"] == 2
    assert data["failed_ranks"] == [1]
    assert data["totals"]["items"] == 16
    assert [row["rank"] for row in data["ranks"]] == [0, 1]
    assert data["ranks"][1]["error"] == "RuntimeError: boom"
    assert data["ranks"][1]["report"]["device"] == "cuda:1"


def test_rank_report_round_trips_through_its_dict() -> None:
    """A rank's part is rebuilt equal from its dict, which is how ranks send it."""
    for entry in two_rank_report(failed=True).ranks:
        assert RankReport.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    assert RankReport.from_dict(RankReport(3, "h", None, "KeyError: 'x'").to_dict()).report is None


def test_table_has_a_row_per_rank_and_totals() -> None:
    """str() is a table: a header, one row per rank with its status, then the totals."""
    lines = str(two_rank_report(failed=True)).splitlines()
    assert lines[0] == "memscope report of 2 rank(s)"
    header, rank_0, rank_1, totals = lines[1:]
    assert header.split()[:4] == ["rank", "host", "device", "items"]
    assert rank_0.split()[:4] == ["0", "node-a", "cuda:0", "10"]
    assert rank_0.endswith("ok")
    assert "5.0 GiB" in rank_1
    assert rank_1.endswith("failed: RuntimeError: boom")
    assert totals.split()[:2] == ["all", "16"]
    assert "5.0 GiB" in totals
    assert totals.endswith("1 of 2 failed")


# Gathering in one process ------------------------------------------------------------------


def test_gather_outside_a_distributed_job_returns_this_process_alone() -> None:
    """Without torch.distributed, gather_reports is this process's report as rank 0."""
    report = make_report()
    combined = gather_reports(report, error=KeyError("x"))
    assert len(combined.ranks) == 1
    assert combined.ranks[0].report == report
    assert combined.ranks[0].rank == 0
    assert combined.ranks[0].error == "KeyError: 'x'"
    assert combined.ranks[0].host == socket.gethostname()


OUT_OF_RANGE_TIMEOUTS = [
    0,
    -1.0,
    0.0009,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e300,
    10**400,
    86_400.5,
    Fraction(1, 10_000),
    timedelta(0),
    timedelta(microseconds=999),
    timedelta(seconds=-1),
    timedelta(days=1, microseconds=1),
    timedelta.max,
    timedelta.min,
]


@pytest.mark.parametrize("timeout", OUT_OF_RANGE_TIMEOUTS, ids=repr)
def test_timeout_outside_one_millisecond_to_one_day_is_refused(timeout: object) -> None:
    """A timeout below 1 ms (torch's "no timeout"), above a day, or not finite is refused,
    naming the parameter and the value, by both entry points and before any gathering."""
    expected = r"timeout must be from 0\.001 s to 86400 s \(1 ms to 1 day\), got "
    with pytest.raises(InvalidArgumentError, match=expected) as raised:
        gather_reports(None, timeout=timeout)  # type: ignore[arg-type]
    assert repr(timeout)[:30] in str(raised.value)
    assert not isinstance(raised.value, InvalidArgumentTypeError)
    with pytest.raises(InvalidArgumentError, match=expected):
        gathered_reports(timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("timeout", "why"),
    [
        (0.0005, "torch counts whole milliseconds, and reads 0 ms as no timeout at all"),
        (timedelta(0), "torch counts whole milliseconds, and reads 0 ms as no timeout at all"),
        (-2, "a wait cannot be negative"),
        (timedelta(days=2), "a wait that long no longer bounds a hang"),
        (float("inf"), "a finite number is needed"),
        (10**400, "too large to be a number of seconds"),
    ],
    ids=repr,
)
def test_refused_timeout_says_why(timeout: object, why: str) -> None:
    """The refusal ends with the reason that fits the value, and a huge value is shortened."""
    with pytest.raises(InvalidArgumentError) as raised:
        check_timeout(timeout)
    message = str(raised.value)
    assert message.endswith(f": {why}")
    assert len(message) < 250


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (0.001, timedelta(milliseconds=1)),
        (timedelta(milliseconds=1), timedelta(milliseconds=1)),
        (86_400, timedelta(days=1)),
        (timedelta(days=1), timedelta(days=1)),
        (Fraction(3, 2), timedelta(seconds=1.5)),
        (30, timedelta(seconds=30)),
    ],
    ids=repr,
)
def test_timeout_at_and_inside_the_bounds_is_taken(timeout: object, expected: timedelta) -> None:
    """The bounds themselves and any real number of seconds between them are accepted."""
    assert check_timeout(timeout) == expected


@settings(deadline=None)
@given(seconds=st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_timeout_is_taken_exactly_when_it_is_in_range(seconds: float) -> None:
    """For every float, the check either returns that many seconds or refuses it with
    InvalidArgumentError; it never raises anything else (OverflowError included)."""
    in_range = math.isfinite(seconds) and 0.001 <= seconds <= 86_400
    if in_range:
        assert check_timeout(seconds) == timedelta(seconds=seconds)
    else:
        with pytest.raises(InvalidArgumentError, match="timeout"):
            check_timeout(seconds)


@pytest.mark.parametrize(
    "arguments",
    [
        {"timeout": "60"},
        {"timeout": True},
        {"timeout": None},
        {"timeout": Decimal("60")},
        {"timeout": b"60"},
        {"group": "world"},
        {"error": 42},
    ],
    ids=repr,
)
def test_wrong_argument_types_are_type_errors(arguments: dict[str, Any]) -> None:
    """A timeout, group or error of the wrong type is a TypeError naming the parameter."""
    name = next(iter(arguments))
    with pytest.raises(InvalidArgumentTypeError, match=name):
        gather_reports(None, **arguments)


class UnprintableError(Exception):
    """An exception whose message cannot be turned into text."""

    def __str__(self) -> str:
        raise ValueError("no message for you")

    def __repr__(self) -> str:
        raise ValueError("no repr either")


def test_exception_with_a_raising_str_is_recorded_by_its_type() -> None:
    """gather_reports records an exception whose __str__ raises as "Type: <unprintable Type>"."""
    combined = gather_reports(None, error=UnprintableError())
    assert combined.ranks[0].error == "UnprintableError: <unprintable UnprintableError>"
    assert combined.failed_ranks == (0,)


def test_gathered_reports_records_an_unprintable_exception_and_lets_it_go_on() -> None:
    """An unprintable exception raised in the block still propagates, and is recorded."""
    error = UnprintableError()
    with pytest.raises(UnprintableError) as raised, gathered_reports() as gathering:
        raise error
    assert raised.value is error
    assert gathering.combined is not None
    assert gathering.combined.ranks[0].error == "UnprintableError: <unprintable UnprintableError>"


def test_exception_with_an_empty_message_is_recorded_by_its_type_alone() -> None:
    """RuntimeError() is recorded as "RuntimeError", not "RuntimeError: "."""
    assert gather_reports(None, error=RuntimeError()).ranks[0].error == "RuntimeError"


def test_wrong_argument_with_a_raising_repr_still_gets_a_clear_type_error() -> None:
    """A report or error of the wrong type whose repr raises is still refused by name."""
    with pytest.raises(InvalidArgumentTypeError, match="report must be a BatchReport"):
        gather_reports(UnprintableError())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError, match="failing __repr__"):
        gathered_reports(UnprintableError())  # type: ignore[arg-type]


def test_report_must_be_a_batch_report() -> None:
    """Passing something else as the report is a TypeError."""
    with pytest.raises(InvalidArgumentTypeError, match="report"):
        gather_reports({"items": 3})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentTypeError, match="batch"):
        gathered_reports(make_report())  # type: ignore[arg-type]


def test_gathered_reports_lets_the_exception_go_on_and_records_it() -> None:
    """An exception in the block propagates unchanged; the combined report records it and
    the batch's partial report."""
    batch = managed_batch(manager=RecordingManager())
    error = RuntimeError("colorize failed")
    gathering = gathered_reports(batch)

    def colorize_all() -> None:
        with gathering, batch:
            for _ in batch.track(range(5)):
                if batch.items == 2:
                    raise error

    with pytest.raises(RuntimeError) as raised:
        colorize_all()
    assert raised.value is error
    assert gathering.combined is not None
    (entry,) = gathering.combined.ranks
    assert entry.error == "RuntimeError: colorize failed"
    assert entry.report is not None
    assert entry.report.items == 2
    assert entry.report.ended_by == "RuntimeError"


def test_gathered_reports_without_batch_takes_the_report_set_in_the_block() -> None:
    """Without a batch, the report set on ``gathering.report`` is the one gathered."""
    report = make_report()
    with gathered_reports() as gathering:
        gathering.report = report
    assert gathering.combined is not None
    assert gathering.combined.ranks[0].report is report


def test_gathering_entered_inside_its_batch_is_refused() -> None:
    """Entering the gathering after the batch would gather before the report exists."""
    batch = managed_batch(manager=RecordingManager())
    with batch, pytest.raises(BatchStateError, match="before the batch"):
        gathered_reports(batch).__enter__()


def test_keyboard_interrupt_skips_the_gathering() -> None:
    """Ctrl-C leaves at once: no gathering, the interrupt goes on."""
    with pytest.raises(KeyboardInterrupt), gathered_reports() as gathering:
        raise KeyboardInterrupt
    assert gathering.combined is None


def test_report_gather_error_is_a_memscope_error_with_missing_ranks() -> None:
    """ReportGatherError is a MemscopeError and a RuntimeError that carries the missing ranks."""
    error = ReportGatherError("rank 3 did not arrive", missing_ranks=(3,))
    assert isinstance(error, MemscopeError)
    assert isinstance(error, RuntimeError)
    assert error.missing_ranks == (3,)


# Reading gloo's errors -------------------------------------------------------------------

GLOO_MESSAGES = {
    # As torch 2.13's gloo words them, paths shortened.
    "[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:13511: Connection reset by peer. "
    "This is typically caused by a remote worker hanging or bugs in the application.": "left",
    "[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:44726. This is "
    "typically caused by a remote worker crashing.": "left",
    "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to "
    "complete": "late",
    "[gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 1000ms for send operation to "
    "complete": "late",
    "Application timeout caused pair closure": "late",
    "wait timeout after 2000ms, keys: /default_pg/0//1//cpu//0/1": "late",
    "Tensors must be contiguous": "broken",
}


@pytest.mark.parametrize(("message", "kind"), GLOO_MESSAGES.items(), ids=GLOO_MESSAGES.values())
def test_gloo_errors_tell_a_rank_that_left_from_a_late_one(message: str, kind: str) -> None:
    """A closed or reset connection reads as "left", a wait that ran out (or a connection
    gloo closed after one) as "late", anything else as "broken"."""
    assert how_it_failed(RuntimeError(message)) == kind


@pytest.mark.usefixtures("one_rank_job")
def test_successful_gathering_has_no_gather_error() -> None:
    """After a gathering that worked, gather_error is None and combined is set."""
    with gathered_reports(timeout=5) as gathering:
        gathering.report = make_report(rank=0, world_size=1)
    assert gathering.gather_error is None
    assert gathering.combined is not None


# Two real processes over gloo ----------------------------------------------------------------

WORLD_SIZE = 2
GATHER_TIMEOUT_SECONDS = 2.0
"""The gathering timeout where a rank is meant to be missing: short, to keep the tests fast."""
ROOMY_TIMEOUT_SECONDS = 30.0
"""The gathering timeout where every rank comes: long, so a slow machine never trips it."""
PROCESS_DEADLINE_SECONDS = 60.0
"""No test waits longer than this for its processes: a hang fails the test instead."""


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def join_two_rank_job(rank: int, port: int) -> None:
    """Become ``rank`` of a two-process gloo job on the loopback interface, as torchrun would."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_RANK=str(rank),
    )
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=30))


def rank_main(rank: int, port: int, scenario: str, results: str) -> None:
    """One rank of a two-process job: run a batch, gather, and write what happened to a file."""
    join_two_rank_job(rank, port)
    outcome: dict[str, Any] = {"combined": None, "error": None, "missing_ranks": None}
    combined: CombinedReport | None = None
    expects_missing_rank = scenario in {"absent", "late"}
    timeout = GATHER_TIMEOUT_SECONDS if expects_missing_rank else ROOMY_TIMEOUT_SECONDS
    try:
        if scenario == "absent":
            # Rank 1 never calls gather_reports at all.
            with managed_batch("cpu") as batch:
                batch.step()
            if rank == 0:
                combined = gather_reports(batch.report, timeout=timeout)
        else:
            gathering = gathered_reports(batch := managed_batch(), timeout=timeout)
            try:
                with gathering:
                    # A fake GPU per rank: LOCAL_RANK picks it, and the peaks differ by rank.
                    with FakeDevice("cuda", device_count=WORLD_SIZE, total=8 * GiB) as fake, batch:
                        for _ in batch.track(range(3 + 2 * rank)):
                            fake.set_memory(rank, allocated=(1 + rank) * GiB)
                            fake.set_memory(rank, allocated=0)
                        if scenario == "raise" and rank == 1:
                            raise RuntimeError("rank 1 ran out of images")
                    if scenario == "late" and rank == 1:
                        time.sleep(GATHER_TIMEOUT_SECONDS + 3)
            finally:
                combined = gathering.combined
    except Exception as error:
        outcome["error"] = f"{type(error).__name__}: {error}"
        outcome["missing_ranks"] = getattr(error, "missing_ranks", None)
    if combined is not None:
        outcome["combined"] = combined.to_dict()
        outcome["table"] = str(combined)
    Path(results, f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


def run_two_ranks(scenario: str, results: Path) -> list[dict[str, Any]]:
    """Run ``rank_main`` in two processes, bounded in time; their outcomes by rank."""
    context = multiprocessing.get_context("forkserver")
    # Imported once in the forkserver, not once per rank: each rank starts in a fraction of
    # the seconds an import of torch takes. The ranks are forked from that server, which has
    # no threads, rather than from this process, which may have some.
    context.set_forkserver_preload(["torch.distributed", "memscope.distributed", __name__])
    port = free_loopback_port()
    processes = [
        context.Process(target=rank_main, args=(rank, port, scenario, str(results)))
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + PROCESS_DEADLINE_SECONDS
    for process in processes:
        process.join(timeout=max(deadline - time.monotonic(), 0))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"rank(s) {hung} still running after {PROCESS_DEADLINE_SECONDS} s"
    assert [process.exitcode for process in processes] == [0] * WORLD_SIZE
    return [json.loads((results / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


@pytest.mark.distributed
def test_two_ranks_gather_rows_and_totals(tmp_path: Path) -> None:
    """Two gloo ranks with 3 and 5 items each get both rows, 8 items and the larger peak."""
    outcomes = run_two_ranks("ok", tmp_path)
    assert [outcome["error"] for outcome in outcomes] == [None, None]
    combined = outcomes[0]["combined"]
    # all_gather: every rank holds the same combined report.
    assert outcomes[1]["combined"] == combined
    rows = combined["ranks"]
    assert [row["rank"] for row in rows] == [0, 1]
    assert [row["report"]["items"] for row in rows] == [3, 5]
    assert [row["report"]["device"] for row in rows] == ["cuda:0", "cuda:1"]
    assert [(row["report"]["rank"], row["report"]["world_size"]) for row in rows] == [
        (0, 2),
        (1, 2),
    ]
    assert combined["totals"]["items"] == 8
    assert combined["totals"]["peak_allocated"] == 2 * GiB
    assert combined["totals"]["gc_runs"] == sum(row["report"]["gc_runs"] for row in rows)
    assert combined["failed_ranks"] == []
    assert "all" in outcomes[0]["table"]


@pytest.mark.distributed
def test_rank_that_raises_is_reported_and_nobody_hangs(tmp_path: Path) -> None:
    """Rank 1 raises in its work: it re-raises after the gathering, and rank 0 finishes with
    a report that records rank 1's failure and the items it did."""
    outcomes = run_two_ranks("raise", tmp_path)
    assert outcomes[0]["error"] is None
    assert outcomes[1]["error"] == "RuntimeError: rank 1 ran out of images"
    combined = outcomes[0]["combined"]
    assert combined["failed_ranks"] == [1]
    failed_row = combined["ranks"][1]
    assert failed_row["error"] == "RuntimeError: rank 1 ran out of images"
    assert failed_row["report"]["items"] == 5
    assert failed_row["report"]["ended_by"] == "RuntimeError"
    assert combined["totals"]["items"] == 8
    assert outcomes[1]["combined"] == combined


@pytest.mark.distributed
def test_rank_that_never_arrives_ends_the_others_within_the_timeout(tmp_path: Path) -> None:
    """Rank 1 comes after the timeout: rank 0 raises ReportGatherError saying rank 1 did not
    arrive in time, and rank 1 is told at once that rank 0 had given up, not made to wait."""
    outcomes = run_two_ranks("late", tmp_path)
    assert outcomes[0]["error"] == (
        "ReportGatherError: gathering reports failed: rank 1 did not arrive within 2 s. "
        "Reports came from rank 0"
    )
    assert outcomes[0]["missing_ranks"] == [1]
    assert outcomes[1]["error"].startswith(
        "ReportGatherError: gathering reports failed: rank 0, which collects the reports, had "
        "left when this rank came"
    )
    assert outcomes[1]["missing_ranks"] is None
    assert [outcome["combined"] for outcome in outcomes] == [None, None]


def test_distributed_marker_is_registered(pytestconfig: pytest.Config) -> None:
    """The two-process tests can be deselected with ``-m "not distributed"``."""
    markers = pytestconfig.getini("markers")
    assert any(str(marker).startswith("distributed:") for marker in markers)


@pytest.mark.distributed
def test_rank_that_never_calls_gather_reports_ends_the_others_within_the_timeout(
    tmp_path: Path,
) -> None:
    """Rank 1 skips gather_reports entirely: rank 0 raises ReportGatherError saying not every
    rank came within the timeout, not a hang."""
    outcomes = run_two_ranks("absent", tmp_path)
    assert outcomes[0]["error"].startswith(
        "ReportGatherError: could not make the process group that gathers reports: not every "
        "rank came to gather_reports or gathered_reports within 2 s ("
    )
    assert outcomes[0]["combined"] is None
    assert outcomes[1]["error"] is None


# A one-rank job in this process -------------------------------------------------------------


@pytest.fixture
def one_rank_job() -> Iterator[None]:
    """torch.distributed initialised in this process as a gloo job of one rank."""
    dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=30)
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_rank_job")
def test_process_rank_prefers_torch_distributed_over_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once init_process_group has run, the rank comes from torch.distributed."""
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert process_rank() == (0, 1)
    with managed_batch(manager=RecordingManager()) as batch:
        batch.step()
    assert (batch.report.rank, batch.report.world_size) == (0, 1)


@pytest.mark.usefixtures("one_rank_job")
def test_gather_on_a_given_gloo_group() -> None:
    """gather_reports uses a gloo group the caller gives, and leaves it usable."""
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=30))
    report = make_report(rank=0, world_size=1)
    first = gather_reports(report, group=group, timeout=30)
    second = gather_reports(report, group=group, timeout=30)
    assert first == second
    assert first.ranks[0].report == report
    assert first.totals["items"] == 10


@pytest.mark.usefixtures("one_rank_job")
def test_gathered_reports_in_a_one_rank_job_goes_through_gloo() -> None:
    """In an initialised job the gathering makes, uses and releases its own gloo group."""
    batch = managed_batch(manager=RecordingManager())
    with gathered_reports(batch, timeout=30) as gathering, batch:
        batch.step()
    assert gathering.combined is not None
    assert gathering.combined.ranks[0].report == batch.report
