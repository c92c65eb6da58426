"""memscope.ray inside one worker, without a cluster: batches as rows, chunk sizes, settings."""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import memscope.ray
from memscope import (
    BatchSizeExhaustedError,
    BatchStateError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope._heap import heap_holders, heap_is_unfrozen
from memscope.batch import current_batch
from memscope.ray._actor import (
    ActorMemory,
    ActorSettings,
    chunk_sizing,
    describe_failure,
    device_for_gpus,
)
from memscope.ray._report import ActorBatchReport
from memscope.ray._rows import BatchRows, concatenate_batches, row_count
from memscope.ray._wrap import _managed_class
from memscope.testing import oom_error

numpy = pytest.importorskip("numpy", reason="Ray Data's batches are NumPy columns")


class RecordingReporter:
    """A Reporter that keeps what an actor would send to the collector."""

    def __init__(self) -> None:
        self.starts: list[tuple[int, int]] = []
        self.finishes: list[tuple[int, ActorBatchReport | None, str | None]] = []
        self.closes: list[ActorBatchReport | None] = []

    def started(self, batch: int, rows: int, block: str | None = None) -> None:
        self.starts.append((batch, rows))

    def finished(self, batch: int, report: ActorBatchReport | None, failure: str | None) -> None:
        self.finishes.append((batch, report, failure))

    def closed(self, report: ActorBatchReport | None) -> None:
        self.closes.append(report)


def settings(**changes: Any) -> ActorSettings:
    """Checked actor settings: the defaults, changed where the test says."""
    options: dict[str, Any] = {
        "device": "cpu",
        "every": 1,
        "cache_policy": None,
        "memory_threshold": 0.9,
        "freeze_heap": True,
    }
    chunks: dict[str, Any] = {
        "chunk_size": None,
        "factor": 0.5,
        "min_size": 1,
        "regrow_after": None,
    }
    for name, value in changes.items():
        (chunks if name in chunks else options)[name] = value
    return ActorSettings.checked(sizing=chunk_sizing(**chunks), **options)


_actors_made: list[ActorMemory] = []


@pytest.fixture(autouse=True)
def _actors_close_after_the_test() -> Iterator[None]:
    """An actor's batch lasts until it closes, heap freeze included: close each one made."""
    yield
    while _actors_made:
        _actors_made.pop().close()


def actor(**changes: Any) -> tuple[ActorMemory, RecordingReporter]:
    """An ActorMemory on the CPU with a recording reporter, closed after the test."""
    recording = RecordingReporter()
    memory = ActorMemory(settings(**changes), "cpu", recording)
    _actors_made.append(memory)
    return memory, recording


def ids(first: int, count: int) -> dict[str, Any]:
    """A NumPy-format Ray batch of ``count`` rows whose ids start at ``first``."""
    return {"id": numpy.arange(first, first + count), "name": [f"row {n}" for n in range(count)]}


class OomAbove:
    """A batch function that runs out of memory on more than ``limit`` rows, and records."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.sizes.append(len(batch["id"]))
        if len(batch["id"]) > self.limit:
            raise oom_error("cuda")
        return {"id": batch["id"], "double": batch["id"] * 2}


# Batches as rows ---------------------------------------------------------------------


def test_numpy_batch_slices_into_batches_of_the_same_format() -> None:
    """A dict of columns is sliced column by column; slices are dicts with the same keys."""
    rows = BatchRows(ids(0, 10))
    assert len(rows) == 10
    chunk = rows[3:6]
    assert list(chunk) == ["id", "name"]
    assert chunk["id"].tolist() == [3, 4, 5]
    assert chunk["name"] == ["row 3", "row 4", "row 5"]
    assert rows[9]["id"].tolist() == [9]


def test_whole_slice_is_the_batch_itself() -> None:
    """An unsplit batch reaches the function as the very object Ray Data handed over."""
    batch = ids(0, 4)
    assert BatchRows(batch)[0:4] is batch


def test_numpy_results_are_joined_in_order() -> None:
    """Array columns are concatenated and list columns chained, chunk after chunk."""
    joined = concatenate_batches([ids(0, 3), ids(3, 2)])
    assert joined["id"].tolist() == [0, 1, 2, 3, 4]
    assert joined["name"] == ["row 0", "row 1", "row 2", "row 0", "row 1"]


def test_single_result_is_returned_without_a_copy() -> None:
    """One chunk's result is the batch's result as it is."""
    result = ids(0, 3)
    assert concatenate_batches([result]) is result


def test_results_with_different_columns_are_refused() -> None:
    """Chunks of one batch that return different columns cannot be joined, and say so."""
    with pytest.raises(InvalidArgumentError, match="different columns"):
        concatenate_batches([{"a": numpy.arange(2)}, {"b": numpy.arange(2)}])


def test_pandas_batches_slice_and_join() -> None:
    """A DataFrame is sliced by position and the chunk results concatenated, index kept."""
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"id": range(6)})
    rows = BatchRows(frame)
    assert len(rows) == 6
    joined = concatenate_batches([rows[0:2], rows[2:6]])
    assert joined["id"].tolist() == list(range(6))
    assert joined.index.tolist() == list(range(6))


def test_pyarrow_batches_slice_and_join() -> None:
    """A pyarrow Table is sliced without a copy and the chunk results concatenated."""
    pyarrow = pytest.importorskip("pyarrow")
    table = pyarrow.table({"id": list(range(5))})
    rows = BatchRows(table)
    assert len(rows) == 5
    joined = concatenate_batches([rows[0:3], rows[3:5]])
    assert joined.column("id").to_pylist() == list(range(5))


def test_unknown_batch_format_is_refused_with_its_type() -> None:
    """A batch memscope cannot slice raises InvalidArgumentTypeError naming its type."""
    with pytest.raises(InvalidArgumentTypeError, match=r"builtins\.set"):
        row_count({1, 2, 3})


def test_columns_of_different_lengths_are_refused() -> None:
    """A dict whose columns differ in length is no batch of rows."""
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        row_count({"a": [1, 2], "b": [1]})


# One actor's batches --------------------------------------------------------------------


def test_oom_splits_the_batch_and_every_row_comes_out_once_in_order() -> None:
    """A batch too large for memory completes in chunks; the rows come out once, in order."""
    memory, recording = actor()
    function = OomAbove(6)
    result = memory.process(function, ids(0, 20))
    assert result["id"].tolist() == list(range(20))
    assert result["double"].tolist() == [2 * n for n in range(20)]
    assert function.sizes[:3] == [20, 10, 5]
    assert recording.starts == [(1, 20)]
    [(number, report, failure)] = recording.finishes
    assert number == 1
    assert failure is None
    assert report is not None
    assert report.items == 20
    assert report.ooms == 2
    assert report.split_batches == 1
    assert report.chunk_size == 5


def test_the_size_learned_is_where_the_next_batch_starts() -> None:
    """The actor's next batch starts at the size that worked: no OOM the second time."""
    memory, _ = actor()
    function = OomAbove(6)
    memory.process(function, ids(0, 20))
    function.sizes.clear()
    result = memory.process(function, ids(20, 20))
    assert result["id"].tolist() == list(range(20, 40))
    assert function.sizes == [5, 5, 5, 5]
    report = memory.report
    assert report is not None
    assert (report.batches, report.items, report.ooms, report.split_batches) == (2, 40, 2, 2)


def test_batches_that_fit_are_not_split() -> None:
    """Without memory pressure the function sees each whole batch once."""
    memory, _ = actor()
    function = OomAbove(100)
    for first in (0, 20, 40):
        memory.process(function, ids(first, 20))
    assert function.sizes == [20, 20, 20]
    report = memory.report
    assert report is not None
    assert (report.batches, report.split_batches, report.ooms, report.chunk_size) == (3, 0, 0, None)


def test_chunk_size_caps_the_first_attempt() -> None:
    """chunk_size is the largest chunk tried, OOM or not."""
    memory, _ = actor(chunk_size=8)
    function = OomAbove(100)
    result = memory.process(function, ids(0, 20))
    assert function.sizes == [8, 8, 4]
    assert result["id"].tolist() == list(range(20))


def test_regrow_after_grows_the_size_back_across_batches() -> None:
    """With regrow_after, chunks that keep succeeding grow the size again, batch after batch."""
    memory, _ = actor(regrow_after=2)
    function = OomAbove(6)
    memory.process(function, ids(0, 20))
    assert memory.chunk_size == 5
    function.limit = 100
    function.sizes.clear()
    memory.process(function, ids(20, 20))
    memory.process(function, ids(40, 20))
    assert max(function.sizes) > 5
    assert memory.state.regrowths >= 1


def test_the_actor_keeps_one_sizing_state() -> None:
    """Every batch of an actor uses the actor's AdaptiveBatchState: what it learned stays."""
    memory, _ = actor()
    state = memory.state
    memory.process(OomAbove(6), ids(0, 20))
    memory.process(OomAbove(6), ids(20, 20))
    assert memory.state is state
    assert state.oom_count == 2
    assert state.current_size == 5


def test_a_failing_batch_is_counted_and_reported() -> None:
    """A batch whose function raises still reports, with the failure and the failed count."""
    memory, recording = actor()

    def broken(batch: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        memory.process(broken, ids(0, 4))
    [(_, report, failure)] = recording.finishes
    assert failure == "ValueError: bad row"
    assert report is not None
    assert report.failed_batches == 1
    assert report.ended_by is None  # the actor's batch goes on
    assert memory.batch.active


def test_oom_at_the_smallest_size_fails_the_batch_and_keeps_the_floor() -> None:
    """When even min_size runs out of memory, the batch raises and the next starts at min_size."""
    memory, recording = actor(min_size=2)
    with pytest.raises(BatchSizeExhaustedError):
        memory.process(OomAbove(1), ids(0, 8))
    assert memory.chunk_size == 2
    assert recording.finishes[0][2] is not None
    assert recording.finishes[0][2].startswith("BatchSizeExhaustedError")


def test_empty_batch_calls_the_function_once() -> None:
    """An empty batch goes to the function as it is, so it says what empty becomes."""
    memory, _ = actor()
    function = OomAbove(6)
    result = memory.process(function, ids(0, 0))
    assert function.sizes == [0]
    assert result["id"].tolist() == []


def test_actor_figures_add_up_over_batches() -> None:
    """Items, cleanups and time add up over the actor's batches; the device stays its own."""
    memory, _ = actor(every=1)
    function = OomAbove(100)
    memory.process(function, ids(0, 10))
    first = memory.report
    memory.process(function, ids(10, 10))
    second = memory.report
    assert first is not None
    assert second is not None
    assert second.items == 20
    assert second.cleanups > first.cleanups
    assert second.elapsed_seconds >= first.elapsed_seconds
    assert second.device == "cpu"


def test_busy_time_leaves_out_the_wait_between_batches() -> None:
    """busy_seconds counts time inside Ray batches only; elapsed_seconds runs from the first
    batch on, so a wait between batches shows in it and not in the busy time."""
    memory, _ = actor()

    def slow(batch: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.05)
        return batch

    memory.process(slow, ids(0, 4))
    time.sleep(0.3)
    memory.process(slow, ids(4, 4))
    report = memory.report
    assert report is not None
    assert report.busy_seconds >= 0.1
    # Most of the 0.3 s wait (the busy time starts a little before the batch's clock).
    assert report.elapsed_seconds - report.busy_seconds >= 0.2
    assert report.rows_per_busy_second == pytest.approx(8 / report.busy_seconds)
    assert report.rows_per_busy_second > report.items_per_second


def test_every_ray_batch_runs_inside_the_actor_s_one_batch() -> None:
    """Each Ray batch, from whichever thread Ray calls, runs with the actor's one managed
    batch active; it stays entered between Ray batches."""
    memory, _ = actor()
    seen: list[object] = []

    def record(batch: dict[str, Any]) -> dict[str, Any]:
        seen.append(current_batch())
        return batch

    memory.process(record, ids(0, 4))
    assert memory.batch.active
    worker = threading.Thread(target=memory.process, args=(record, ids(4, 4)))
    worker.start()
    worker.join(timeout=60)
    assert seen == [memory.batch, memory.batch]
    report = memory.report
    assert report is not None
    assert (report.batches, report.items) == (2, 8)


def test_the_cadence_counts_rows_across_ray_batches() -> None:
    """every=4 over Ray batches of 3 rows cleans up after rows 4 and 8, not after each batch."""
    memory, recording = actor(every=4)
    for first in (0, 3, 6):
        memory.process(OomAbove(100), ids(first, 3))
    cleanups = [report.cleanups for _, report, _ in recording.finishes if report is not None]
    assert cleanups == [0, 1, 2]


def test_the_heap_stays_frozen_from_the_first_batch_until_close() -> None:
    """The actor's batch freezes the heap at its first Ray batch (the model, made before,
    included) and unfreezes it only when the actor closes."""
    memory, _ = actor()
    assert heap_holders() == 0
    memory.process(OomAbove(100), ids(0, 4))
    memory.process(OomAbove(100), ids(4, 4))
    assert heap_holders() == 1
    assert not heap_is_unfrozen()
    memory.close()
    assert heap_holders() == 0
    assert heap_is_unfrozen()


def test_close_ends_the_batch_with_its_final_cleanup_and_reports_it() -> None:
    """close() runs the batch's final cleanup and reports the final figures; later batches
    are refused and a second close does nothing."""
    memory, recording = actor(every=100)
    memory.process(OomAbove(100), ids(0, 4))
    so_far = memory.report
    memory.close()
    memory.close()
    assert so_far is not None
    [final] = recording.closes
    assert final is not None
    assert final == memory.report
    assert final.cleanups == so_far.cleanups + 1
    assert (final.batches, final.items) == (1, 4)
    assert not memory.batch.active
    with pytest.raises(BatchStateError, match="ended"):
        memory.process(OomAbove(100), ids(4, 4))


def test_an_actor_closed_before_its_first_batch_reports_nothing() -> None:
    """An actor shut down before any Ray batch reached it has no figures to send."""
    memory, recording = actor()
    memory.close()
    assert recording.closes == [None]
    assert heap_holders() == 0


def test_a_failed_ray_batch_is_cleaned_up_after() -> None:
    """What a Ray batch that raised left behind is freed before the next one: one cleanup."""
    memory, recording = actor(every=100)

    def broken(batch: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        memory.process(broken, ids(0, 4))
    [(_, report, _)] = recording.finishes
    assert report is not None
    assert report.cleanups == 1


# Settings and devices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"chunk_size": 0}, InvalidArgumentError, "chunk_size"),
        ({"chunk_size": "8"}, InvalidArgumentTypeError, "chunk_size"),
        ({"chunk_size": 4, "min_size": 8}, InvalidArgumentError, "min_size must be <= chunk_size"),
        ({"factor": 1.0}, InvalidArgumentError, "factor"),
        ({"factor": "half"}, InvalidArgumentTypeError, "factor"),
        ({"min_size": 0}, InvalidArgumentError, "min_size"),
        ({"regrow_after": 0}, InvalidArgumentError, "regrow_after"),
        ({"every": 0}, InvalidArgumentError, "every"),
        ({"cache_policy": "always"}, InvalidArgumentTypeError, "cache_policy"),
        ({"memory_threshold": 2.0}, InvalidArgumentError, "memory_threshold"),
        ({"device": 3.5}, InvalidArgumentTypeError, "device"),
    ],
)
def test_bad_settings_are_refused_on_the_driver(
    changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each bad option raises at once, naming the parameter, before any actor starts."""
    with pytest.raises(error, match=message):
        settings(**changes)


@pytest.mark.parametrize(
    ("gpu_ids", "visible", "cuda", "expected"),
    [
        ([], None, True, "cpu"),
        (["3"], "3", True, "cuda:0"),
        (["3"], "1,3", True, "cuda:1"),
        (["2"], None, True, "cuda:2"),
        (["2"], "", True, "cuda:2"),
        (["0"], "0", False, "cpu"),
    ],
)
def test_device_follows_the_gpus_ray_assigned(
    gpu_ids: list[str], visible: str | None, cuda: bool, expected: str
) -> None:
    """A worker's device is its first assigned GPU as CUDA sees it; none assigned: the CPU."""
    assert device_for_gpus(gpu_ids, visible, cuda) == torch.device(expected)


def test_failure_text_survives_an_unprintable_exception() -> None:
    """An exception whose __str__ raises is still described by its type."""

    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert describe_failure(UnprintableError()) == (
        "UnprintableError: <unprintable UnprintableError>"
    )
    assert len(describe_failure(ValueError("x" * 2000))) == 500


# Wrapping -------------------------------------------------------------------------------


class Colorize:
    """A map_batches class with a constructor argument and a class attribute."""

    model_name = "tiny"

    def __init__(self, scale: int, *, offset: int = 0) -> None:
        self.scale = scale
        self.offset = offset

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"id": batch["id"] * self.scale + self.offset}


def test_wrapped_class_looks_like_the_class() -> None:
    """The managed class keeps the name, docstring, signature and attributes Ray Data sees."""
    from memscope.ray._collector import CollectorAddress

    wrapped = _managed_class(Colorize, settings(), CollectorAddress("c", "n"))
    assert issubclass(wrapped, Colorize)
    assert wrapped.__name__ == "Colorize"
    assert wrapped.__qualname__ == Colorize.__qualname__
    assert wrapped.__doc__ == Colorize.__doc__
    assert wrapped.model_name == "tiny"
    assert inspect.signature(wrapped) == inspect.signature(Colorize)
    assert list(inspect.signature(wrapped).parameters) == ["scale", "offset"]


def test_class_without_call_is_refused() -> None:
    """A class whose instances cannot be called with a batch is refused when wrapped."""
    from memscope.ray._collector import CollectorAddress

    class NotCallable:
        pass

    with pytest.raises(InvalidArgumentTypeError, match="no __call__"):
        _managed_class(NotCallable, settings(), CollectorAddress("c", "n"))


def test_generator_and_async_functions_are_refused() -> None:
    """Functions that do not return their batch cannot be split, and are refused at once."""

    def generate(batch: Any) -> Any:
        yield batch

    async def coroutine(batch: Any) -> Any:
        return batch

    for function, kind in ((generate, "generator"), (coroutine, "async")):
        with pytest.raises(InvalidArgumentTypeError, match=kind):
            memscope.ray.managed(function, collector=None)  # type: ignore[arg-type]


def test_a_managed_class_is_not_managed_twice() -> None:
    """Wrapping what managed() made is refused: each batch would be managed twice."""
    from memscope.ray._collector import CollectorAddress

    wrapped = _managed_class(Colorize, settings(), CollectorAddress("c", "n"))
    with pytest.raises(InvalidArgumentError, match="already managed"):
        memscope.ray.managed(wrapped, collector=None)  # type: ignore[arg-type]


def test_collector_must_be_a_report_collector() -> None:
    """managed() without a ReportCollector says what it needs."""
    with pytest.raises(InvalidArgumentTypeError, match="collector must be"):
        memscope.ray.managed(Colorize, collector="memscope")  # type: ignore[arg-type]


# Importing ------------------------------------------------------------------------------


def test_importing_memscope_ray_does_not_import_ray() -> None:
    """memscope.ray imports Ray only when used; memscope itself never imports memscope.ray."""
    code = (
        "import sys, memscope\n"
        "assert 'memscope.ray' not in sys.modules\n"
        "import memscope.ray\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_missing_ray_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray, the first call that needs it raises ImportError naming memscope[ray]."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'memscope\[ray\]'"):
        memscope.ray.ReportCollector()
