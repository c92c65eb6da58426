"""Genuine out-of-memory errors on a real accelerator: detected, recovered, recorded.

These run only with a real CUDA (or, where said, MPS) device; the ``gpu`` marker skips them
elsewhere.
"""

from __future__ import annotations

import gc
import pickle
from pathlib import Path

import pytest
import torch

from memscope import MemoryManager, adaptive_batch, auto_clear, is_oom_error, process_in_chunks
from memscope.oom import CaughtOom, MemoryHistoryRecorder, call_catching_oom

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda(accelerator: str) -> torch.device:
    """The real CUDA device, or a skip on other accelerators."""
    if accelerator != "cuda":
        pytest.skip("needs CUDA")
    return torch.device("cuda", torch.cuda.current_device())


def _total_bytes(device: torch.device) -> int:
    return int(torch.cuda.mem_get_info(device)[1])


def _settle() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def test_genuine_cuda_oom_is_recognised(cuda: torch.device) -> None:
    """Allocating twice the device's memory raises an error is_oom_error recognises."""
    total = _total_bytes(cuda)
    outcome = call_catching_oom(torch.empty, total * 2, dtype=torch.uint8, device=cuda)
    assert isinstance(outcome, CaughtOom)
    assert is_oom_error(outcome.error)
    del outcome
    _settle()


def test_adaptive_batch_recovers_from_a_genuine_cuda_oom(cuda: torch.device) -> None:
    """A size whose allocation exceeds the device shrinks to one that fits, and the memory
    measured there is the allocation per item."""
    total = _total_bytes(cuda)
    per_item = total // 8
    baseline = torch.cuda.memory_allocated(cuda)

    @adaptive_batch(start=16, device=cuda)
    def allocate(batch_size: int) -> int:
        # 16 items need twice the device, 8 need all of it; 4 need half.
        block = torch.empty(batch_size * per_item, dtype=torch.uint8, device=cuda)
        block.fill_(1)
        return batch_size

    assert allocate() <= 4
    state = allocate.adaptive_state  # type: ignore[attr-defined]
    # Measured sizing goes from 16 straight to a size it can measure at; on an H100 that
    # took one OOM and one reduction (16 -> 4).
    assert state.reductions >= 1
    assert state.oom_count >= 1
    assert state.memory_per_item == pytest.approx(per_item, rel=0.01)
    _settle()
    assert torch.cuda.memory_allocated(cuda) == baseline


def test_failed_attempts_tensors_are_freed_for_the_retry_on_cuda(cuda: torch.device) -> None:
    """The retry needs the memory the failed attempt held: it fits only if that was freed."""
    total = _total_bytes(cuda)
    held = int(total * 0.6)

    @adaptive_batch(start=2, device=cuda)
    def step(batch_size: int) -> int:
        # Over half the device, held by a local while the attempt fails; the retry allocates
        # it again, which only fits if the first one was released.
        activations = torch.empty(held, dtype=torch.uint8, device=cuda)
        if batch_size > 1:
            torch.empty(total * 2, dtype=torch.uint8, device=cuda)
        return int(activations.numel() > 0)

    assert step() == 1
    _settle()


def test_auto_clear_retry_recovers_from_a_genuine_cuda_oom(cuda: torch.device) -> None:
    """@auto_clear(oom_retries=1): the first attempt holds 60 % of the device and then runs
    out of memory; the retry allocates the 60 % again, which fits only if the failed
    attempt's memory was really freed."""
    total = _total_bytes(cuda)
    held = int(total * 0.6)
    attempts: list[int] = []

    @auto_clear(oom_retries=1, manager=MemoryManager(cuda))
    def step() -> int:
        activations = torch.empty(held, dtype=torch.uint8, device=cuda)
        attempts.append(1)
        if len(attempts) == 1:
            torch.empty(total * 2, dtype=torch.uint8, device=cuda)
        return int(activations.numel() > 0)

    assert step() == 1
    assert len(attempts) == 2
    assert step.cleanup_stats.oom_retries == 1  # type: ignore[attr-defined]
    _settle()


def test_chunks_recover_from_a_genuine_cuda_oom(cuda: torch.device) -> None:
    """process_in_chunks shrinks chunks on a real OOM and still covers every item once."""
    total = _total_bytes(cuda)
    per_item = total // 8
    items = torch.arange(32)
    done: list[int] = []

    def step(chunk: torch.Tensor) -> torch.Tensor:
        block = torch.empty(len(chunk) * per_item, dtype=torch.uint8, device=cuda)
        block.fill_(0)
        done.extend(chunk.tolist())
        return chunk * 2

    result = process_in_chunks(step, items, start=16, device=cuda)
    assert torch.equal(result, items * 2)
    assert done == list(range(32))
    _settle()


def test_measured_sizing_runs_at_a_predicted_size_without_oom(cuda: torch.device) -> None:
    """A function whose memory is linear in the batch size (one block per item, as layers
    allocate activations): the first call runs out of memory at start and probes; the peak it
    measures predicts the size of the later calls, which fit, with no wrong prediction."""
    _settle()
    free = int(torch.cuda.mem_get_info(cuda)[0])
    per_item = free // 40  # about 40 items fit

    @adaptive_batch(start=1024, device=cuda)
    def step(batch_size: int) -> int:
        blocks = [torch.empty(per_item, dtype=torch.uint8, device=cuda) for _ in range(batch_size)]
        return len(blocks)

    sizes = [step() for _ in range(4)]
    state = step.adaptive_state  # type: ignore[attr-defined]
    assert state.oom_count == 1
    assert state.wrong_predictions == 0
    assert state.memory_per_item is not None
    assert per_item <= state.memory_per_item <= per_item * 1.01  # allocator rounding
    assert sizes[0] == 32  # the probe after 1024 failed
    # The prediction, one sounding an eighth below it (which shows a line, not a step), and
    # the prediction again.
    assert sizes[1] == sizes[3] == state.predicted_size
    assert sizes[2] == sizes[1] - max(1, sizes[1] // 8)
    # The margin of 3 % and the rounding cost at most a few items of the ~40 that fit.
    assert 34 <= sizes[1] <= 40
    _settle()


def test_measured_sizing_follows_memory_that_is_not_linear(cuda: torch.device) -> None:
    """A function whose memory is half linear, half quadratic in the batch size at the
    largest size that fits (attention-like): the fit over every measured size finds a size
    within 10 % of the largest that fits, never above it, in at most three errors."""
    _settle()
    free = int(torch.cuda.mem_get_info(cuda)[0])
    fits = 40
    # need(n) = n * linear + n**2 * quadratic; at n = 40 each half is half of what is free.
    linear = free // (2 * fits)
    quadratic = free // (2 * fits * fits)

    @adaptive_batch(start=1024, device=cuda)
    def step(batch_size: int) -> int:
        blocks = [torch.empty(linear, dtype=torch.uint8, device=cuda) for _ in range(batch_size)]
        pairs = torch.empty(batch_size * batch_size * quadratic, dtype=torch.uint8, device=cuda)
        return len(blocks) + int(pairs.numel() > 0) - 1

    sizes = [step() for _ in range(12)]
    state = step.adaptive_state  # type: ignore[attr-defined]
    largest = max(n for n in range(1, 2 * fits) if n * linear + n * n * quadratic <= free * 0.999)
    assert state.oom_count <= 3
    assert max(sizes) <= largest
    assert sizes[-1] >= 0.9 * largest
    assert state.snapshot().measured  # the fit's points
    _settle()


def test_measured_sizing_reaches_the_end_of_a_step(cuda: torch.device) -> None:
    """A function whose memory grows in blocks of 8 items (as allocators and padded batches
    make it), 5.4 blocks free: the search reaches the end of the fifth block, 40 items, or
    close to it, never above, in at most four errors."""
    _settle()
    free = int(torch.cuda.mem_get_info(cuda)[0])
    block = int(free / 5.4)

    @adaptive_batch(start=1024, device=cuda)
    def step(batch_size: int) -> int:
        blocks = [
            torch.empty(block, dtype=torch.uint8, device=cuda) for _ in range(-(-batch_size // 8))
        ]
        assert blocks  # alive until the call returns: the peak holds every block
        return batch_size

    sizes = [step() for _ in range(12)]
    state = step.adaptive_state  # type: ignore[attr-defined]
    assert state.oom_count <= 4
    assert max(sizes) <= 40
    assert sizes[-1] >= 36
    _settle()


def test_memory_history_snapshot_of_a_genuine_oom(cuda: torch.device, tmp_path: Path) -> None:
    """A real OOM inside the recorder writes a snapshot torch's viewer can read."""
    total = _total_bytes(cuda)
    recorder = MemoryHistoryRecorder(
        cuda, tmp_path, max_entries=10_000, manager=MemoryManager(cuda)
    )
    caught: BaseException | None = None
    try:
        with recorder:
            torch.empty(total * 2, dtype=torch.uint8, device=cuda)
    except Exception as error:
        caught = error
    assert caught is not None
    assert is_oom_error(caught)
    (path,) = recorder.snapshot_paths
    with path.open("rb") as file:
        snapshot = pickle.load(file)
    assert "segments" in snapshot
    assert "device_traces" in snapshot
    assert str(path) in caught.__notes__[0]
    del caught
    _settle()


def test_genuine_mps_oom_is_recognised(accelerator: str) -> None:
    """On Apple silicon, allocating far beyond Metal's limit is recognised as an OOM."""
    if accelerator != "mps":
        pytest.skip("needs MPS")
    limit = int(torch.mps.recommended_max_memory())
    outcome = call_catching_oom(torch.empty, limit * 4, dtype=torch.uint8, device="mps")
    assert isinstance(outcome, CaughtOom)
    assert is_oom_error(outcome.error)
