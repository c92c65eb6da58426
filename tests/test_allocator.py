"""CUDA's caching allocator: its figures in snapshots, reports and OOM notes, its settings
from configure_allocator, its OOM observer, cudaMallocAsync, and clears that cannot hurt."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import memscope.oom._history
from memscope import MemoryManager, configure_allocator, managed_batch
from memscope.exceptions import (
    AllocatorSettingsError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope.oom import MemoryHistoryRecorder, add_oom_note
from memscope.testing import FakeCall, FakeDevice, GiB, MiB, oom_error

REMEDY = "run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"

# Fragmentation in the figures --------------------------------------------------------------


def fragmented(fake: FakeDevice) -> None:
    """14 GiB live in 22.5 GiB reserved, 8.2 GiB of the rest in split blocks, on 24 GiB."""
    fake.set_memory(
        allocated=14 * GiB,
        reserved=22 * GiB + 512 * MiB,
        inactive_split=8 * GiB + 205 * MiB,
        alloc_retries=3,
        allocator_ooms=1,
        other_processes=GiB,
    )


def test_snapshot_carries_the_allocators_figures() -> None:
    """Reserved but free, inactive split, retries and OOMs reach the snapshot and its dict."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fragmented(fake)
        snapshot = MemoryManager("cuda").snapshot()
    assert snapshot.cached_but_free == 8 * GiB + 512 * MiB
    assert (snapshot.inactive_split, snapshot.alloc_retries, snapshot.allocator_ooms) == (
        8 * GiB + 205 * MiB,
        3,
        1,
    )
    data = snapshot.to_dict()
    assert (data["inactive_split"], data["alloc_retries"], data["allocator_ooms"]) == (
        8 * GiB + 205 * MiB,
        3,
        1,
    )


def test_devices_without_allocator_statistics_keep_their_dict() -> None:
    """MPS keeps no allocator statistics: None, and its dict has no such keys."""
    with FakeDevice("mps", total=12 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=2 * GiB)
        snapshot = MemoryManager("mps").snapshot()
    assert (snapshot.inactive_split, snapshot.alloc_retries, snapshot.allocator_ooms) == (
        None,
        None,
        None,
    )
    assert "inactive_split" not in snapshot.to_dict()


def test_note_names_fragmentation_and_its_remedy() -> None:
    """An OOM for 2 GiB with 8.2 GiB in fragments: the note says so and names the remedy."""
    error = oom_error("cuda", tried=2 * GiB)
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fragmented(fake)
        note = add_oom_note(error, MemoryManager("cuda"))
    assert note is not None
    lines = note.splitlines()
    assert lines[2] == (
        "  allocator: reserved but free 8.5 GiB, inactive split 8.2 GiB, allocation retries 3, "
        "allocator OOMs 1"
    )
    assert lines[3] == (
        f"  fragmentation: 8.2 GiB reserved but free in fragments; {REMEDY} "
        "(memscope.configure_allocator)"
    )


def test_note_without_fragmentation_gives_figures_but_no_remedy() -> None:
    """Fragments smaller than the failed request do not explain it: figures, no remedy."""
    error = oom_error("cuda", tried=2 * GiB)
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=22 * GiB, reserved=23 * GiB, inactive_split=100 * MiB)
        note = add_oom_note(error, MemoryManager("cuda"))
    assert note is not None
    assert "allocator: reserved but free 1.0 GiB, inactive split 100.0 MiB" in note
    assert "fragmentation" not in note
    assert REMEDY not in note


def test_note_without_the_request_size_weighs_fragments_against_free_memory() -> None:
    """A message without "Tried to allocate": fragments above the driver's free memory and
    5% of the card explain it; a few MiB of fragments do not."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fragmented(fake)
        note = add_oom_note(RuntimeError("CUDA error: out of memory"), MemoryManager("cuda"))
        fake.set_memory(inactive_split=8 * MiB)
        small = add_oom_note(RuntimeError("CUDA error: out of memory"), MemoryManager("cuda"))
    assert note is not None
    assert REMEDY in note
    assert small is not None
    assert REMEDY not in small


def test_a_plain_note_has_no_allocator_line() -> None:
    """No fragments, retries or allocator OOMs: the note stays as it was."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=2 * GiB)
        note = add_oom_note(oom_error("cuda"), MemoryManager("cuda"))
    assert note is not None
    assert "allocator" not in note


# cudaMallocAsync ---------------------------------------------------------------------------


def test_figures_under_cuda_malloc_async_read_as_not_available() -> None:
    """torch's zeros under cudaMallocAsync become None, and the note says n/a."""
    with FakeDevice("cuda", total=8 * GiB, allocator_backend="cudaMallocAsync") as fake:
        fake.set_memory(allocated=GiB, reserved=3 * GiB)
        manager = MemoryManager("cuda")
        snapshot = manager.snapshot()
        note = add_oom_note(oom_error("cuda"), manager)
    assert (snapshot.inactive_split, snapshot.alloc_retries, snapshot.allocator_ooms) == (
        None,
        None,
        None,
    )
    assert snapshot.reserved == 3 * GiB
    assert note is not None
    assert "  allocator: fragmentation figures n/a under cudaMallocAsync" in note.splitlines()


def test_history_under_cuda_malloc_async_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No history under cudaMallocAsync is one WARNING, not silence nor one per recorder."""
    monkeypatch.setattr(memscope.oom._history, "_warned", set())
    caplog.set_level(logging.INFO, logger="memscope")
    with FakeDevice("cuda", allocator_backend="cudaMallocAsync") as fake:
        for _ in range(3):
            assert MemoryHistoryRecorder("cuda", tmp_path).start() is False
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cudaMallocAsync" in warnings[0].getMessage()
    assert fake.memory_history is None


def test_batch_under_cuda_malloc_async_reports_no_allocator_figures() -> None:
    """A batch's report leaves the allocator's figures None under cudaMallocAsync."""
    fake = FakeDevice("cuda", allocator_backend="cudaMallocAsync")
    with fake, managed_batch("cuda", every=None) as batch:
        fake.allocator_oom(GiB)
    report = batch.report
    assert (report.allocator_ooms, report.alloc_retries, report.inactive_split_end) == (
        None,
        None,
        None,
    )
    assert fake.oom_observers == []


# The OOM observer --------------------------------------------------------------------------


def test_observed_allocator_ooms_are_counted_and_recovered() -> None:
    """Three OOMs torch caught and retried: the report says 3 allocator OOMs, all recovered,
    with the largest request; one observer is attached however many batches run."""
    with FakeDevice("cuda", total=16 * GiB) as fake:
        with managed_batch("cuda", every=None) as first:
            for size in (GiB, 3 * GiB, 2 * GiB):
                fake.allocator_oom(size)
        with managed_batch("cuda", every=None) as second:
            pass
    report = first.report
    assert (report.allocator_ooms, report.allocator_ooms_recovered) == (3, 3)
    assert report.largest_oom_request == 3 * GiB
    assert "3 allocator OOMs, all recovered (largest request 3.0 GiB)" in report.summary()
    assert second.report.allocator_ooms == 0
    assert len(fake.oom_observers) == 1


def test_an_oom_that_ends_the_batch_is_not_recovered() -> None:
    """Two allocator OOMs, the second raised out of the batch: 2, of them 1 recovered."""
    fake = FakeDevice("cuda", total=16 * GiB)
    batches = []

    def run_out() -> None:
        with managed_batch("cuda", every=None) as batch:
            batches.append(batch)
            fake.allocator_oom(GiB)
            fake.allocator_oom(2 * GiB)
            raise oom_error("cuda", tried=2 * GiB)

    with fake, pytest.raises(Exception, match="out of memory"):
        run_out()
    batch = batches[0]
    assert (batch.report.allocator_ooms, batch.report.allocator_ooms_recovered) == (2, 1)
    assert "2 allocator OOMs, 1 recovered" in str(batch.report)


def test_the_innermost_batch_counts_an_observed_oom() -> None:
    """A nested batch's allocator OOM counts in its report, not also in the outer one's."""
    with FakeDevice("cuda") as fake, managed_batch("cuda", every=None) as outer:
        with managed_batch("cuda", every=None) as inner:
            fake.allocator_oom(GiB)
        fake.allocator_oom(GiB)
    assert (inner.report.allocator_ooms, outer.report.allocator_ooms) == (1, 1)


def test_without_an_observer_the_count_comes_from_the_statistics() -> None:
    """A torch without the observer: OOMs and retries are the statistics' growth."""
    with FakeDevice("cuda", without=("_cuda_attach_out_of_memory_observer",)) as fake:
        fake.set_memory(allocator_ooms=4, alloc_retries=10)
        with managed_batch("cuda", every=None) as batch:
            fake.set_memory(allocator_ooms=6, alloc_retries=15)
    report = batch.report
    assert (report.allocator_ooms, report.allocator_ooms_recovered) == (2, 2)
    assert report.alloc_retries == 5
    assert report.largest_oom_request is None
    assert "5 allocation retries" in report.summary()


def test_report_shows_fragments_at_the_end() -> None:
    """Reserved but free and inactive split bytes at the batch's end are in its report."""
    with FakeDevice("cuda", total=24 * GiB) as fake, managed_batch("cuda", every=None) as batch:
        fragmented(fake)
    report = batch.report
    assert report.cached_but_free_end == 8 * GiB + 512 * MiB
    assert report.inactive_split_end == 8 * GiB + 205 * MiB
    assert "8.5 GiB reserved but free at the end, 8.2 GiB of it in split blocks" in str(report)


def test_a_failing_reading_inside_the_observer_never_reaches_torch() -> None:
    """A reading that fails inside the observer is logged at DEBUG; torch sees no error,
    and the OOM still counts."""
    with FakeDevice("cuda") as fake, managed_batch("cuda", every=None) as batch:
        fake.fail("torch.cuda.mem_get_info", RuntimeError("driver gone"))
        fake.allocator_oom(GiB)
        fake.clear_failures()
    assert batch.report.allocator_ooms == 1


# configure_allocator -----------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No allocator variables in the environment; the test's own are undone after it."""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    return monkeypatch


def test_before_cuda_starts_settings_go_to_the_environment(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    """Not initialised: PYTORCH_CUDA_ALLOC_CONF gets the settings in a fixed order."""
    import os

    with FakeDevice("cuda", initialized=False) as fake:
        applied = configure_allocator(
            expandable_segments=True, max_split_size_mb=128, garbage_collection_threshold=0.6
        )
    expected = "expandable_segments:True,max_split_size_mb:128,garbage_collection_threshold:0.6"
    assert applied == expected
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == expected
    assert "PYTORCH_ALLOC_CONF" not in os.environ
    assert fake.allocator_settings == []


def test_settings_merge_with_the_users_instead_of_replacing_them(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    """Keys given replace the same keys; others, list values included, stay where they are."""
    import os

    clean_environment.setenv(
        "PYTORCH_CUDA_ALLOC_CONF", "roundup_power2_divisions:[256:1,>:2], expandable_segments:False"
    )
    with FakeDevice("cuda", initialized=False):
        configure_allocator(expandable_segments=True, backend="cudaMallocAsync")
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == (
        "roundup_power2_divisions:[256:1,>:2],expandable_segments:True,backend:cudaMallocAsync"
    )


def test_both_variables_set_are_both_merged_into(clean_environment: pytest.MonkeyPatch) -> None:
    """Both variables set: each keeps its own other settings, and the call returns what
    CUDA reads, PYTORCH_CUDA_ALLOC_CONF's."""
    import os

    clean_environment.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    clean_environment.setenv("PYTORCH_ALLOC_CONF", "garbage_collection_threshold:0.7")
    with FakeDevice("cuda", initialized=False):
        applied = configure_allocator(expandable_segments=True)
    assert applied == os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    assert applied == "max_split_size_mb:64,expandable_segments:True"
    assert os.environ["PYTORCH_ALLOC_CONF"] == (
        "garbage_collection_threshold:0.7,expandable_segments:True"
    )


def test_settings_reach_pytorch_alloc_conf_where_the_user_set_it(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    """Only PYTORCH_ALLOC_CONF set: it is merged into, and no second variable appears."""
    import os

    clean_environment.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:64")
    with FakeDevice("cuda", initialized=False):
        configure_allocator(garbage_collection_threshold=0.8)
    assert os.environ["PYTORCH_ALLOC_CONF"] == (
        "max_split_size_mb:64,garbage_collection_threshold:0.8"
    )
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_after_cuda_starts_settings_go_to_torchs_runtime_setter(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    """Initialised: the runtime setter gets the settings once; the environment is untouched."""
    import os

    with FakeDevice("cuda") as fake:
        applied = configure_allocator(expandable_segments=True, max_split_size_mb=256)
    assert applied == "expandable_segments:True,max_split_size_mb:256"
    assert fake.calls_to("torch._C._accelerator_setAllocatorSettings") == [
        FakeCall("torch._C._accelerator_setAllocatorSettings", (applied,))
    ]
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_an_older_torch_uses_its_own_runtime_setter() -> None:
    """Without the accelerator-generic setter, torch.cuda.memory's is called."""
    with FakeDevice("cuda", without=("_accelerator_setAllocatorSettings",)) as fake:
        configure_allocator(garbage_collection_threshold=0.5)
    assert fake.calls_to("torch.cuda.memory._set_allocator_settings") == [
        FakeCall("torch.cuda.memory._set_allocator_settings", ("garbage_collection_threshold:0.5",))
    ]


def test_too_late_without_a_runtime_setter_names_the_setting() -> None:
    """CUDA started and no setter: AllocatorSettingsError naming the setting and the way."""
    without = ("_accelerator_setAllocatorSettings", "_set_allocator_settings")
    refused = pytest.raises(AllocatorSettingsError, match=r"^expandable_segments cannot be")
    with FakeDevice("cuda", without=without), refused:
        configure_allocator(expandable_segments=True)


def test_the_backend_cannot_change_once_cuda_has_started() -> None:
    """backend= after CUDA started is refused by name; the running one is accepted."""
    with FakeDevice("cuda") as fake:
        with pytest.raises(AllocatorSettingsError, match=r"backend='cudaMallocAsync'"):
            configure_allocator(backend="cudaMallocAsync", expandable_segments=True)
        assert configure_allocator(backend="native") == "backend:native"
    assert fake.allocator_settings == []


def test_a_setting_torch_refuses_is_an_allocator_settings_error() -> None:
    """torch's own refusal comes out as AllocatorSettingsError with the settings named."""
    with FakeDevice("cuda") as fake:
        fake.fail("torch._C._accelerator_setAllocatorSettings", RuntimeError("bad option"))
        with pytest.raises(AllocatorSettingsError, match=r"max_split_size_mb:64.*bad option"):
            configure_allocator(max_split_size_mb=64)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({}, InvalidArgumentError, "at least one setting"),
        ({"expandable_segments": "yes"}, InvalidArgumentTypeError, "expandable_segments"),
        ({"max_split_size_mb": 64.0}, InvalidArgumentTypeError, "max_split_size_mb"),
        ({"max_split_size_mb": True}, InvalidArgumentTypeError, "max_split_size_mb"),
        ({"max_split_size_mb": 20}, InvalidArgumentError, "max_split_size_mb.*>= 21.*20"),
        ({"garbage_collection_threshold": "0.5"}, InvalidArgumentTypeError, "garbage_coll"),
        ({"garbage_collection_threshold": 1.0}, InvalidArgumentError, "below 1, got 1.0"),
        ({"garbage_collection_threshold": 1.5}, InvalidArgumentError, "between 0 and 1.*1.5"),
        ({"garbage_collection_threshold": 0}, InvalidArgumentError, "garbage_collection"),
        ({"backend": "cudaMalloc"}, InvalidArgumentError, "backend.*'cudaMalloc'"),
    ],
)
def test_bad_settings_are_refused_before_anything_changes(
    clean_environment: pytest.MonkeyPatch,
    arguments: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    """A wrong type or value names the parameter and the value; nothing is applied."""
    import os

    with FakeDevice("cuda", initialized=False) as fake, pytest.raises(error, match=message):
        configure_allocator(**arguments)  # type: ignore[arg-type]
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    assert fake.allocator_settings == []


# Clears that cannot hurt -------------------------------------------------------------------


def test_an_oom_raised_by_empty_cache_is_a_cleanup_failure() -> None:
    """empty_cache() raising an OOM in a cadence step: counted as a failed cleanup, and the
    user's items and result go on."""
    with FakeDevice("cuda", total=8 * GiB) as fake:
        fake.set_memory(allocated=GiB, reserved=2 * GiB)
        fake.fail("torch.cuda.empty_cache", lambda: oom_error("cuda"))
        with managed_batch("cuda", every=1) as batch:
            done = list(batch.track(range(3)))
    assert done == [0, 1, 2]
    # One failed cleanup after each item and one at the batch's end; none is the user's OOM.
    assert batch.report.cleanup_failures == 4
    assert (batch.report.ooms, batch.report.ended_by) == (0, None)


def test_a_manager_for_an_indexed_device_does_not_start_cuda() -> None:
    """MemoryManager("cuda:1") never asks for the current device, which would start CUDA
    before configure_allocator could use the environment."""
    with FakeDevice("cuda", device_count=2) as fake:
        MemoryManager("cuda:1")
    assert fake.count("torch.cuda.current_device") == 0


def test_the_fragmentation_benchmark_needs_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without CUDA, python -m benchmarks fragmentation says so and exits 3."""
    import torch

    from benchmarks.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["fragmentation"]) == 3
    assert "no CUDA device here" in capsys.readouterr().out
