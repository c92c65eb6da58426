"""The journal at its edges: torn headers, keys that cannot be journaled, repeated keys, odd
exceptions, special files, non-UTF-8 keys in CSV, the figures a rerun reports."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from memscope import InvalidArgumentError, InvalidArgumentTypeError, managed_batch
from memscope.cli._command import main
from memscope.exceptions import JournalError
from memscope.journal import MAX_KEY_LENGTH, Journal, item_key, read_journal
from memscope.reports import BatchReport, ItemFailure
from memscope.testing import RecordingManager

HEADER = '{"type": "header", "format": 2, "job": null, "memscope": "0"}\n'


def run_batch(journal: Path, items: list[str], **options: object) -> list[str]:
    """Run a journaled batch over ``items``; return the items whose body ran."""
    processed: list[str] = []
    with managed_batch(manager=RecordingManager(), journal=journal, **options) as batch:  # type: ignore[arg-type]
        for item in batch.track(items):
            processed.append(item)
    return processed


# Torn headers ------------------------------------------------------------------------------


def test_a_journal_whose_only_line_is_a_torn_header_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash while the header was written leaves a torn first line and nothing else: the
    next run warns, writes a new header and processes every item."""
    journal = tmp_path / "run.jsonl"
    journal.write_text(HEADER[:25])
    with caplog.at_level(logging.WARNING, logger="memscope"):
        assert run_batch(journal, ["a", "b"]) == ["a", "b"]
    assert "starting afresh" in caplog.text
    summary = read_journal(journal)
    assert (summary.done, summary.runs, summary.truncated_tail) == ({"a", "b"}, 1, False)


def test_a_torn_header_before_records_is_an_error_naming_the_line(tmp_path: Path) -> None:
    """A damaged first line with records after it is not a crash's torn tail: refused,
    naming the file and line 1."""
    journal = tmp_path / "run.jsonl"
    journal.write_text(HEADER[:25] + "\n" + '{"type": "done", "key": "a"}\n')
    with pytest.raises(JournalError, match=rf"{journal}, line 1: not a journal record"):
        run_batch(journal, ["a"])


# Keys ---------------------------------------------------------------------------------------


def huge_ints() -> Iterator[int]:
    """A generator: its keys are made as items are reached."""
    yield 10**5000


@pytest.mark.parametrize("items", [[10**5000], huge_ints()], ids=["list", "generator"])
def test_a_huge_int_key_is_refused_before_its_items_work(tmp_path: Path, items: object) -> None:
    """10**5000 as a key is a clear InvalidArgumentError from the key check: the item's work
    never runs, and no raw ValueError of int-to-str conversion comes later."""
    worked: list[object] = []

    def work_on_each() -> None:
        with managed_batch(manager=RecordingManager(), journal=tmp_path / "run.jsonl") as batch:
            for item in batch.track(items):  # type: ignore[call-overload]
                worked.append(item)

    with pytest.raises(InvalidArgumentError, match=r"at most 4096 .* an int of 16610 bits"):
        work_on_each()
    assert worked == []
    assert read_journal(tmp_path / "run.jsonl").items_done == 0


def test_key_limits_are_exact_and_their_messages_are_safe() -> None:
    """Keys of MAX_KEY_LENGTH characters or digits pass, one more is refused; an item whose
    repr raises still gets a clear message."""
    assert item_key("k" * MAX_KEY_LENGTH) == "k" * MAX_KEY_LENGTH
    assert item_key(10 ** (MAX_KEY_LENGTH - 1)) == 10 ** (MAX_KEY_LENGTH - 1)
    assert item_key(-(10**MAX_KEY_LENGTH - 1)) == -(10**MAX_KEY_LENGTH - 1)
    with pytest.raises(InvalidArgumentError, match="a str of 4097 characters"):
        item_key("k" * (MAX_KEY_LENGTH + 1))
    with pytest.raises(InvalidArgumentError, match="key="):
        item_key(10**MAX_KEY_LENGTH)

    class NoRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(InvalidArgumentTypeError, match="<NoRepr object>"):
        item_key(NoRepr())


# Repeated keys -------------------------------------------------------------------------------


def test_a_repeated_key_counts_per_occurrence(tmp_path: Path) -> None:
    """["a", "a", "b"] journals three items; a rerun skips exactly the occurrences journaled
    (both "a"s and the "b"), and a third "a" is new work."""
    journal = tmp_path / "run.jsonl"
    assert run_batch(journal, ["a", "a", "b"]) == ["a", "a", "b"]
    summary = read_journal(journal)
    assert (summary.items_done, summary.done, summary.done_repeats) == (3, {"a", "b"}, {"a": 1})
    rerun = Journal(journal)
    rerun.open()
    assert [rerun.reached(key) for key in ["a", "b", "a", "a"]] == ["done", "done", "done", "new"]
    rerun.done("a")
    rerun.close(0.0)
    assert read_journal(journal).items_done == 4


def test_repeated_failures_are_retried_one_occurrence_each(tmp_path: Path) -> None:
    """Two failed occurrences of "a": retry_failed=True retries both; one finishing clears one
    failure, one failing again replaces the other; without retry_failed both are skipped."""
    journal = tmp_path / "run.jsonl"
    first = Journal(journal)
    first.open()
    for reason in ("first", "second"):
        first.failed(ItemFailure("a", "ValueError", reason))
    first.close(0.0)
    assert (read_journal(journal).items_failed, read_journal(journal).items_done) == (2, 0)
    skipping = Journal(journal)
    skipping.open()
    assert [skipping.reached("a") for _ in range(3)] == ["failed", "failed", "new"]
    skipping.close(0.0)
    retrying = Journal(journal, retry_failed=True)
    retrying.open()
    assert [retrying.reached("a") for _ in range(2)] == ["retry", "retry"]
    retrying.done("a")
    retrying.failed(ItemFailure("a", "ValueError", "third"))
    retrying.close(0.0)
    summary = read_journal(journal)
    assert (summary.items_done, summary.items_failed) == (1, 1)
    assert summary.failed["a"].message == "third"
    assert retrying.retried == 2


# Odd exceptions ------------------------------------------------------------------------------


class UnprintableError(Exception):
    """An exception whose message cannot be made."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


class BadNote:
    """A note whose str() raises."""

    def __str__(self) -> str:
        raise RuntimeError("no note")


def odd_errors() -> list[BaseException]:
    """Exceptions with malformed notes or messages, as user code can make them."""
    int_notes = ValueError("int notes")
    int_notes.__notes__ = 5  # type: ignore[attr-defined]
    bad_note = ValueError("bad note")
    bad_note.__notes__ = ["fine", BadNote()]  # type: ignore[attr-defined]
    return [int_notes, bad_note, UnprintableError()]


def test_item_failure_of_records_any_notes_and_message() -> None:
    """ItemFailure.of never raises: notes that are an int or a note whose str() raises, and
    a message whose str() raises, become placeholders; the rest is kept."""
    int_notes, bad_note, unprintable = (ItemFailure.of("k", e) for e in odd_errors())
    assert int_notes == ItemFailure("k", "ValueError", "int notes", ("5",))
    assert bad_note == ItemFailure(
        "k", "ValueError", "bad note", ("fine", "<a note of type BadNote>")
    )
    assert unprintable == ItemFailure("k", "UnprintableError", "<unprintable UnprintableError>")


def test_map_skip_records_failures_with_odd_notes(tmp_path: Path) -> None:
    """map(on_error="skip") records each odd failure in the report and the journal and goes
    on to the next item."""
    errors = dict(zip(["x", "y", "z"], odd_errors(), strict=True))

    def fail(item: str) -> str:
        if item in errors:
            raise errors[item]
        return item

    journal = tmp_path / "run.jsonl"
    with managed_batch(manager=RecordingManager(), journal=journal) as batch:
        results = list(batch.map(fail, ["x", "y", "z", "ok"], on_error="skip"))
    assert results == ["ok"]
    assert [failure.key for failure in batch.report.failed_items] == ["x", "y", "z"]
    assert set(read_journal(journal).failed) == {"x", "y", "z"}


# Special files --------------------------------------------------------------------------------


def special_files(tmp_path: Path) -> list[Path]:
    """A device that never ends, one that is never valid, and a FIFO nobody writes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return [Path("/dev/zero"), Path("/dev/urandom"), fifo]


@pytest.mark.skipif(sys.platform == "win32", reason="device files and FIFOs are POSIX")
def test_report_refuses_what_is_not_a_regular_file_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """memscope report on /dev/zero, /dev/urandom or a FIFO: exit 2 and one line naming the
    path, without reading (no hang, no MemoryError)."""
    for path in special_files(tmp_path):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"{path} is not a regular file" in err


@pytest.mark.skipif(sys.platform == "win32", reason="device files and FIFOs are POSIX")
def test_a_batchs_journal_must_be_a_regular_file(tmp_path: Path) -> None:
    """A batch given /dev/zero or a FIFO as its journal is refused, naming the path."""
    for path in special_files(tmp_path):
        with pytest.raises(JournalError, match=f"{path} is not a regular file"):
            run_batch(path, ["a"])
        assert not path.with_name(f"{path.name}.lock").exists()


def test_report_bounds_each_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line over a MiB (no journal writes one) is an error naming the line, read without
    holding more than that bound."""
    journal = tmp_path / "run.jsonl"
    journal.write_text(HEADER + "x" * (3 << 20) + "\n")
    assert main(["report", str(journal)]) == 2
    assert f"{journal}, line 2: not a journal record: it is longer than" in capsys.readouterr().err


# CSV ------------------------------------------------------------------------------------------


def test_failures_csv_round_trips_non_utf8_keys_as_json_does(tmp_path: Path) -> None:
    """A key from a non-UTF-8 file name (surrogate-escaped) comes back from the CSV as the
    same string, as it does from JSON; the CSV holds the name's own bytes."""
    key = os.fsdecode(b"caf\xe9-\xff.png")

    def unreadable(name: str) -> None:
        raise OSError(f"bad {name}")

    with managed_batch(manager=RecordingManager()) as batch:
        assert list(batch.map(unreadable, [key], on_error="skip", key=lambda name: name)) == []
    report = batch.report
    with_json = BatchReport.from_json(report.to_json(tmp_path / "report.json"))
    path = report.failures_to_csv(tmp_path / "failures.csv")
    assert b"caf\xe9-\xff.png" in path.read_bytes()
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as file:
        rows = list(csv.reader(file))
    assert rows[1][:3] == [key, "OSError", f"bad {key}"]
    assert with_json.failed_items[0].key == rows[1][0]


# The figures a rerun reports ---------------------------------------------------------------------


def test_a_rerun_counts_done_failed_and_retried_apart(tmp_path: Path) -> None:
    """A journal of 18 done and 2 failed items: a rerun skips 18 done and 2 failed (20 in
    all), or with retry_failed skips 18 and retries 2; the summary says 18 and 2."""
    journal = tmp_path / "run.jsonl"
    keys = [f"item-{n}" for n in range(20)]
    first = Journal(journal)
    first.open()
    for key in keys[:18]:
        first.done(key)
    for key in keys[18:]:
        first.failed(ItemFailure(key, "ValueError", "bad"))
    first.close(1.0)
    summary = read_journal(journal)
    assert (summary.items_done, summary.items_failed) == (18, 2)
    assert json.loads(json.dumps(summary.to_dict()))["done"] == 18
    for retry_failed, figures in ((False, (18, 2, 0)), (True, (18, 0, 2))):
        rerun = Journal(journal, retry_failed=retry_failed)
        rerun.open()
        said = [rerun.reached(key) for key in keys]
        rerun.close(0.0)
        assert (rerun.skipped_done, rerun.skipped_failed, rerun.retried) == figures
        assert said.count("done") == 18


# Unbuffered records, flat memory -----------------------------------------------------------------


def test_each_record_reaches_the_os_when_written(tmp_path: Path) -> None:
    """With sync_every=50, a record is in the file (seen through another descriptor) as soon
    as done() returns: nothing waits in a Python buffer for a SIGKILL to lose."""
    journal = Journal(tmp_path / "run.jsonl", sync_every=50)
    journal.open()
    journal.done("a")
    assert (tmp_path / "run.jsonl").read_text().splitlines()[-1].startswith('{"type": "done"')
    journal.close(0.0)


def journal_peak(path: Path, count: int) -> int:
    """Traced peak bytes of journaling ``count`` items as the batch does, keys made as
    reached (the loop's own objects are made and freed one at a time)."""
    journal = Journal(path, sync_every=10**6)
    journal.open()
    tracemalloc.start()
    try:
        for number in range(count):
            key = item_key(f"line-art/{number:07}.png")
            if journal.reached(key) == "new":
                journal.done(key)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        journal.close(0.0)


def test_journaling_memory_does_not_grow_with_the_items(tmp_path: Path) -> None:
    """The writer keeps nothing per item: the peak for 3,000 items is that of 300."""
    small = journal_peak(tmp_path / "small.jsonl", 300)
    large = journal_peak(tmp_path / "large.jsonl", 3_000)
    assert large < small + 16 * 1024
    assert read_journal(tmp_path / "large.jsonl").items_done == 3_000


def batch_peak(path: Path, items: object) -> int:
    """Traced peak bytes of a journaled ``batch.track(items)`` loop (``items`` built before)."""
    with managed_batch(
        manager=RecordingManager(), journal=Journal(path, sync_every=10**6)
    ) as batch:
        tracemalloc.start()
        try:
            for _ in batch.track(items):  # type: ignore[call-overload]
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_a_journaled_batch_over_a_generator_stays_flat(tmp_path: Path) -> None:
    """Through managed_batch, keys made as a generator's items are reached: the peak for
    800 items is that of 100."""
    batch_peak(tmp_path / "warm-up.jsonl", (f"{n:07}.png" for n in range(100)))  # first-use caches
    small = batch_peak(tmp_path / "small.jsonl", (f"{n:07}.png" for n in range(100)))
    large = batch_peak(tmp_path / "large.jsonl", (f"{n:07}.png" for n in range(800)))
    assert large < small + 24 * 1024


def test_a_rerun_through_the_batch_skips_each_journaled_occurrence(tmp_path: Path) -> None:
    """After ["a", "a", "b"], a rerun over ["a", "a", "a", "b"] works on the third "a" only."""
    journal = tmp_path / "run.jsonl"
    run_batch(journal, ["a", "a", "b"])
    assert run_batch(journal, ["a", "a", "a", "b"]) == ["a"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    runs=st.lists(st.tuples(st.sampled_from("abcd"), st.booleans()), min_size=1, max_size=12),
    stop=st.integers(min_value=0, max_value=12),
)
def test_reruns_work_on_every_occurrence_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, runs: list[tuple[str, bool]], stop: int
) -> None:
    """Any keys with repeats, each occurrence failing or not, a first run stopped after
    ``stop`` items, then a rerun with retry_failed=True and one without: every occurrence is
    worked on once, plus once more for each failure retried; the journal ends with each
    occurrence done or failed exactly once."""
    journal = tmp_path_factory.mktemp("journal") / "run.jsonl"
    keys = [key for key, _ in runs]
    worked: list[str] = []

    def run(items: list[tuple[str, bool]], *, retry_failed: bool, succeed: bool) -> None:
        writer = Journal(journal, retry_failed=retry_failed)
        writer.open()
        for key, fails in items:
            if writer.reached(key) not in ("new", "retry"):
                continue
            worked.append(key)
            if fails and not succeed:
                writer.failed(ItemFailure(key, "ValueError", "bad"))
            else:
                writer.done(key)
        writer.close(0.0)

    run(runs[:stop], retry_failed=False, succeed=False)
    run(runs, retry_failed=False, succeed=False)
    failed_first = sum(fails for _, fails in runs)
    assert Counter(worked) == Counter(keys)
    summary = read_journal(journal)
    assert (summary.items_done, summary.items_failed) == (len(keys) - failed_first, failed_first)
    run(runs, retry_failed=True, succeed=True)
    assert len(worked) == len(keys) + failed_first
    summary = read_journal(journal)
    assert (summary.items_done, summary.items_failed) == (len(keys), 0)


def test_a_failure_too_long_for_a_line_is_cut_to_fit(tmp_path: Path) -> None:
    """A 2 MiB error message is journaled cut short, with how much was cut, and the journal
    still reads: no record is longer than a journal line."""
    journal = Journal(tmp_path / "run.jsonl")
    journal.open()
    journal.failed(ItemFailure("k", "ValueError", "m" * (2 << 20), ("n" * (2 << 20),)))
    journal.close(0.0)
    failure = read_journal(tmp_path / "run.jsonl").failed["k"]
    assert failure.message.startswith("m" * 16384)
    assert failure.message.endswith(f"... ({(2 << 20) - 16384} more)")
    assert len(failure.notes) == 1
    assert failure.notes[0].endswith(f"... ({(2 << 20) - 16384} more)")


def test_a_rerun_reports_done_failed_and_retried_so_the_numbers_add_up(tmp_path: Path) -> None:
    """Through the batch, a rerun of a journal of 18 done and 2 failed says "18 items done and
    2 failed by earlier runs (skipped)"; with retry_failed, 18 done and 2 failed items retried."""
    journal = tmp_path / "run.jsonl"
    keys = [f"item-{n}" for n in range(20)]

    def work(key: str) -> str:
        if key in keys[18:]:
            raise ValueError("bad")
        return key

    with managed_batch(manager=RecordingManager(), journal=journal) as first:
        list(first.map(work, keys, on_error="skip"))
    with managed_batch(manager=RecordingManager(), journal=journal) as rerun:
        list(rerun.map(work, keys, on_error="skip"))
    report = rerun.report
    assert (report.skipped, report.skipped_failed, report.retried) == (20, 2, 0)
    assert "18 items done and 2 failed by earlier runs (skipped)" in str(report)
    retry = Journal(journal, retry_failed=True)
    with managed_batch(manager=RecordingManager(), journal=retry) as third:
        list(third.map(lambda key: key, keys))
    assert (third.report.skipped, third.report.retried) == (18, 2)
    assert "18 items done by earlier runs (skipped)" in str(third.report)
    assert "2 failed items of earlier runs retried" in str(third.report)
