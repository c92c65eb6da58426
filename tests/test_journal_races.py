"""Journals under real processes: one writer per journal, and SIGKILL repeats one item at most.

The processes are forked (POSIX only): a spawned one would import torch again, seconds each.
Each child runs a real ``managed_batch(journal=...)`` and ends with ``os._exit``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from memscope import managed_batch
from memscope.exceptions import JournalError
from memscope.journal import Journal, read_journal
from memscope.testing import RecordingManager

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork and flock are POSIX")

REFUSED = 3


def forked(target: Callable[[], int]) -> int:
    """Run ``target`` in a forked child; return its pid (the child never returns)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            code = target()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    """Wait for the child ``pid``; its exit status, or minus the signal that ended it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def append(log: Path, line: str) -> None:
    """Append one line with one write to an O_APPEND descriptor: it survives a SIGKILL."""
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{line}\n".encode())
    finally:
        os.close(descriptor)


def logged(log: Path) -> list[str]:
    """The lines ``append`` wrote to ``log``."""
    return log.read_text().splitlines() if log.exists() else []


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    pid = forked(lambda: 0)
    exit_code(pid)
    return pid


def run_journaled(
    journal: Path, keys: list[str], work_log: Path, *, pause: float = 0.0, **options: object
) -> int:
    """A journaled batch over ``keys`` that logs each item's work; REFUSED when locked out."""
    try:
        writer = Journal(journal, **options)  # type: ignore[arg-type]
        with managed_batch(manager=RecordingManager(), journal=writer) as batch:
            for key in batch.track(keys):
                append(work_log, key)
                if pause:
                    time.sleep(pause)
    except JournalError:
        return REFUSED
    return 0


def test_a_refused_run_leaves_the_running_runs_lock_alone(tmp_path: Path) -> None:
    """While a run in another process holds the journal, every later run is refused, not
    just the first: a refused run never removes the holder's lock."""
    journal, work_log = tmp_path / "run.jsonl", tmp_path / "work.log"
    gate_read, gate_write = os.pipe()
    ready_read, ready_write = os.pipe()

    def holder() -> int:
        with managed_batch(manager=RecordingManager(), journal=journal) as batch:
            for _ in batch.track(["held"]):
                os.write(ready_write, b"!")
                os.read(gate_read, 1)
        return 0

    pid = forked(holder)
    try:
        assert os.read(ready_read, 1) == b"!"
        for _ in range(3):
            assert run_journaled(journal, ["a"], work_log) == REFUSED
        assert (tmp_path / "run.jsonl.lock").read_text().split() == [
            socket.gethostname(),
            str(pid),
        ]
    finally:
        os.write(gate_write, b"!")
        assert exit_code(pid) == 0
    assert logged(work_log) == []
    assert read_journal(journal).done == {"held"}


def test_a_refused_run_in_the_same_process_leaves_the_lock_alone(tmp_path: Path) -> None:
    """Inside one process too: two refused runs in a row while a batch holds the journal."""
    journal, work_log = tmp_path / "run.jsonl", tmp_path / "work.log"
    with managed_batch(manager=RecordingManager(), journal=journal):
        assert run_journaled(journal, ["a"], work_log) == REFUSED
        assert run_journaled(journal, ["a"], work_log) == REFUSED
    assert logged(work_log) == []
    assert run_journaled(journal, ["a"], work_log) == 0


def test_racing_runs_never_write_beside_each_other(tmp_path: Path) -> None:
    """Three processes start at once on one journal, 10 rounds, every other one with a dead
    run's lock left behind: every item is worked on and journaled exactly once."""
    keys = [f"item-{n}" for n in range(10)]
    for round_number in range(10):
        journal = tmp_path / f"run-{round_number}.jsonl"
        work_log = tmp_path / f"work-{round_number}.log"
        if round_number % 2 == 0:
            lock = journal.with_name(journal.name + ".lock")
            lock.write_text(f"{socket.gethostname()} {dead_pid()}\n")
        gate_read, gate_write = os.pipe()

        def contender(gate: int = gate_read, log: Path = work_log, path: Path = journal) -> int:
            os.read(gate, 1)
            return run_journaled(path, keys, log, pause=0.001)

        pids = [forked(contender) for _ in range(3)]
        os.write(gate_write, b"!!!")
        codes = [exit_code(pid) for pid in pids]
        os.close(gate_read)
        os.close(gate_write)
        assert set(codes) <= {0, REFUSED}, codes
        worked = Counter(logged(work_log))
        assert worked == Counter(keys), f"round {round_number}: {worked}"
        summary = read_journal(journal)
        assert summary.done == set(keys)
        assert summary.items_done == len(keys), f"round {round_number}: duplicate records"


def test_sigkill_with_sync_every_50_repeats_at_most_the_item_in_flight(tmp_path: Path) -> None:
    """sync_every=50, a real SIGKILL at a random item, then a rerun, 10 rounds: every
    item is worked on, and at most the one in flight at the kill twice."""
    keys = [f"item-{n:03}" for n in range(200)]
    chance = random.Random(22)
    for round_number in range(10):
        journal = tmp_path / f"run-{round_number}.jsonl"
        work_log = tmp_path / f"work-{round_number}.log"
        kill_after = chance.randrange(10, 180)

        def doomed(path: Path = journal, log: Path = work_log) -> int:
            return run_journaled(path, keys, log, pause=0.0005, sync_every=50)

        pid = forked(doomed)
        while len(logged(work_log)) < kill_after:
            time.sleep(0.0005)
        os.kill(pid, signal.SIGKILL)
        assert exit_code(pid) == -signal.SIGKILL
        killed_at = len(logged(work_log))
        assert run_journaled(journal, keys, work_log, sync_every=50) == 0
        worked = Counter(logged(work_log))
        assert set(worked) == set(keys)
        repeated = [key for key, times in worked.items() if times > 1]
        assert len(repeated) <= 1, f"round {round_number}, killed at {killed_at}: {repeated}"
        assert max(worked.values()) <= 2
        assert read_journal(journal).items_done == len(keys)
