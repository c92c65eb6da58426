"""Chunks sized by memory: with a memory model, process_in_chunks makes each chunk the longest
run of the next images whose estimate fits in the memory available, so images of different
sizes share one job; measurements rescale the model, and wrong estimates shrink the chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import torch

from memscope import (
    BatchSizeExhaustedError,
    ImageMemoryModel,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    process_in_chunks,
    process_in_chunks_async,
)
from memscope.estimation import DEFAULT_HEADROOM, CalibratedImageMemoryModel
from memscope.exceptions import MemoryFiguresUnavailableError
from memscope.testing import FakeDevice, FakeHost, GiB, oom_error

MODEL = ImageMemoryModel()
SMALL = (512, 512)
LARGE = (2048, 2048)
# What the default model says: one 2048x2048 image needs as much as sixteen 512x512 ones.
SMALL_BYTES = MODEL.estimate(SMALL)
LARGE_BYTES = MODEL.estimate(LARGE)
# A card on which, less the headroom, one large image fits but not seventeen small ones.
TOTAL = 400_000_000


def identity(size: tuple[int, int]) -> tuple[int, int]:
    """Items are their own image sizes here."""
    return size


class ChunkRecorder:
    """The function under test: records each chunk, and optionally fills the fake card with
    ``scale`` times the model's estimate of it (running out of memory beyond the card)."""

    def __init__(self, fake: FakeDevice | None = None, scale: float | None = None) -> None:
        self.fake = fake
        self.scale = scale
        self.chunks: list[list[tuple[int, int]]] = []
        self.ooms = 0

    def __call__(self, chunk: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        if self.fake is not None and self.scale is not None:
            needs = int(self.scale * MODEL.estimate_chunk(list(chunk)))
            if needs > self.fake.memory[0].total:
                self.ooms += 1
                raise oom_error("cuda", tried=needs)
            self.fake.set_memory(allocated=needs)
            self.fake.set_memory(allocated=0)
        self.chunks.append(list(chunk))
        return list(chunk)

    @property
    def lengths(self) -> list[int]:
        return [len(chunk) for chunk in self.chunks]


def test_one_large_image_and_sixteen_small_ones_are_each_a_chunk() -> None:
    """On a card that fits one 2048x2048 image (by the model), a job of mixed sizes goes in
    chunks of one large image or sixteen small ones, in order."""
    assert LARGE_BYTES == 16 * SMALL_BYTES
    assert LARGE_BYTES <= TOTAL * (1 - DEFAULT_HEADROOM) < LARGE_BYTES + SMALL_BYTES
    images = [LARGE, *[SMALL] * 32, LARGE, *[SMALL] * 5]
    work = ChunkRecorder()
    with FakeDevice("cuda", total=TOTAL):
        result = process_in_chunks(
            work, images, memory_model=MODEL, image_size=identity, device="cuda"
        )
    assert result == images
    assert work.lengths == [1, 16, 16, 1, 5]


def test_start_caps_the_chunk_length() -> None:
    """With start, a chunk sized by memory is never longer than start items."""
    work = ChunkRecorder()
    with FakeDevice("cuda", total=TOTAL):
        process_in_chunks(
            work, [SMALL] * 20, start=6, memory_model=MODEL, image_size=identity, device="cuda"
        )
    assert work.lengths == [6, 6, 6, 2]


def test_a_measured_chunk_rescales_the_model() -> None:
    """When the function needs half what the model says, the chunks after the first (measured)
    one hold twice as many images."""
    with FakeDevice("cuda", total=TOTAL) as fake:
        work = ChunkRecorder(fake, scale=0.5)
        process_in_chunks(work, [SMALL] * 100, memory_model=MODEL, image_size=identity)
    assert work.lengths[:3] == [16, 32, 32]
    assert work.ooms == 0


def test_a_model_that_underestimates_shrinks_the_chunks_and_loses_no_image() -> None:
    """When the function needs twice what the model says, the first chunks run out of memory
    and are retried shorter; once one is measured, the rest fit; every image is processed
    once, in order."""
    images = [(512 + index, 512) for index in range(60)]
    with FakeDevice("cuda", total=TOTAL) as fake:
        work = ChunkRecorder(fake, scale=2.0)
        result = process_in_chunks(work, images, memory_model=MODEL, image_size=identity)
    assert result == images
    assert [image for chunk in work.chunks for image in chunk] == images
    assert 1 <= work.ooms <= 4
    steady = work.lengths[1:-1]
    assert steady
    assert all(length * 2 * SMALL_BYTES <= TOTAL for length in steady)
    assert max(steady) >= 7  # 8 would fit exactly; the headroom and wider images cost one


def test_an_image_too_large_for_the_card_alone_exhausts_the_search() -> None:
    """An image whose estimate alone exceeds the card is a chunk by itself; when it runs out
    of memory there is nothing smaller to try."""
    with FakeDevice("cuda", total=TOTAL) as fake:
        work = ChunkRecorder(fake, scale=1.0)
        with pytest.raises(BatchSizeExhaustedError, match=r"chunk at item 1 .*sizes tried: 1\)"):
            process_in_chunks(
                work, [SMALL, (4096, 4096), SMALL], memory_model=MODEL, image_size=identity
            )
    assert work.chunks == [[SMALL]]


def test_a_tensor_of_images_reads_the_sizes_from_its_shape() -> None:
    """For a tensor (N, C, H, W) the image size is its last two dimensions."""
    images = torch.zeros(40, 1, 8, 16)
    tiny = CalibratedImageMemoryModel(fixed_bytes=0, bytes_per_pixel=1.0)
    lengths: list[int] = []

    def work(chunk: torch.Tensor) -> torch.Tensor:
        lengths.append(len(chunk))
        return chunk

    # 10 images of 16x8 pixels at one byte a pixel fit, 11 do not.
    with FakeDevice("cuda", total=int(10 * 128 / (1 - DEFAULT_HEADROOM)) + 1):
        result = process_in_chunks(work, images, memory_model=tiny, measure=False)
    assert torch.equal(result, images)
    assert lengths == [10, 10, 10, 10]


def test_a_calibrated_models_fixed_part_counts_once_per_chunk() -> None:
    """With a fixed part, a chunk holds what fits after it: the fixed part is not per image."""
    model = CalibratedImageMemoryModel(fixed_bytes=1000, bytes_per_pixel=1.0)
    work = ChunkRecorder()
    # 1000 fixed + 4 images of 100 pixels = 1400 bytes fit; a fifth does not.
    with FakeDevice("cuda", total=int(1400 / (1 - DEFAULT_HEADROOM)) + 1):
        process_in_chunks(
            work, [(10, 10)] * 9, memory_model=model, image_size=identity, measure=False
        )
    assert work.lengths == [4, 4, 1]


def test_async_chunks_by_memory_are_the_same() -> None:
    """process_in_chunks_async sizes chunks by memory the same way."""
    images = [LARGE, *[SMALL] * 20]
    lengths: list[int] = []

    async def work(chunk: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        await asyncio.sleep(0)
        lengths.append(len(chunk))
        return list(chunk)

    with FakeDevice("cuda", total=TOTAL):
        result = asyncio.run(
            process_in_chunks_async(work, images, memory_model=MODEL, image_size=identity)
        )
    assert result == images
    assert lengths == [1, 16, 4]


def test_with_a_budget_on_the_cpu_chunks_fit_the_budget() -> None:
    """On the CPU a manager with a budget says what is available: chunks fit the budget."""
    work = ChunkRecorder()
    with FakeHost(resident=GiB, physical_memory=16 * GiB):
        manager = MemoryManager("cpu", budget=GiB + TOTAL)
        process_in_chunks(
            work,
            [LARGE, *[SMALL] * 16],
            memory_model=MODEL,
            image_size=identity,
            manager=manager,
            measure=False,
        )
    assert work.lengths == [1, 16]


def test_without_the_memory_available_nothing_is_called() -> None:
    """A device that does not say what is available (the CPU without a budget) cannot size
    chunks by memory: a clear error before any call."""
    work = ChunkRecorder()
    with pytest.raises(MemoryFiguresUnavailableError, match="budget"):
        process_in_chunks(work, [SMALL] * 3, memory_model=MODEL, image_size=identity, device="cpu")
    assert work.chunks == []


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({}, InvalidArgumentTypeError, "needs start= .* or memory_model="),
        ({"start": 4, "image_size": identity}, InvalidArgumentError, "only with memory_model"),
        ({"memory_model": object()}, InvalidArgumentTypeError, "estimate_chunk"),
        ({"memory_model": MODEL}, InvalidArgumentTypeError, "needs image_size="),
        ({"memory_model": MODEL, "image_size": 3}, InvalidArgumentTypeError, "image_size must"),
        ({"memory_model": MODEL, "min_size": 0}, InvalidArgumentError, "min_size"),
    ],
)
def test_bad_memory_sizing_arguments_are_refused_at_the_call(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """Every bad combination is refused before anything runs, naming what is wrong."""
    with pytest.raises(error, match=match):
        process_in_chunks(lambda chunk: chunk, [SMALL], device="cpu", **options)  # type: ignore[arg-type]


def test_a_bad_image_size_is_named_with_its_item() -> None:
    """An image_size function that returns something else than (width, height) is refused,
    naming the item."""
    with FakeDevice("cuda", total=TOTAL), pytest.raises(InvalidArgumentError, match=r"items\[1\]"):
        process_in_chunks(
            lambda chunk: chunk,
            [SMALL, (512, 0)],
            memory_model=MODEL,
            image_size=identity,
        )
