"""The out-of-memory note: figures at failure, sizes tried, snapshot file, one per error."""

from __future__ import annotations

import logging

import pytest

from memscope import MemoryManager, MemorySnapshot
from memscope.oom import add_oom_note
from memscope.testing import FakeDevice, GiB, MiB, oom_error


def test_note_holds_figures_sizes_and_snapshot_path() -> None:
    """The note names the device, its five figures, the sizes tried and the snapshot file."""
    error = oom_error("cuda")
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=20 * GiB, reserved=22 * GiB, other_processes=512 * MiB)
        manager = MemoryManager("cuda")
        note = add_oom_note(
            error, manager, batch_sizes_tried=[32, 16, 8], snapshot_path="/runs/oom.pickle"
        )
    assert note == (
        "memscope: out of memory on cuda:0\n"
        "  at failure: allocated 20.0 GiB, reserved 22.0 GiB, free 1.5 GiB, total 24.0 GiB, "
        "peak allocated 20.0 GiB\n"
        "  batch sizes tried: 32, 16, 8\n"
        "  memory history snapshot: /runs/oom.pickle "
        "(open it at https://pytorch.org/memory_viz)"
    )
    assert error.__notes__ == [note]


def test_note_without_sizes_or_snapshot_has_only_figures() -> None:
    """Lines for sizes and snapshot appear only when there is something to say."""
    error = oom_error("cuda")
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=1 * GiB)
        note = add_oom_note(error, MemoryManager("cuda"))
    assert note is not None
    assert note.splitlines()[0] == "memscope: out of memory on cuda:0"
    assert len(note.splitlines()) == 2


def test_cpu_note_says_the_device_reports_no_figures() -> None:
    """A device with no memory figures is said to report none, not shown as zeros."""
    error = MemoryError()
    note = add_oom_note(error, MemoryManager("cpu"), batch_sizes_tried=(4, 2))
    assert note == (
        "memscope: out of memory on cpu\n"
        "  at failure: the device reports no memory figures\n"
        "  batch sizes tried: 4, 2"
    )


def test_note_without_manager_leaves_figures_out() -> None:
    """Without a manager the note still carries what it knows."""
    error = oom_error("cuda")
    note = add_oom_note(error, None, snapshot_path="/tmp/s.pickle")
    assert note is not None
    assert note.splitlines()[0] == "memscope: out of memory"
    assert "at failure" not in note
    assert "/tmp/s.pickle" in note


def test_second_layer_completes_the_note_instead_of_adding_one() -> None:
    """One note per error: a second call fills in what the first did not know."""
    error = oom_error("cuda")
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=7 * GiB)
        manager = MemoryManager("cuda")
        add_oom_note(error, manager, batch_sizes_tried=[8, 4])
        fake.set_memory(allocated=1 * GiB, reserved=1 * GiB)
        note = add_oom_note(error, manager, snapshot_path="/runs/s.pickle")
    assert len(error.__notes__) == 1
    assert error.__notes__[0] == note
    assert note is not None
    assert "allocated 7.0 GiB" in note
    assert "batch sizes tried: 8, 4" in note
    assert "/runs/s.pickle" in note


def test_repeated_note_is_not_duplicated() -> None:
    """The same note attached twice stays one note."""
    error = oom_error("cuda")
    manager = MemoryManager("cpu")
    first = add_oom_note(error, manager, batch_sizes_tried=[2, 1])
    second = add_oom_note(error, manager, batch_sizes_tried=[2, 1])
    assert first == second
    assert error.__notes__ == [first]


def test_other_notes_are_kept() -> None:
    """Notes added by others before and after stay where they are."""
    error = oom_error("cuda")
    error.add_note("from the user")
    add_oom_note(error, None, batch_sizes_tried=[2])
    error.add_note("later")
    add_oom_note(error, None, snapshot_path="/s.pickle")
    assert error.__notes__[0] == "from the user"
    assert error.__notes__[1].startswith("memscope: out of memory")
    assert "/s.pickle" in error.__notes__[1]
    assert error.__notes__[2] == "later"


class _BrokenSnapshotManager(MemoryManager):
    """A manager whose snapshot fails."""

    def snapshot(self) -> MemorySnapshot:
        raise RuntimeError("driver gone")


def test_failing_snapshot_is_logged_and_noted(memscope_log: pytest.LogCaptureFixture) -> None:
    """A snapshot that raises gives a note saying the figures are unavailable, and a log."""
    error = oom_error("cuda")
    note = add_oom_note(error, _BrokenSnapshotManager("cpu"), batch_sizes_tried=[1])
    assert note is not None
    assert "memory figures unavailable: RuntimeError('driver gone')" in note
    assert "batch sizes tried: 1" in note
    assert any(record.levelno == logging.WARNING for record in memscope_log.records)


def test_note_that_cannot_be_attached_never_raises(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """If the error refuses notes, add_oom_note logs and returns None."""
    error = oom_error("cuda")
    error.__notes__ = "not a list"  # type: ignore[assignment]
    assert add_oom_note(error, None, batch_sizes_tried=[1]) is None
    assert any("could not attach" in record.getMessage() for record in memscope_log.records)


def test_the_note_goes_into_the_errors_notes_list() -> None:
    """The note is appended to ``__notes__`` (made when missing), as add_note does; the same
    code runs on Python 3.10, which has no add_note."""
    error = oom_error("cuda")
    note = add_oom_note(error, None, batch_sizes_tried=[2])
    assert error.__notes__ == [note]
    fresh = oom_error("cuda")
    fresh.__notes__ = ["earlier"]
    add_oom_note(fresh, None, batch_sizes_tried=[2])
    assert fresh.__notes__[0] == "earlier"
    assert len(fresh.__notes__) == 2
