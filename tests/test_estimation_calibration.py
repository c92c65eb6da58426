"""Calibrated estimates: memscope runs the user's function at a few small sizes, measures each
run's peak (the allocator's on a device, torch's allocations on the CPU), fits
fixed + per_pixel * pixels * batch, and the fitted model predicts larger sizes."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from memscope import (
    ImageMemoryModel,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryManager,
    MemorySnapshot,
)
from memscope.estimation import (
    DEFAULT_HEADROOM,
    CalibratedImageMemoryModel,
    CalibrationSample,
    available_bytes,
    calibrate,
    fit_samples,
)
from memscope.exceptions import MemoryFiguresUnavailableError
from memscope.testing import FakeDevice, FakeHost, GiB, MiB


def samples_on_a_line(fixed: int, per_pixel: float) -> list[CalibrationSample]:
    """Samples of a function that needs exactly fixed + per_pixel * pixels."""
    return [
        CalibrationSample((side, side), batch, int(fixed + per_pixel * side * side * batch))
        for side in (64, 128, 256)
        for batch in (1, 2)
    ]


# The fit ------------------------------------------------------------------------------------


def test_the_fit_recovers_a_line() -> None:
    """Samples on a line give back its fixed part and slope, with a perfect fit."""
    fixed, per_pixel, r_squared, miss = fit_samples(samples_on_a_line(5 * MiB, 48.0))
    assert fixed == 5 * MiB
    assert per_pixel == pytest.approx(48.0)
    assert r_squared == pytest.approx(1.0)
    assert miss == pytest.approx(0.0, abs=1e-9)


def test_a_negative_intercept_is_refitted_through_the_origin() -> None:
    """No call needs less than nothing: noise that puts the intercept below zero gives a fit
    through the origin."""
    samples = [
        CalibrationSample((100, 100), 1, 9_000),
        CalibrationSample((200, 200), 1, 40_000),
        CalibrationSample((300, 300), 1, 91_000),
    ]
    fixed, per_pixel, _, _ = fit_samples(samples)
    assert fixed == 0
    assert per_pixel == pytest.approx((9e3 * 1e4 + 4e4 * 4e4 + 9.1e4 * 9e4) / (1e8 + 16e8 + 81e8))


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ([CalibrationSample((8, 8), 1, 100), CalibrationSample((8, 8), 1, 120)], "two different"),
        (
            [CalibrationSample((8, 8), 1, 100), CalibrationSample((16, 16), 1, 100)],
            "does not grow",
        ),
    ],
)
def test_samples_that_make_no_rising_line_are_refused(
    samples: list[CalibrationSample], match: str
) -> None:
    """One pixel count, or a peak that does not grow, cannot size batches: a clear error."""
    with pytest.raises(InvalidArgumentError, match=match):
        fit_samples(samples)


# Calibrating on the allocator (the recording fake) ----------------------------------------------


class FakeWorkload:
    """A function whose allocations on the fake card are known: ``fixed`` plus ``per_pixel``
    bytes per pixel of the batch (or pixels to the power ``exponent``), freed at the end."""

    def __init__(
        self, fake: FakeDevice, fixed: int, per_pixel: float, exponent: float = 1.0
    ) -> None:
        self.fake = fake
        self.fixed = fixed
        self.per_pixel = per_pixel
        self.exponent = exponent
        self.calls: list[tuple[int, tuple[int, int]]] = []
        self.baseline = 2 * GiB  # the model's weights, loaded before
        fake.set_memory(allocated=self.baseline)

    def __call__(self, batch_size: int, image_size: tuple[int, int]) -> None:
        self.calls.append((batch_size, image_size))
        pixels = image_size[0] * image_size[1] * batch_size
        self.fake.set_memory(
            allocated=self.baseline + int(self.fixed + self.per_pixel * pixels**self.exponent)
        )
        self.fake.set_memory(allocated=self.baseline)

    def needs(self, image_size: tuple[int, int], batch_size: int = 1) -> int:
        pixels = image_size[0] * image_size[1] * batch_size
        return int(self.fixed + self.per_pixel * pixels**self.exponent)


def test_calibrating_on_the_allocator_fits_the_known_allocations() -> None:
    """On a device with peak statistics, each run is measured from a reset peak: the fit is
    exact, and it predicts 1024x1024 (and a batch of 4 of them) to the byte."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        workload = FakeWorkload(fake, fixed=300 * MiB, per_pixel=96.0)
        model = calibrate(workload, manager=MemoryManager("cuda"))
        resets = fake.count("torch.cuda.reset_peak_memory_stats")
    # One warm-up, then two repeats of three sizes by two batch sizes.
    assert len(workload.calls) == 13
    assert resets == 12
    assert model.fixed_bytes == 300 * MiB
    assert model.bytes_per_pixel == pytest.approx(96.0)
    assert model.r_squared == pytest.approx(1.0)
    assert model.estimate((1024, 1024)) == workload.needs((1024, 1024))
    assert model.estimate_memory_required((1024, 1024), 4) == workload.needs((1024, 1024), 4)
    assert model.device == "cuda:0"
    assert "allocator" in model.method
    assert [sample.peak_bytes for sample in model.samples] == [
        workload.needs(sample.image_size, sample.batch_size) for sample in model.samples
    ]


def test_calibration_sizes_and_batches_are_the_callers() -> None:
    """The image sizes and batch sizes given are the ones measured, each repeats times."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        workload = FakeWorkload(fake, fixed=MiB, per_pixel=8.0)
        model = calibrate(
            workload,
            manager=MemoryManager("cuda"),
            image_sizes=[(32, 16), (64, 32)],
            batch_sizes=[3],
            repeats=1,
        )
    assert workload.calls == [(3, (32, 16)), (3, (32, 16)), (3, (64, 32))]
    assert [(sample.image_size, sample.batch_size) for sample in model.samples] == [
        ((32, 16), 3),
        ((64, 32), 3),
    ]


def test_memory_that_is_not_linear_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A function whose memory grows faster than its pixels still gets a fit, whose quality
    says so, with a warning."""
    with FakeDevice("cuda", total=24 * GiB) as fake, caplog.at_level(logging.WARNING, "memscope"):
        workload = FakeWorkload(fake, fixed=0, per_pixel=0.01, exponent=1.6)
        model = calibrate(workload, manager=MemoryManager("cuda"))
    assert model.r_squared < 0.99 or model.max_relative_error > 0.1
    assert any("not linear" in record.getMessage() for record in caplog.records)


def test_where_no_peak_can_be_measured_calibration_says_so() -> None:
    """MPS keeps no peak statistics: calibrating there is a clear error, not a wrong model."""
    with FakeDevice("mps", total=24 * GiB):
        manager = MemoryManager("mps")
        with pytest.raises(MemoryFiguresUnavailableError, match="peak"):
            calibrate(lambda batch, size: None, manager=manager)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"function": 3}, InvalidArgumentTypeError, "function must be callable"),
        ({"image_sizes": []}, InvalidArgumentError, "image_sizes must not be empty"),
        ({"image_sizes": [(64, 0)]}, InvalidArgumentError, r"image_sizes\[0\]"),
        ({"image_sizes": "64x64"}, InvalidArgumentTypeError, "image_sizes must be a sequence"),
        ({"batch_sizes": [0]}, InvalidArgumentError, r"batch_sizes\[0\]"),
        ({"repeats": 0}, InvalidArgumentError, "repeats"),
        ({"image_sizes": [(8, 8)], "batch_sizes": [1]}, InvalidArgumentError, "two different"),
    ],
)
def test_bad_calibration_arguments_are_refused_before_any_run(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """Every argument is checked before the function runs, naming the parameter."""
    calls: list[object] = []
    arguments: dict[str, object] = {"function": lambda *args: calls.append(args)}
    arguments.update(options)
    with pytest.raises(error, match=match):
        calibrate(manager=MemoryManager("cpu"), **arguments)  # type: ignore[arg-type]
    assert calls == []


# Calibrating on the CPU (torch's allocations) ------------------------------------------------


FIXED_ELEMENTS = 2 * MiB  # 8 MiB of float32


def known_cpu_workload(batch_size: int, image_size: tuple[int, int]) -> float:
    """Allocations known to the byte, all alive at the peak: 8 MiB, plus 8 + 24 float32
    values (128 bytes) per pixel of the batch."""
    width, height = image_size
    table = torch.ones(FIXED_ELEMENTS)
    image = torch.ones(batch_size, 8, height, width)
    features = torch.ones(batch_size, 24, height, width)
    return float(table[0] + image[0, 0, 0, 0] + features[0, 0, 0, 0])


def known_cpu_bytes(image_size: tuple[int, int], batch_size: int = 1) -> int:
    return 4 * FIXED_ELEMENTS + 128 * image_size[0] * image_size[1] * batch_size


def test_calibrating_on_the_cpu_predicts_1024_from_sizes_up_to_256() -> None:
    """On the CPU, calibrating at 64 to 256 pixels a side in this long test process predicts
    the allocations at 1024x1024 within 0.1 %, as does the peak measured there: torch's
    allocations do not depend on what the process did before (the resident memory did)."""
    manager = MemoryManager("cpu")
    model = calibrate(known_cpu_workload, manager=manager)
    measured = calibrate(
        known_cpu_workload,
        manager=manager,
        image_sizes=[(1024, 1024)],
        batch_sizes=[1, 2],
        repeats=1,
    ).samples[0]
    known = known_cpu_bytes((1024, 1024))
    assert model.estimate((1024, 1024)) == pytest.approx(known, rel=0.001)
    assert measured.peak_bytes == pytest.approx(known, rel=0.001)
    assert "profiler" in model.method


def test_a_cpu_calibration_ignores_what_the_process_freed_before() -> None:
    """Memory the process freed before (large tensors, whose frees raise glibc's mmap
    threshold, and cyclic garbage holding tensors) changes no CPU sample by a byte, and each
    is the workload's known allocations."""
    manager = MemoryManager("cpu")
    options = {"image_sizes": [(64, 64), (256, 256)], "batch_sizes": [1, 2], "repeats": 1}
    before = calibrate(known_cpu_workload, manager=manager, **options)  # type: ignore[arg-type]
    for index in range(20):
        released = torch.ones((index % 4 + 1) * 4 * MiB)
        cycle: dict[str, object] = {"tensor": torch.ones(MiB)}
        cycle["self"] = cycle
        del released, cycle
    after = calibrate(known_cpu_workload, manager=manager, **options)  # type: ignore[arg-type]
    assert [sample.peak_bytes for sample in after.samples] == [
        sample.peak_bytes for sample in before.samples
    ]
    # The known allocations, and the few bytes of the scalar the workload returns.
    assert all(
        0 <= sample.peak_bytes - known_cpu_bytes(sample.image_size, sample.batch_size) <= 64
        for sample in after.samples
    )


# The models ---------------------------------------------------------------------------------


def test_a_calibrated_model_counts_its_fixed_part_once_per_call() -> None:
    """A chunk of images needs the fixed part once, then each image's pixels; the largest
    batch is what fits after the fixed part, less the headroom."""
    model = CalibratedImageMemoryModel(fixed_bytes=1000, bytes_per_pixel=2.0)
    assert model.estimate((10, 10)) == 1200
    assert model.estimate_memory_required((10, 10), 3) == 1600
    assert model.estimate_chunk([(10, 10), (20, 5), (1, 1)]) == 1000 + 2 * 201
    assert model.estimate_chunk([]) == 0
    assert model.max_batch_size((10, 10), 3000, headroom=0.0) == 10
    assert model.max_batch_size((10, 10), 3000) == int(
        (3000 * (1 - DEFAULT_HEADROOM) - 1000) // 200
    )
    assert model.max_batch_size((10, 10), 900) == 0


def test_a_calibrated_model_reads_what_a_manager_has_available() -> None:
    """max_batch_size with a manager uses what its device has available now."""
    model = CalibratedImageMemoryModel(fixed_bytes=GiB, bytes_per_pixel=100.0)
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_memory(allocated=3 * GiB)
        manager = MemoryManager("cuda")
        assert model.max_batch_size((1024, 1024), manager, headroom=0.0) == int(
            20 * GiB // (100 * 1024 * 1024)
        )
    with pytest.raises(MemoryFiguresUnavailableError):
        model.max_batch_size((1024, 1024), MemoryManager("cpu"))


def test_a_calibrated_model_serves_the_manager() -> None:
    """A calibrated model is a drop-in memory_model: the manager's estimate is the fit's."""
    model = CalibratedImageMemoryModel(fixed_bytes=MiB, bytes_per_pixel=40.0)
    manager = MemoryManager("cpu", memory_model=model)  # type: ignore[arg-type]
    assert manager.estimate_memory_required((512, 512)) == MiB + 40 * 512 * 512


def test_a_calibrated_model_reads_as_text_and_json() -> None:
    """str() gives the formula and the fit; to_dict() is JSON with every sample."""
    samples = samples_on_a_line(MiB, 10.0)
    model = CalibratedImageMemoryModel(
        fixed_bytes=MiB,
        bytes_per_pixel=10.0,
        samples=tuple(samples),
        r_squared=0.999,
        max_relative_error=0.012,
        device="cuda:0",
    )
    text = str(model)
    assert text.startswith("1.0 MiB + 10.00 bytes per pixel")
    assert "R^2 0.9990" in text
    assert "1.2%" in text
    assert "on cuda:0" in text
    data = json.loads(json.dumps(model.to_dict()))
    assert data["fixed_bytes"] == MiB
    assert data["samples"][0] == {
        "width": 64,
        "height": 64,
        "batch_size": 1,
        "peak_bytes": MiB + 40960,
    }


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"fixed_bytes": -1, "bytes_per_pixel": 1.0}, InvalidArgumentError),
        ({"fixed_bytes": 0, "bytes_per_pixel": 0.0}, InvalidArgumentError),
        ({"fixed_bytes": 1.5, "bytes_per_pixel": 1.0}, InvalidArgumentTypeError),
    ],
)
def test_a_calibrated_model_checks_its_figures(
    fields: dict[str, object], error: type[Exception]
) -> None:
    """A model made by hand refuses figures no fit can give."""
    with pytest.raises(error):
        CalibratedImageMemoryModel(**fields)  # type: ignore[arg-type]


def test_the_fixed_model_sizes_batches_and_chunks() -> None:
    """ImageMemoryModel (the default formula) gives the same answers through the new
    methods: a batch is n images, a chunk the sum of its images."""
    model = ImageMemoryModel()
    one = model.estimate((512, 512))
    assert model.estimate_memory_required((512, 512), 3) == 3 * one
    assert model.estimate_chunk([(512, 512), (2048, 2048)]) == one + model.estimate((2048, 2048))
    assert model.max_batch_size((512, 512), 10 * one, headroom=0.0) == 10
    assert model.max_batch_size((512, 512), 10 * one) == 9
    with pytest.raises(InvalidArgumentError, match="available must be >= 0"):
        model.max_batch_size((512, 512), -1)
    with pytest.raises(InvalidArgumentTypeError, match="available must be"):
        model.max_batch_size((512, 512), "1GiB")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="headroom"):
        model.max_batch_size((512, 512), one, headroom=1.5)


# What is available ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("figures", "expected"),
    [
        ({}, None),
        ({"total": 100, "used": 30}, 70),
        ({"total": 100, "used": 30, "host_limit": 50, "host_resident": 40}, 10),
        ({"total": 100, "used": 30, "budget": 60, "allocated": 20}, 40),
        ({"budget": 60, "budget_used": 25, "host_limit": 1000, "host_resident": 25}, 35),
        ({"total": 100, "used": 130}, 0),
    ],
)
def test_available_bytes_is_the_smallest_room_left(
    figures: dict[str, int], expected: int | None
) -> None:
    """The device's room, the host's and the budget's: the smallest wins, never negative."""
    assert available_bytes(MemorySnapshot(device="x", usage=0.0, **figures)) == expected


def test_available_bytes_agrees_with_the_managers_max_batch_size() -> None:
    """With a budget on the CPU, what is available is what max_batch_size divides."""
    with FakeHost(resident=GiB, physical_memory=16 * GiB):
        manager = MemoryManager("cpu", budget=3 * GiB)
        available = available_bytes(manager.snapshot())
        assert available == 2 * GiB
        assert manager.max_batch_size((512, 512)) == 2 * GiB // manager.estimate_memory_required(
            (512, 512)
        )


def test_the_moved_names_still_import_from_estimation() -> None:
    """calibrate, fit_samples and the peak readers moved to the sizing layer; their old
    memscope.estimation names are the same objects, and importing estimation loads no
    sizing (a fresh interpreter)."""
    import subprocess
    import sys

    import memscope._peak
    import memscope.estimation
    import memscope.sizing

    assert memscope.estimation.calibrate is memscope.sizing.calibrate
    assert memscope.estimation.fit_samples is memscope.sizing.fit_samples
    for name in ("PeakStart", "host_peak", "peak_source", "start_peak", "read_peak"):
        assert getattr(memscope.estimation, name) is getattr(memscope._peak, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        memscope.estimation.nothing  # type: ignore[attr-defined]  # noqa: B018
    code = "import sys, memscope.estimation; print('memscope.sizing' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr
