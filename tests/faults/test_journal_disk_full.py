"""A full disk at the end of a journaled run, made real with RLIMIT_FSIZE in a forked child:
memscope's own write failing never replaces the user's exception, and never damages the file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memscope import managed_batch
from memscope.exceptions import JournalError
from memscope.journal import Journal, read_journal
from memscope.testing import RecordingManager

resource = pytest.importorskip("resource")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork and RLIMIT_FSIZE are POSIX")


def in_child_with_a_full_disk(body: Callable[[Callable[[], None]], dict[str, Any]]) -> Any:
    """Run ``body(fill_disk)`` in a forked child with SIGXFSZ ignored; ``fill_disk()`` caps
    every file at 10 bytes past the journal's size, so its next record is cut short and then
    refused (EFBIG). Return what ``body`` returned (sent back through a pipe)."""
    import signal

    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

            def fill_disk(paths: tuple[Path, ...] = ()) -> None:
                largest = max(path.stat().st_size for path in paths)
                _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
                resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 10, hard))

            outcome = body(fill_disk)
            os.write(writing, json.dumps(outcome).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        sent = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(sent)


def test_a_full_disk_at_close_is_a_note_on_the_users_error_or_raised(tmp_path: Path) -> None:
    """close(elapsed, error=user_error) with the end record refused by a full disk: nothing is
    raised, the user's error gets a note naming the journal; with no user error the failure is
    a JournalError. The half-written end record is taken back: the journal still reads."""
    noted_path, raised_path = tmp_path / "noted.jsonl", tmp_path / "raised.jsonl"

    def body(fill_disk: Callable[..., None]) -> dict[str, Any]:
        noted, raised = Journal(noted_path), Journal(raised_path)
        for journal in (noted, raised):
            journal.open()
            journal.done("a")
        fill_disk((noted_path, raised_path))
        user_error = ValueError("the user's own error")
        noted.close(1.0, error=user_error)
        try:
            raised.close(1.0)
        except JournalError as error:
            raised_as = f"{type(error).__name__}: {error}"
        else:
            raised_as = "nothing"
        return {"notes": getattr(user_error, "__notes__", []), "raised": raised_as}

    outcome = in_child_with_a_full_disk(body)
    assert len(outcome["notes"]) == 1
    assert str(noted_path) in outcome["notes"][0]
    assert "could not record the end of the run" in outcome["notes"][0]
    assert outcome["raised"].startswith(f"JournalError: the journal {raised_path}")
    assert "File too large" in outcome["raised"]
    for path in (noted_path, raised_path):
        summary = read_journal(path)
        assert (summary.done, summary.truncated_tail, summary.runs) == ({"a"}, False, 1)
        assert not (tmp_path / f"{path.name}.lock").exists()


def test_a_full_disk_at_a_batchs_exit_never_replaces_the_users_error(tmp_path: Path) -> None:
    """Through managed_batch: the body raises, the journal's end record hits a full disk; the
    user's ValueError comes out, with a note naming the journal."""
    journal = tmp_path / "run.jsonl"

    def body(fill_disk: Callable[..., None]) -> dict[str, Any]:
        try:
            with managed_batch(manager=RecordingManager(), journal=journal) as batch:
                for _ in batch.track(["a"]):
                    pass
                fill_disk((journal,))
                raise ValueError("the user's own error")
        except Exception as error:
            return {"type": type(error).__name__, "notes": getattr(error, "__notes__", [])}
        return {"type": "nothing", "notes": []}

    outcome = in_child_with_a_full_disk(body)
    assert outcome["type"] == "ValueError"
    assert any(str(journal) in note for note in outcome["notes"])
