"""MemoryHistoryRecorder: CUDA allocation history, snapshot files on OOM, no-op elsewhere."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
from pathlib import Path

import pytest
import torch

from memscope import InvalidArgumentError, InvalidArgumentTypeError, MemoryManager
from memscope.oom import MemoryHistoryRecorder
from memscope.testing import FakeCall, FakeDevice, GiB, oom_error

RECORD = "torch.cuda.memory._record_memory_history"
DUMP = "torch.cuda.memory._dump_snapshot"


def test_construction_touches_no_device(tmp_path: Path) -> None:
    """Making a recorder calls no torch function."""
    with FakeDevice("cuda") as fake:
        MemoryHistoryRecorder("cuda", tmp_path)
    assert fake.calls == []


def test_start_and_stop_switch_recording(tmp_path: Path) -> None:
    """start() records with the entry limit; stop() switches recording off."""
    with FakeDevice("cuda") as fake:
        recorder = MemoryHistoryRecorder("cuda", tmp_path, max_entries=5000)
        assert recorder.start() is True
        assert recorder.recording is True
        assert fake.memory_history == "all"
        recorder.stop()
        assert recorder.recording is False
        assert fake.memory_history is None
    assert fake.calls_to(RECORD) == [
        FakeCall(RECORD, (), (("enabled", "all"), ("max_entries", 5000))),
        FakeCall(RECORD, (), (("enabled", None),)),
    ]


def test_dump_writes_a_uniquely_named_snapshot(tmp_path: Path) -> None:
    """Each dump is a new pickle in the folder (created on demand), named what and when."""
    folder = tmp_path / "oom" / "snapshots"
    with FakeDevice("cuda") as fake, MemoryHistoryRecorder("cuda:0", folder) as recorder:
        first = recorder.dump()
        second = recorder.dump("colorize")
    assert first is not None
    assert second is not None
    assert first != second
    assert first.parent == folder
    assert re.fullmatch(r"memscope-oom-cuda0-\d{8}-\d{6}-pid\d+-\d+\.pickle", first.name)
    assert second.name.startswith("memscope-colorize-cuda0-")
    with first.open("rb") as file:
        assert set(pickle.load(file)) == {"segments", "device_traces"}
    assert recorder.snapshot_paths == [first, second]
    assert fake.snapshot_files == [str(first), str(second)]


def test_oom_leaving_the_block_dumps_and_notes(tmp_path: Path) -> None:
    """An OOM out of the block gets a snapshot file, named in its note; recording stops."""
    error = oom_error("cuda")
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=7 * GiB)
        recorder = MemoryHistoryRecorder("cuda", tmp_path, manager=MemoryManager("cuda"))
        with pytest.raises(torch.OutOfMemoryError) as info, recorder:
            raise error
    assert info.value is error
    assert len(recorder.snapshot_paths) == 1
    path = recorder.snapshot_paths[0]
    assert path.exists()
    (note,) = error.__notes__
    assert str(path) in note
    assert "allocated 7.0 GiB" in note
    assert "https://pytorch.org/memory_viz" in note
    assert fake.memory_history is None


def test_other_errors_and_success_write_nothing(tmp_path: Path) -> None:
    """Only out-of-memory errors produce snapshots; recording stops either way."""
    with FakeDevice("cuda") as fake:
        with pytest.raises(ValueError, match="bad"), MemoryHistoryRecorder("cuda", tmp_path):
            raise ValueError("bad")
        with MemoryHistoryRecorder("cuda", tmp_path):
            pass
    assert fake.count(DUMP) == 0
    assert fake.memory_history is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_devices_without_history_do_nothing(
    device: str, tmp_path: Path, memscope_log: pytest.LogCaptureFixture
) -> None:
    """Off CUDA, start() logs at INFO and returns False, and no snapshot is written."""
    with FakeDevice("mps"), FakeDevice("cuda") as cuda:
        recorder = MemoryHistoryRecorder(device, tmp_path)
        assert recorder.start() is False
        assert recorder.dump() is None
        recorder.stop()
    assert cuda.calls_to(RECORD) == []
    info = [r for r in memscope_log.records if r.levelno == logging.INFO]
    assert any("records no allocation history" in r.getMessage() for r in info)


def test_nested_recorders_share_recording(tmp_path: Path) -> None:
    """Recording stays on until the last recorder stops (torch's recording is global)."""
    with FakeDevice("cuda") as fake:
        outer = MemoryHistoryRecorder("cuda", tmp_path)
        inner = MemoryHistoryRecorder("cuda", tmp_path)
        outer.start()
        inner.start()
        inner.stop()
        assert fake.memory_history == "all"
        outer.stop()
        assert fake.memory_history is None
    assert fake.count(RECORD) == 2


def test_failing_start_is_logged_not_raised(
    tmp_path: Path, memscope_log: pytest.LogCaptureFixture
) -> None:
    """If torch refuses to record, start() warns and returns False."""
    with FakeDevice("cuda") as fake:
        fake.fail(RECORD, RuntimeError("no allocator"))
        recorder = MemoryHistoryRecorder("cuda", tmp_path)
        assert recorder.start() is False
        assert recorder.recording is False
    assert any(r.levelno == logging.WARNING for r in memscope_log.records)


def test_failing_dump_keeps_the_users_error(
    tmp_path: Path, memscope_log: pytest.LogCaptureFixture
) -> None:
    """A snapshot that cannot be written is logged; the OOM propagates unchanged."""
    error = oom_error("cuda")
    with FakeDevice("cuda") as fake:
        fake.fail(DUMP, OSError("disk full"))
        with pytest.raises(torch.OutOfMemoryError) as info, MemoryHistoryRecorder("cuda", tmp_path):
            raise error
        assert fake.memory_history is None
    assert info.value is error
    assert not hasattr(error, "__notes__")
    assert any("could not write" in r.getMessage() for r in memscope_log.records)


def test_async_context_manager(tmp_path: Path) -> None:
    """``async with`` records and dumps like ``with``."""

    async def run(recorder: MemoryHistoryRecorder) -> None:
        async with recorder:
            raise oom_error("cuda")

    with FakeDevice("cuda") as fake:
        recorder = MemoryHistoryRecorder("cuda", tmp_path)
        with pytest.raises(torch.OutOfMemoryError):
            asyncio.run(run(recorder))
    assert len(recorder.snapshot_paths) == 1
    assert fake.memory_history is None


def test_bad_arguments_fail_at_construction(tmp_path: Path) -> None:
    """Folder type, entry limit and manager are checked when the recorder is made."""
    with pytest.raises(InvalidArgumentTypeError, match="folder"):
        MemoryHistoryRecorder("cuda", 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="max_entries"):
        MemoryHistoryRecorder("cuda", tmp_path, max_entries=0)
    with pytest.raises(InvalidArgumentTypeError, match="manager"):
        MemoryHistoryRecorder("cuda", tmp_path, manager="cuda")  # type: ignore[arg-type]
