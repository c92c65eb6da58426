"""Durable batch runs: the journal, skipping finished items, skip-and-record, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from memscope import InvalidArgumentError, InvalidArgumentTypeError, auto_clear, managed_batch
from memscope.exceptions import JournalError
from memscope.journal import Journal, read_journal
from memscope.testing import RecordingManager, oom_error


def run_batch(journal: Path, items: list[str], **options: object) -> tuple[list[str], object]:
    """Run a journaled batch over ``items`` (``options`` are the Journal's); return the items
    whose body ran, and the batch."""
    processed: list[str] = []
    timeline = bool(options.pop("timeline", False))
    with managed_batch(
        manager=RecordingManager(),
        journal=Journal(journal, **options),  # type: ignore[arg-type]
        timeline=timeline,
    ) as batch:
        for item in batch.track(items):
            processed.append(item)
    return processed, batch


def test_rerun_skips_what_the_journal_says_is_done(tmp_path: Path) -> None:
    """A rerun with the same journal processes only the items not finished before, and its
    report continues the earlier run's figures."""
    journal = tmp_path / "run.jsonl"
    images = [f"image-{n}.png" for n in range(10)]
    with managed_batch(manager=RecordingManager(), journal=journal) as first:
        for image in first.track(images):
            if image == "image-6.png":
                break
    assert read_journal(journal).done == set(images[:6])
    processed, second = run_batch(journal, images)
    assert processed == images[6:]
    report = second.report  # type: ignore[attr-defined]
    assert report.skipped == 6
    assert report.items == 10
    assert report.elapsed_seconds >= first.report.elapsed_seconds


def test_keys_come_from_a_key_function_and_paths(tmp_path: Path) -> None:
    """Paths are keyed by their path string; other items through key=."""
    journal = tmp_path / "run.jsonl"
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    run_batch(journal, paths)  # type: ignore[arg-type]
    assert read_journal(journal).done == {str(path) for path in paths}
    records = [{"id": 7}, {"id": 8}]
    keyed_journal = tmp_path / "keyed.jsonl"
    with managed_batch(manager=RecordingManager(), journal=keyed_journal) as batch:
        for _ in batch.track(records, key=lambda record: record["id"]):
            pass
    assert read_journal(keyed_journal).done == {7, 8}


def test_an_item_without_a_key_fails_before_its_own_work(tmp_path: Path) -> None:
    """With a journal, an item that cannot be keyed is a clear error before its body runs;
    keys are made as items are reached, so the items before it ran."""
    ran: list[object] = []
    with (
        managed_batch(manager=RecordingManager(), journal=tmp_path / "run.jsonl") as batch,
        pytest.raises(InvalidArgumentTypeError, match="key="),
    ):
        ran.extend(batch.track(["fine.png", object()]))
    assert ran == ["fine.png"]
    assert batch.report.items == 1


def test_journal_of_another_job_is_refused(tmp_path: Path) -> None:
    """A journal written under another job name is refused, not mixed."""
    journal = tmp_path / "run.jsonl"
    run_batch(journal, ["a"], job="colorize-v1")
    with pytest.raises(JournalError, match="colorize-v1"):
        run_batch(journal, ["a"], job="colorize-v2")


def test_a_file_that_is_no_journal_is_refused(tmp_path: Path) -> None:
    """A file without a journal header is refused with a clear error."""
    journal = tmp_path / "run.jsonl"
    journal.write_text('{"some": "json"}\n')
    with pytest.raises(JournalError, match=r"not a memscope journal|not a journal record"):
        run_batch(journal, ["a"])


def test_a_second_writer_is_refused_and_the_lock_is_cleaned_up(tmp_path: Path) -> None:
    """While one batch writes a journal, another is refused; the lock file goes at exit."""
    journal = tmp_path / "run.jsonl"
    lock = tmp_path / "run.jsonl.lock"
    with managed_batch(manager=RecordingManager(), journal=journal):
        assert lock.exists()
        with pytest.raises(JournalError, match="in use"):
            run_batch(journal, ["a"])
    assert not lock.exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    """A lock whose process is gone (killed) does not block the rerun."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    import socket

    (tmp_path / "run.jsonl.lock").write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    processed, _ = run_batch(tmp_path / "run.jsonl", ["a", "b"])
    assert processed == ["a", "b"]


def test_fsync_cadence_follows_journal_sync_every(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync_every=5 over 20 items syncs after items 5, 10, 15, 20, plus the run's start
    and end records and the new journal's header."""
    syncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(descriptor: int) -> None:
        syncs.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    run_batch(tmp_path / "run.jsonl", [str(n) for n in range(20)], sync_every=5)
    assert len(syncs) == 20 // 5 + 3
    syncs.clear()
    run_batch(tmp_path / "every.jsonl", [str(n) for n in range(20)])
    assert len(syncs) == 20 + 3


def test_a_line_cut_off_by_a_crash_is_ignored(tmp_path: Path) -> None:
    """A journal whose last line was cut off mid-write still resumes: that item runs again."""
    journal = tmp_path / "run.jsonl"
    run_batch(journal, ["a", "b"])
    with journal.open("a") as file:
        file.write('{"type": "done", "key": "c", "ti')
    processed, _ = run_batch(journal, ["a", "b", "c", "d"])
    assert processed == ["c", "d"]
    assert read_journal(journal).done == {"a", "b", "c", "d"}


# map -------------------------------------------------------------------------------------


def test_map_yields_results_in_order_and_skips_failures(tmp_path: Path) -> None:
    """map(on_error="skip") yields every good result in order; each failure is recorded with
    its key, type, message and notes, in the report, the journal and the summary line."""

    def colorize(image: str) -> str:
        if image.startswith("bad"):
            error = ValueError(f"corrupt {image}")
            error.add_note("from the decoder")
            raise error
        return image.upper()

    images = ["a", "bad-1", "b", "bad-2", "c"]
    journal = tmp_path / "run.jsonl"
    with managed_batch(manager=RecordingManager(), journal=journal) as batch:
        results = list(batch.map(colorize, images, on_error="skip"))
    assert results == ["A", "B", "C"]
    report = batch.report
    assert [(f.key, f.error_type, f.message, f.notes) for f in report.failed_items] == [
        ("bad-1", "ValueError", "corrupt bad-1", ("from the decoder",)),
        ("bad-2", "ValueError", "corrupt bad-2", ("from the decoder",)),
    ]
    assert report.items == 3
    assert "2 failed items" in report.summary()
    assert set(read_journal(journal).failed) == {"bad-1", "bad-2"}
    restored = type(report).from_json(report.to_json(tmp_path / "report.json"))
    assert restored.failed_items == report.failed_items
    rows = tmp_path / "failures.csv"
    report.failures_to_csv(rows)
    assert rows.read_text().splitlines()[0] == "key,error_type,message,notes"


def test_map_raises_by_default_and_never_swallows_interrupts() -> None:
    """on_error="raise" ends the loop with the function's own exception; KeyboardInterrupt
    propagates even with on_error="skip"."""
    own = ValueError("bad")

    def fails(item: int) -> int:
        raise own

    with managed_batch(manager=RecordingManager()) as batch:
        with pytest.raises(ValueError, match="bad") as raised:
            list(batch.map(fails, [1]))
        assert raised.value is own

        def interrupted(item: int) -> int:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            list(batch.map(interrupted, [1], on_error="skip"))
    with (
        managed_batch(manager=RecordingManager()) as batch,
        pytest.raises(InvalidArgumentError, match="on_error"),
    ):
        batch.map(fails, [1], on_error="ignore")


def test_rerun_with_retry_failed_retries_only_the_failures(tmp_path: Path) -> None:
    """A rerun skips finished and failed items; with retry_failed=True it retries only the
    failed ones."""
    journal = tmp_path / "run.jsonl"
    broken = {"b"}
    calls: list[str] = []

    def colorize(image: str) -> str:
        calls.append(image)
        if image in broken:
            raise ValueError("flaky")
        return image

    with managed_batch(manager=RecordingManager(), journal=journal) as first:
        assert list(first.map(colorize, ["a", "b", "c"], on_error="skip")) == ["a", "c"]
    with managed_batch(manager=RecordingManager(), journal=journal) as second:
        assert list(second.map(colorize, ["a", "b", "c"], on_error="skip")) == []
    assert second.report.skipped == 3
    assert [failure.key for failure in second.report.failed_items] == ["b"]
    broken.clear()
    calls.clear()
    with managed_batch(
        manager=RecordingManager(), journal=Journal(journal, retry_failed=True)
    ) as third:
        assert list(third.map(colorize, ["a", "b", "c"], on_error="skip")) == ["b"]
    assert calls == ["b"]
    assert third.report.failed_items == ()
    assert read_journal(journal).failed == {}


def test_an_oom_that_retries_did_not_cure_is_skipped_and_freed() -> None:
    """map(on_error="skip") records an OOM that @auto_clear's retries did not cure, counts it
    once, frees its memory, and goes on."""

    @auto_clear(oom_retries=1)
    def colorize(image: int) -> int:
        if image == 2:
            raise oom_error("cuda")
        return image

    manager = RecordingManager()
    with managed_batch(manager=manager) as batch:
        assert list(batch.map(colorize, range(4), on_error="skip")) == [0, 1, 3]
    report = batch.report
    assert [failure.key for failure in report.failed_items] == [2]
    assert report.failed_items[0].error_type == "OutOfMemoryError"
    assert report.ooms == 2  # the call and its one retry
    assert report.gc_runs >= 2  # the retry's recovery and the skipped item's


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(outcomes=st.lists(st.sampled_from(["ok", "ok", "error", "oom"]), max_size=16))
def test_every_item_ends_in_results_or_failures_exactly_once(outcomes: list[str]) -> None:
    """Under any mix of errors and OOMs, each item is in the results or in failed_items,
    exactly once, in order."""

    def colorize(index: int) -> int:
        if outcomes[index] == "error":
            raise ValueError(index)
        if outcomes[index] == "oom":
            raise oom_error("cuda")
        return index

    with managed_batch(manager=RecordingManager()) as batch:
        results = list(batch.map(colorize, range(len(outcomes)), on_error="skip"))
    failed = [failure.key for failure in batch.report.failed_items]
    assert batch.report.ooms == outcomes.count("oom")
    assert sorted(results + failed) == list(range(len(outcomes)))  # type: ignore[operator]
    assert results == [n for n, outcome in enumerate(outcomes) if outcome == "ok"]
    assert batch.report.items == len(results)


# A real crash ------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from memscope import managed_batch
    from memscope.testing import RecordingManager

    journal, log = sys.argv[1], sys.argv[2]
    with open(log, "a") as processed, managed_batch(
        manager=RecordingManager(), journal=journal
    ) as batch:
        for image in batch.track([f"image-{n}" for n in range(30)]):
            processed.write(image + "\\n")
            processed.flush()
            os.fsync(processed.fileno())
            time.sleep(0.01)
    """
)


def test_sigkill_mid_batch_loses_nothing_and_repeats_at_most_one(tmp_path: Path) -> None:
    """A real SIGKILL of the process mid-batch, then a rerun: every item processed, none
    lost; only the item in flight at the kill runs twice."""
    journal, log = tmp_path / "run.jsonl", tmp_path / "processed.log"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, str(script), str(journal), str(log)]
    child = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count('"done"') >= 10:
            break
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    done_before = read_journal(journal).done
    assert 10 <= len(done_before) < 30
    subprocess.run(command, check=True, timeout=120)
    processed = log.read_text().split()
    expected = [f"image-{n}" for n in range(30)]
    assert sorted(set(processed)) == sorted(expected)
    assert len(processed) - len(expected) <= 1
    summary = read_journal(journal)
    assert summary.done == set(expected)
    assert summary.runs == 2
    assert json.loads(journal.read_text().splitlines()[0])["type"] == "header"


def test_with_a_journal_the_timeline_streams_to_disk(tmp_path: Path) -> None:
    """timeline=True with a journal keeps no timeline in memory: the entries go to the
    journal, a rerun continues their numbering, and CSV and plot read them back."""
    journal = tmp_path / "run.jsonl"
    images = [f"{n}.png" for n in range(30)]
    with managed_batch(manager=RecordingManager(), journal=journal, timeline=True) as first:
        for image in first.track(images):
            if image == "20.png":
                break
    assert first.report.timeline == ()
    _, second = run_batch(journal, images, timeline=True)
    report = second.report  # type: ignore[attr-defined]
    assert report.timeline == ()
    assert report.timeline_file == str(journal)
    assert [entry.item for entry in report.timeline_entries()] == list(range(1, 31))
    rows = report.to_csv(tmp_path / "timeline.csv").read_text().splitlines()
    assert len(rows) == 31
    pytest.importorskip("matplotlib")
    assert report.plot(tmp_path / "timeline.png").stat().st_size > 0


def test_threads_write_whole_journal_lines(tmp_path: Path) -> None:
    """Eight threads finishing items at once leave one whole line per item."""
    import threading

    journal = tmp_path / "run.jsonl"
    with managed_batch(manager=RecordingManager(), journal=journal) as batch:

        def worker(start: int) -> None:
            for _ in batch.track(range(start, start + 100)):
                pass

        threads = [threading.Thread(target=batch.bind(worker), args=(n * 100,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert read_journal(journal).done == set(range(800))
