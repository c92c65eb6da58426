"""Sizing from measurement: around each success memscope resets the device's peak, reads it
after, learns the memory per item and predicts the largest size that fits, with a margin;
before anything is learned it probes; wrong predictions shrink it; without figures it falls
back to the factor search. All on the recording fake device, whose memory the simulated
functions below set as a real allocator would."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from memscope import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    adaptive_batch,
    managed_batch,
    process_in_chunks,
)
from memscope.estimation import DEFAULT_HEADROOM
from memscope.oom import AdaptiveBatchState
from memscope.testing import FakeDevice, GiB, MiB, RecordingManager, oom_error

RESET = "torch.cuda.reset_peak_memory_stats"


@dataclass
class LinearCard:
    """A fake CUDA card where a batch of ``n`` needs ``weights + n * per_item`` bytes.

    The function fills memory item by item, as a forward pass does layer by layer: when the
    next item does not fit, what fitted stays allocated (the peak shows it) and the
    allocator's out-of-memory error is raised; the function's memory is freed either way.
    """

    fake: FakeDevice
    per_item: float
    weights: int = GiB
    other_processes: int = 0
    sizes: list[int] = field(default_factory=list)
    ooms: int = 0

    def __post_init__(self) -> None:
        self.fake.set_memory(
            allocated=self.weights, reserved=self.weights, other_processes=self.other_processes
        )

    @property
    def total(self) -> int:
        return self.fake.memory[0].total

    @property
    def largest_fit(self) -> int:
        return math.floor((self.total - self.other_processes - self.weights) / self.per_item)

    def run(self, batch_size: int) -> int:
        self.sizes.append(batch_size)
        try:
            need = self.weights + batch_size * self.per_item
            if need > self.total - self.other_processes:
                self.fake.set_memory(allocated=self.weights + int(self.largest_fit * self.per_item))
                self.ooms += 1
                raise oom_error("cuda", tried=int(self.per_item))
            self.fake.set_memory(allocated=int(need))
            return batch_size
        finally:
            self.fake.set_memory(allocated=self.weights)

    def free_up(self, other_processes: int) -> None:
        self.other_processes = other_processes
        self.fake.set_memory(other_processes=other_processes)


def predicted_for(card: LinearCard, headroom: float = DEFAULT_HEADROOM) -> int:
    """The size memscope should predict on ``card``: what fits in the available memory less
    the headroom."""
    available = card.total - card.other_processes - card.weights
    return math.floor(available * (1 - headroom) / card.per_item)


# Learning and predicting ------------------------------------------------------------------


def test_a_success_teaches_the_memory_per_item() -> None:
    """The peak over the baseline, divided by the size, is the memory per item."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB)
        step = adaptive_batch(start=16, device="cuda")(card.run)
        assert step() == 16
    state = step.adaptive_state
    assert state.memory_per_item == 100 * MiB
    assert state.measurements == 1
    assert fake.count(RESET) == 1


def test_the_next_call_runs_at_the_predicted_size() -> None:
    """After a success is measured, calls run at the largest size that fits in the available
    memory less the headroom, below start (stepping to the geometric mean on the way where
    that is more than 3x past the largest size measured, and sounding once an eighth below
    it, for a step a line cannot show); that size never exceeds the margin."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=300 * MiB)
        step = adaptive_batch(start=200, device="cuda")(card.run)
        step()  # 200 fails; probes at 14, and learns
        sizes = [step() for _ in range(5)]
    expected = predicted_for(card)
    # 76 fit; 76 is more than 3 x 14 past the probe: first sqrt(14 * 76.xx) = 32; then one
    # sounding at 76 - 76 // 8 = 67, which shows a line, not a step.
    assert sizes == [32, expected, expected - expected // 8, expected, expected]
    state = step.adaptive_state
    assert state.predicted_size == expected
    assert expected * card.per_item <= (card.total - card.weights) * (1 - DEFAULT_HEADROOM)
    assert (expected + 1) * card.per_item > (card.total - card.weights) * (1 - DEFAULT_HEADROOM)
    assert state.wrong_predictions == 0


def test_predictions_never_exceed_start() -> None:
    """Where far more would fit, the predicted size is start."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=MiB)
        step = adaptive_batch(start=8, device="cuda")(card.run)
        assert [step() for _ in range(3)] == [8, 8, 8]
    assert step.adaptive_state.predicted_size == 8


def test_after_an_oom_with_nothing_learned_a_small_size_is_probed() -> None:
    """The first OOM is followed by a probe halfway to min_size on a log scale (11 for 128),
    not by halving; the probe's measurement, then the next one's, give the next calls their
    sizes: one OOM in all."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=(23 * GiB) / 40.5)
        step = adaptive_batch(start=128, device="cuda")(card.run)
        for _ in range(3):
            step()
    # 39 fits after the headroom, more than 3 x 11: a step to sqrt(11 * 39.28) = 20 first.
    assert card.sizes == [128, 11, 20, predicted_for(card)]
    assert card.ooms == 1
    assert step.adaptive_state.oom_count == 1


def test_a_probe_that_fails_is_followed_by_a_smaller_one() -> None:
    """Where even the probe does not fit, the next probe is halfway again: 128, 11, 3."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=(23 * GiB) / 5.5)
        step = adaptive_batch(start=128, device="cuda")(card.run)
        assert step() == 3
        assert step() == 5
    assert card.sizes == [128, 11, 3, 5]


def test_the_headroom_is_configurable() -> None:
    """A larger headroom predicts a smaller size, by the same rule."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB)
        step = adaptive_batch(start=1000, headroom=0.2, device="cuda")(card.run)
        sizes = [step() for _ in range(5)]  # the fourth sounds below the third
    assert sizes[-1] == predicted_for(card, headroom=0.2)
    assert step.adaptive_state.headroom == 0.2


def test_the_target_on_a_linear_card() -> None:
    """On the linear card of the issue (24 GiB, 1 GiB of weights, start 128, 12 calls), for
    largest sizes from 3 to 100: at most 1.5 OOMs on average, and the size reached is at
    least 95 % of the largest that fits on average, never above it."""
    largest = [3, 4, 7, 10, 11, 12, 19, 33, 50, 64, 77, 99, 100]
    ooms: list[int] = []
    shares: list[float] = []
    with FakeDevice("cuda", total=24 * GiB) as fake:
        for index, fits in enumerate(largest):
            # Between fits and fits + 1 items fill the card: where in between varies.
            card = LinearCard(fake, per_item=(23 * GiB) / (fits + (index % 10 + 0.5) / 10))
            step = adaptive_batch(start=128, device="cuda")(card.run)
            sizes = [step() for _ in range(12)]
            assert card.largest_fit == fits
            assert max(sizes) <= fits
            ooms.append(card.ooms)
            shares.append(sizes[-1] / fits)
    assert sum(ooms) / len(ooms) <= 1.5
    assert sum(shares) / len(shares) >= 0.95


# Wrong predictions --------------------------------------------------------------------------


def test_a_wrong_prediction_shrinks_the_prediction_and_is_counted() -> None:
    """When the memory per item grows after it was learned, the predicted size runs out of
    memory: it is counted, the retry is smaller, and the correction keeps later calls from
    running out again."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=200 * MiB)
        step = adaptive_batch(start=1000, device="cuda")(card.run)
        for _ in range(4):
            step()  # 31, 59, the prediction, and a sounding below it
        learned = step()
        attempts_before = len(card.sizes)
        card.per_item = 230 * MiB  # larger inputs from now on
        after = [step() for _ in range(4)]
    state = step.adaptive_state
    assert state.wrong_predictions == 1
    assert card.sizes[attempts_before] == learned  # the call that failed
    assert after[0] < learned
    assert max(after) <= card.largest_fit
    # The failure proved more than the learned figure; the new measurement is more still.
    assert state.memory_per_item_floor is not None
    assert 200 * MiB < state.memory_per_item_floor < state.memory_per_item == 230 * MiB
    # The floor that failed is forgotten with the curve; the size kept is measured anew
    # (and sounded once below, as every new largest success is).
    assert after == [after[0], after[0] - after[0] // 8, after[0], after[0]]
    assert predicted_for(card) <= after[0] <= card.largest_fit
    assert state.smallest_failed_size == learned
    assert card.ooms == 2  # the first call's, and the one wrong prediction


def test_repeated_wrong_predictions_close_in_fast() -> None:
    """A measurement far off (memory grows 4x at once) is closed in a few wrong predictions,
    each retry smaller than the last, not one step at a time."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB)
        step = adaptive_batch(start=1000, device="cuda")(card.run)
        step()
        before = step()
        card.per_item = 400 * MiB
        size = step()
    state = step.adaptive_state
    assert size <= card.largest_fit
    assert 1 <= state.wrong_predictions <= 5
    tried = card.sizes[card.sizes.index(before, 2) + 1 :]
    assert tried == sorted(tried, reverse=True)


def test_when_the_device_frees_up_sizes_grow_past_a_size_that_failed() -> None:
    """A size that ran out of memory bounds the predictions while the device has no more
    memory available than then; once it has clearly more, they grow past it (up to start),
    without regrow_after, and the size that failed is forgotten when it works."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB, other_processes=20 * GiB)
        step = adaptive_batch(start=40, device="cuda")(card.run)
        step()
        assert step.adaptive_state.smallest_failed_size == 40
        squeezed = [step() for _ in range(3)]
        card.free_up(0)
        sizes = [step() for _ in range(3)]
    assert max(squeezed) < 40
    assert predicted_for(card) > 40
    # One size measured: a step to the geometric mean of it and the prediction first.
    assert sizes[-2:] == [40, 40]
    assert step.adaptive_state.smallest_failed_size is None
    assert card.ooms == 1


def test_with_regrow_after_a_size_past_the_failure_is_tried_and_kept() -> None:
    """With regrow_after, after that many successes a prediction past the smallest failed
    size is tried; when it works the limit is lifted."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=500 * MiB, other_processes=12 * GiB)
        step = adaptive_batch(start=40, regrow_after=2, device="cuda")(card.run)
        step()  # 40 fails, probes
        squeezed = [step() for _ in range(4)]
        expected = predicted_for(card)
        card.free_up(0)
        grown = [step() for _ in range(2)]
    state = step.adaptive_state
    # The prediction, a sounding an eighth below it (a line, not a step), the prediction.
    assert squeezed[1:] == [expected, expected - max(1, expected // 8), expected]
    assert grown == [40, 40]
    assert state.regrowths == 1
    assert state.smallest_failed_size is None


# Fallbacks ------------------------------------------------------------------------------------


def test_without_figures_the_factor_search_is_used() -> None:
    """The CPU without host monitoring reports no figures: sizes halve, nothing is learned."""
    sizes: list[int] = []

    @adaptive_batch(start=32, manager=RecordingManager())
    def step(batch_size: int) -> int:
        sizes.append(batch_size)
        if batch_size > 5:
            raise oom_error("cpu", tried=batch_size * MiB)
        return batch_size

    step()
    step()
    assert sizes == [32, 16, 8, 4, 4]
    state = step.adaptive_state
    assert (state.memory_per_item, state.predicted_size, state.predictions) == (None, None, 0)


def test_measure_false_searches_by_factor_and_leaves_the_peaks_alone() -> None:
    """With measure=False the device's peaks are never reset and sizes halve."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=(23 * GiB) / 20.5)
        step = adaptive_batch(start=128, measure=False, device="cuda")(card.run)
        step()
        step()
    assert card.sizes == [128, 64, 32, 16, 16]
    assert fake.count(RESET) == 0
    assert step.adaptive_state.measure is False


def test_memory_invisible_to_the_device_teaches_nothing() -> None:
    """A function whose memory the device's figures do not show (peaks never rise) learns
    nothing: it keeps the probed size that worked."""
    with FakeDevice("cuda", total=24 * GiB):
        step = adaptive_batch(start=64, device="cuda")(_failing_above(20))
        assert [step() for _ in range(3)] == [8, 8, 8]
    assert step.adaptive_state.memory_per_item is None


def test_a_failing_peak_reset_does_not_break_the_call() -> None:
    """A device whose peak cannot be reset still runs the calls (logged, not raised)."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.fail(RESET, RuntimeError("driver gone"))
        card = LinearCard(fake, per_item=GiB)
        step = adaptive_batch(start=8, device="cuda")(card.run)
        assert step() == 8


def test_on_the_cpu_with_host_monitoring_the_peak_resident_memory_is_measured() -> None:
    """A CPU manager that watches the host learns from the process's peak resident memory
    (Linux's VmHWM), on real allocations."""
    from memscope.estimation import host_peak

    if not host_peak.usable():
        pytest.skip("this system cannot reset the peak resident memory")
    import torch

    # Megabytes per item, so that what other threads of the process allocate meanwhile (the
    # peak is the whole process's) stays small beside it.
    per_item = 16 * MiB

    @adaptive_batch(start=4, manager=MemoryManager("cpu", host=True))
    def step(batch_size: int) -> int:
        block = torch.ones(batch_size * per_item // 4, dtype=torch.float32)
        return int(block.numel() > 0) * batch_size

    step()
    state = step.adaptive_state
    learned = state.memory_per_item
    assert learned is not None, state
    assert per_item * 0.9 <= learned <= per_item * 1.25, learned / per_item


# In a batch, in threads, in tasks --------------------------------------------------------------


def test_the_batch_keeps_the_peak_seen_before_a_reset() -> None:
    """Measuring resets the device's peak inside a managed_batch; the batch's report still has
    the peak an earlier item reached (it is folded in first)."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB)
        step = adaptive_batch(start=4, device="cuda")(card.run)
        with managed_batch("cuda") as batch:
            fake.set_memory(allocated=20 * GiB)
            fake.set_memory(allocated=card.weights)
            step()
    assert fake.count(RESET) >= 2
    assert batch.report.peak_allocated == 20 * GiB


def test_overlapping_attempts_learn_nothing() -> None:
    """Two calls measured at once on one device would reset each other's peak: neither
    learns from it."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB)
        both_inside = threading.Barrier(2)

        @adaptive_batch(start=4, device="cuda")
        def step(batch_size: int) -> int:
            both_inside.wait(timeout=10)
            return card.run(batch_size)

        threads = [threading.Thread(target=step) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert step.adaptive_state.memory_per_item is None
        both_inside = threading.Barrier(1)
        step()
    assert step.adaptive_state.memory_per_item == 100 * MiB


def test_an_error_leaves_no_measurement_behind() -> None:
    """A call that raises something other than an OOM ends its measurement, so the next call
    still measures."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=100 * MiB)
        fail = [True]

        @adaptive_batch(start=4, device="cuda")
        def step(batch_size: int) -> int:
            if fail[0]:
                raise ValueError("corrupt image")
            return card.run(batch_size)

        with pytest.raises(ValueError, match="corrupt image"):
            step()
        fail[0] = False
        step()
    assert step.adaptive_state.memory_per_item == 100 * MiB


def _sizes_tried(mode: str) -> list[int]:
    """The sizes four calls try on one card, through the sync or the async driver."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=(23 * GiB) / 37.5)
        if mode == "sync":
            step = adaptive_batch(start=128, device="cuda")(card.run)
            for _ in range(4):
                step()
        else:

            async def work(batch_size: int) -> int:
                await asyncio.sleep(0)
                return card.run(batch_size)

            step_async = adaptive_batch(start=128, device="cuda")(work)
            for _ in range(4):
                asyncio.run(step_async())
    return card.sizes


def test_async_calls_size_the_same_way() -> None:
    """An async function on the same card tries the same sizes as a plain one."""
    tried = _sizes_tried("sync")
    assert tried == _sizes_tried("async")
    assert tried[:2] == [128, 11]


# Chunks ----------------------------------------------------------------------------------------


def test_chunks_are_sized_from_the_first_chunks_measurement() -> None:
    """process_in_chunks measures each chunk: after the first, chunks are as long as fits."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=GiB)

        def work(chunk: list[int]) -> list[int]:
            card.run(len(chunk))
            return chunk

        result = process_in_chunks(work, list(range(100)), start=8, device="cuda")
    assert result == list(range(100))
    assert card.sizes[:3] == [8, 8, 8]  # never above start
    assert card.ooms == 0


def test_chunks_after_an_oom_probe_then_fill_the_card() -> None:
    """A chunk that runs out of memory first is retried at a probe; the rest of the items go
    in chunks of the predicted size, and every item is in one chunk that worked."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=GiB)

        def work(chunk: list[int]) -> list[int]:
            card.run(len(chunk))
            return chunk

        result = process_in_chunks(work, list(range(100)), start=64, device="cuda")
    assert result == list(range(100))
    assert card.sizes[:3] == [64, 8, predicted_for(card)]
    assert card.ooms == 1


# Options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"headroom": 1.0}, InvalidArgumentError, "headroom must be >= 0 and < 1, got 1.0"),
        ({"headroom": -0.1}, InvalidArgumentError, "headroom"),
        ({"headroom": "5%"}, InvalidArgumentTypeError, "headroom must be a real number"),
        ({"headroom": True}, InvalidArgumentTypeError, "headroom"),
        ({"measure": 1}, InvalidArgumentTypeError, "measure must be True or False, got 1"),
    ],
)
def test_bad_sizing_options_are_refused_when_decorating(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """headroom and measure are checked when decorating, naming the parameter and value."""
    with pytest.raises(error, match=match):
        adaptive_batch(start=4, **options)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        AdaptiveBatchState(start=4, **options)  # type: ignore[arg-type]


def test_the_state_shows_what_was_learned() -> None:
    """adaptive_state's repr and snapshot name the memory per item, the predicted size and
    the wrong predictions."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=64 * MiB)
        step = adaptive_batch(start=1000, device="cuda")(card.run)
        for _ in range(4):
            step()
    snapshot = step.adaptive_state.snapshot()
    assert snapshot.memory_per_item == 64 * MiB
    assert snapshot.predicted_size == predicted_for(card)
    assert (
        f"memory_per_item={64 * MiB}, predicted_size={predicted_for(card)}, wrong_predictions=0"
    ) in repr(step.adaptive_state)


# Properties ------------------------------------------------------------------------------------


def _failing_above(fits: int) -> Callable[[int], int]:
    def step(batch_size: int) -> int:
        if batch_size > fits:
            raise oom_error("cuda", tried=batch_size * MiB)
        return batch_size

    return step


# Few examples: every out-of-memory error costs a full gc.collect() in the recovery. The pure
# rules get hundreds in tests/test_sizing_state.py.
@settings(max_examples=15, deadline=None)
@given(
    fits=st.integers(min_value=1, max_value=300),
    fraction=st.floats(min_value=0.0, max_value=0.99),
    start=st.integers(min_value=1, max_value=400),
    # With no headroom at all, a card filled to the byte can fail by a float's rounding.
    headroom=st.sampled_from([0.01, 0.03, 0.1, 0.5]),
)
def test_on_a_linear_card_predictions_never_run_out_of_memory(
    fits: int, fraction: float, start: int, headroom: float
) -> None:
    """Whatever the card and the (positive) headroom: once measured, no predicted size runs
    out of memory, none exceeds start, and the size kept is the largest within the margin."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        card = LinearCard(fake, per_item=(23 * GiB) / (fits + fraction))
        step = adaptive_batch(start=start, headroom=headroom, device="cuda")(card.run)
        sizes = [step() for _ in range(6)]
    state = step.adaptive_state
    assert state.wrong_predictions == 0
    assert max(sizes) <= min(start, fits)
    # The largest success is a floor: a size that fitted stays, even inside the headroom.
    floor = state.snapshot().largest_success or 0
    assert sizes[-1] == min(start, max(1, predicted_for(card, headroom), floor))
