"""Heap freezing inside managed_batch: fast collections that still free the batch's cycles."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import weakref

import pytest
import torch

from memscope import _heap, managed_batch
from memscope._heap import heap_holders, heap_is_unfrozen
from memscope.testing import FakeDevice, GiB, RecordingManager


class Node:
    """One half of a reference cycle."""

    def __init__(self) -> None:
        self.partner: Node | None = None
        self.tensor: torch.Tensor | None = None


def make_cycle_holding_tensor() -> weakref.ref[torch.Tensor]:
    """Leave a two-node cycle that holds a 4 MB tensor; return a weak reference to it."""
    first, second = Node(), Node()
    first.partner, second.partner = second, first
    first.tensor = torch.zeros(1024, 1024)
    return weakref.ref(first.tensor)


@pytest.fixture(autouse=True)
def _no_frozen_heap_left() -> None:
    """Each test starts with nothing frozen."""
    assert heap_is_unfrozen()


def test_objects_from_before_the_batch_are_frozen_inside_it() -> None:
    """Inside the batch the pre-existing heap sits in the permanent generation."""
    with managed_batch(manager=RecordingManager()):
        assert not heap_is_unfrozen()
        assert heap_holders() == 1
    assert heap_is_unfrozen()
    assert heap_holders() == 0


def test_cycles_created_in_the_batch_are_still_collected() -> None:
    """A cycle holding a tensor, made and dropped during the batch, is freed by the batch's
    threshold GC."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_usage(0.9)
        with managed_batch("cuda", every=1) as batch:
            tensor = make_cycle_holding_tensor()
            assert tensor() is not None
            batch.step()
            assert tensor() is None
    assert batch.report.gc_runs >= 1


def test_cycles_from_before_the_batch_wait_until_it_ends() -> None:
    """The documented trade-off: garbage that predates the batch survives its collections,
    and is collectable again once the batch has ended."""
    gc.disable()
    try:
        tensor = make_cycle_holding_tensor()
        with managed_batch(manager=RecordingManager()):
            gc.collect()
            assert tensor() is not None
        gc.collect()
        assert tensor() is None
    finally:
        gc.enable()


def test_heap_is_unfrozen_after_an_exception() -> None:
    """An exception in the batch still unfreezes the heap."""

    def run() -> None:
        with managed_batch(manager=RecordingManager()):
            raise RuntimeError("bad image")

    with pytest.raises(RuntimeError):
        run()
    assert heap_is_unfrozen()


def test_heap_is_unfrozen_after_keyboard_interrupt() -> None:
    """Ctrl-C in the batch still unfreezes the heap."""

    def run() -> None:
        with managed_batch(manager=RecordingManager()):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run()
    assert heap_is_unfrozen()


def test_nested_batches_unfreeze_only_at_the_last_exit() -> None:
    """The freeze is reference-counted: the inner exit keeps it, the outer exit ends it."""
    with managed_batch(manager=RecordingManager()):
        with managed_batch(manager=RecordingManager()):
            assert heap_holders() == 2
        assert heap_holders() == 1
        assert not heap_is_unfrozen()
    assert heap_is_unfrozen()


def test_concurrent_batches_in_threads_share_the_freeze() -> None:
    """Batches in several threads keep the heap frozen until the last one ends."""
    entered = threading.Barrier(4)
    release = threading.Event()

    def run() -> None:
        with managed_batch(manager=RecordingManager()):
            entered.wait(timeout=10)
            release.wait(timeout=10)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    entered.wait(timeout=10)
    assert heap_holders() == 3
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert heap_holders() == 0
    assert heap_is_unfrozen()


def test_freeze_heap_false_leaves_the_heap_alone() -> None:
    """freeze_heap=False opts out."""
    with managed_batch(manager=RecordingManager(), freeze_heap=False):
        assert heap_is_unfrozen()


def test_someone_elses_freeze_is_respected() -> None:
    """If the heap was frozen before the batch (say, before a fork), the batch neither
    freezes more nor unfreezes it."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with managed_batch(manager=RecordingManager()):
            # No second freeze: objects made since (this frame's, the manager) stay out.
            assert gc.get_freeze_count() <= frozen
        assert not heap_is_unfrozen()
    finally:
        gc.unfreeze()


def test_someone_elses_freeze_is_reported_once_with_the_way_out(
    memscope_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that finds the heap frozen by other code warns once per process, naming how
    many objects were frozen and freeze_heap=False; later batches only log at DEBUG."""
    monkeypatch.setattr(_heap, "_foreign_freeze_reported", False)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        for _ in range(2):
            with managed_batch(manager=RecordingManager()):
                pass
    finally:
        gc.unfreeze()
    warnings = [record for record in memscope_log.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{frozen} objects were frozen" in warnings[0].getMessage()
    assert "freeze_heap=False" in warnings[0].getMessage()


def test_freeze_heap_false_with_someone_elses_freeze_says_nothing(
    memscope_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """freeze_heap=False never looks at the heap, so it never warns about another freeze."""
    monkeypatch.setattr(_heap, "_foreign_freeze_reported", False)
    gc.freeze()
    try:
        with managed_batch(manager=RecordingManager(), freeze_heap=False):
            pass
    finally:
        gc.unfreeze()
    assert not [record for record in memscope_log.records if record.levelno >= logging.WARNING]


def test_freeze_heap_must_be_a_bool() -> None:
    """A non-bool freeze_heap is refused."""
    with pytest.raises(TypeError, match="freeze_heap"):
        managed_batch(freeze_heap="yes")  # type: ignore[arg-type]


SMALL_FREEZE_AT_START = """
import gc
gc.freeze()  # before site and any library: the interpreter's own few thousand objects
at_start = gc.get_freeze_count()
from memscope import managed_batch
from memscope.testing import RecordingManager
with managed_batch(manager=RecordingManager()):
    inside = gc.get_freeze_count()
print(at_start, inside, gc.get_freeze_count())
"""


def test_a_freeze_of_the_interpreter_s_own_objects_does_not_turn_freezing_off() -> None:
    """Some Python 3.12 builds keep a few hundred objects frozen from start-up; a permanent
    generation that small is not another program's freeze, so the batch freezes the loaded
    heap and unfreezes it at the end."""
    paths = [entry for entry in sys.path if entry]
    result = subprocess.run(
        [sys.executable, "-S", "-c", SMALL_FREEZE_AT_START],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )
    assert result.returncode == 0, result.stderr
    at_start, inside, after = (int(number) for number in result.stdout.split())
    assert 0 < at_start <= _heap.INTERPRETER_FROZEN_OBJECTS
    assert inside > 10 * _heap.INTERPRETER_FROZEN_OBJECTS
    assert after == 0
