"""The demo: line art, the colorizer, the leak, the two runs, their files and their plot."""

from __future__ import annotations

import csv
import gc
import json
import math
import platform
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import memscope.cli.demo as demo_module
from memscope import (
    BatchReport,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope.cli.demo import (
    IMAGES_AND_PLOT_SKIPPED,
    IMAGES_SKIPPED,
    WITH_CLEANUP,
    WITHOUT_CLEANUP,
    Colorizer,
    Demo,
    DemoResult,
    ImageLeftovers,
    check_output_folder,
    demo_threads,
    draw_comparison,
    draw_line_art,
    footprint_timeline,
    leftover_bytes,
    save_png,
)
from memscope.exceptions import HostMemoryUnavailableError
from memscope.host import HostMemoryMonitor
from memscope.testing import MiB

CSV_COLUMNS = ["item", "seconds", "usage", "allocated", "reserved", "gc_ran"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pixels(path: Path) -> torch.Tensor:
    """The RGB pixels of the PNG at ``path``, decoded by Pillow, as a ``(height, width, 3)``."""
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(path) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        width, height = image.size
        data = image.tobytes()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(height, width, 3)


@pytest.fixture
def automatic_gc_off() -> Iterator[None]:
    """No automatic collection while the test decides what only a collection frees."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# Images --------------------------------------------------------------------------------


def test_png_round_trips_the_pixels(tmp_path: Path) -> None:
    """The demo's PNG writer (Pillow) stores exactly the tensor's pixels, losslessly."""
    pytest.importorskip("PIL")
    pixels = torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8, generator=torch.Generator())
    path = save_png(tmp_path / "image.png", pixels)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert torch.equal(_pixels(path), pixels)


def test_png_writer_reads_a_non_contiguous_tensor(tmp_path: Path) -> None:
    """A permuted view is written in its logical order, not its storage order."""
    pytest.importorskip("PIL")
    planes = torch.arange(2 * 4 * 3, dtype=torch.uint8).reshape(3, 2, 4)
    pixels = planes.permute(1, 2, 0)
    assert not pixels.is_contiguous()
    assert torch.equal(_pixels(save_png(tmp_path / "view.png", pixels)), pixels)


# Line art and the colorizer ------------------------------------------------------------


def test_line_art_is_deterministic_per_seed() -> None:
    """The same seed draws the same picture; another seed draws another."""
    first = draw_line_art(48, 32, seed=3)
    assert first.shape == (1, 1, 32, 48)
    assert torch.equal(first, draw_line_art(48, 32, seed=3))
    assert not torch.equal(first, draw_line_art(48, 32, seed=4))


def test_line_art_is_ink_on_paper() -> None:
    """Values lie in [0, 1]: mostly paper (1.0), with some full ink (0.0)."""
    art = draw_line_art(128, 128, seed=0)
    assert float(art.min()) == 0.0
    assert float(art.max()) == 1.0
    assert 0.5 < float((art == 1.0).float().mean()) < 1.0


def test_line_art_is_the_same_however_the_shapes_are_chunked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rasterising one shape at a time gives the picture all shapes at once give."""
    at_once = draw_line_art(64, 40, seed=7)
    monkeypatch.setattr("memscope.cli._demo_art._DRAWING_CHUNK_ELEMENTS", 1)
    assert torch.equal(draw_line_art(64, 40, seed=7), at_once)


def test_colorizer_keeps_ink_black_and_global_random_state_alone() -> None:
    """The network is seeded on its own, colours the paper and leaves the lines black."""
    state = torch.get_rng_state()
    network = Colorizer(seed=1).eval()
    assert torch.equal(torch.get_rng_state(), state)
    art = draw_line_art(32, 32, seed=0)
    with torch.inference_mode():
        colours = network(art)
        again = Colorizer(seed=1).eval()(art)
    assert colours.shape == (1, 3, 32, 32)
    assert torch.equal(colours, again)
    assert float(colours[:, :, art[0, 0] == 0].abs().max()) == 0.0
    assert float(colours.max()) > 0.0


def test_colorize_returns_the_colours_and_both_layers_features() -> None:
    """colorize() gives forward()'s colours and features of leftover_bytes bytes."""
    network = Colorizer(seed=2).eval()
    art = draw_line_art(24, 16, seed=0)
    with torch.inference_mode():
        colours, features = network.colorize(art)
        assert torch.equal(colours, network(art))
    assert features.shape == (1, 32, 16, 24)
    assert features.numel() * features.element_size() == leftover_bytes(24, 16)


def test_image_leftovers_are_freed_only_by_a_collection(automatic_gc_off: None) -> None:
    """What an image leaves sits in a reference cycle: dropping it frees nothing, gc does."""
    features = torch.ones(4)
    watched = weakref.ref(features)
    ImageLeftovers(features)
    del features
    assert watched() is not None
    gc.collect()
    assert watched() is None


# The two runs --------------------------------------------------------------------------


def _run(tmp_path: Path, **options: object) -> DemoResult:
    settings: dict[str, object] = {"images": 3, "size": (64, 48), "device": "cpu"}
    settings.update(options)
    return Demo(out=tmp_path / "out", **settings).run()  # type: ignore[arg-type]


def test_demo_writes_both_runs_and_the_plot(tmp_path: Path) -> None:
    """Each run has its folder (report, timeline, images); one plot compares them."""
    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    result = _run(tmp_path)
    out = tmp_path / "out"
    assert result.folder == out
    assert sorted(path.name for path in out.iterdir()) == [
        "timeline.png",
        WITH_CLEANUP,
        WITHOUT_CLEANUP,
    ]
    assert [run.name for run in result.runs] == [WITHOUT_CLEANUP, WITH_CLEANUP]
    for run in result.runs:
        assert run.folder == out / run.name
        images = sorted((run.folder / "images").iterdir())
        assert [path.name for path in images] == [f"colorized-{index}.png" for index in range(3)]
        assert list(run.images) == images
        for path in images:
            assert _pixels(path).shape == (48, 64, 3)
        assert BatchReport.from_json(run.report_json) == run.report
        assert run.report_json == run.folder / "report.json"
        with run.timeline_csv.open(newline="") as file:
            rows = list(csv.reader(file))
        assert rows[0][: len(CSV_COLUMNS)] == CSV_COLUMNS
        assert [row[0] for row in rows[1:]] == ["1", "2", "3"]
    assert (result.images_skipped, result.plot_skipped, result.skipped) == (None, None, None)
    assert result.timeline_plot == out / "timeline.png"
    assert result.timeline_plot.read_bytes().startswith(PNG_SIGNATURE)


def test_both_runs_colorize_the_same_images(tmp_path: Path) -> None:
    """The loop is the same in both runs: the images are byte for byte the same."""
    pytest.importorskip("PIL")
    result = _run(tmp_path, images=2)
    for without, with_ in zip(
        result.without_cleanup.images, result.with_cleanup.images, strict=True
    ):
        assert without.read_bytes() == with_.read_bytes()


def test_the_run_without_cleanup_only_counts(tmp_path: Path) -> None:
    """The first run is count-only: it records every image and never cleans up."""
    report = _run(tmp_path, images=4, every=2).without_cleanup.report
    assert (report.items, report.calls, report.every, report.budget) == (4, 4, None, None)
    assert (report.cleanups, report.cache_clears, report.gc_runs) == (0, 0, 0)
    assert len(report.timeline) == 4
    assert all(entry.host_resident is not None for entry in report.timeline)


def test_the_run_with_cleanup_cleans_up_on_the_batch_cadence(tmp_path: Path) -> None:
    """The second run cleans up after every `every` images and at its end, with the budget."""
    result = _run(tmp_path, images=5, every=2, memory_threshold=0.9)
    report = result.with_cleanup.report
    assert (report.items, report.calls, report.every) == (5, 5, 2)
    # After images 2 and 4, then the batch's final step; the decorated function adds none.
    assert report.cleanups == 3
    assert report.budget == result.budget
    assert report.memory_threshold == 0.9
    assert report.host_limit is not None


def test_the_budget_leaves_room_for_two_cleanup_intervals_of_leftovers(tmp_path: Path) -> None:
    """GC starts once the footprint is two intervals' leftovers above where it started."""
    demo = Demo(size=(64, 32), device="cpu", every=3, memory_threshold=0.5, out=tmp_path)
    allowance = 2 * 3 * leftover_bytes(64, 32)
    assert demo.budget_for(100 * MiB) == math.ceil((100 * MiB + allowance) / 0.5)
    assert 0.5 * demo.budget_for(100 * MiB) >= 100 * MiB + allowance
    # Never more than the host can hold.
    assert demo.budget_for(10**15) == HostMemoryMonitor().limit.size


def test_demo_gives_torch_its_threads_back(tmp_path: Path) -> None:
    """The demo runs on one or two torch threads and restores the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _run(tmp_path, images=1, size=(16, 16))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert demo_threads() in (1, 2)


def test_demo_is_deterministic(tmp_path: Path) -> None:
    """The same seed writes byte-identical images."""
    pytest.importorskip("PIL")
    first = Demo(images=2, size=(32, 32), device="cpu", out=tmp_path / "a", seed=5).run()
    second = Demo(images=2, size=(32, 32), device="cpu", out=tmp_path / "b", seed=5).run()
    for one, other in zip(first.with_cleanup.images, second.with_cleanup.images, strict=True):
        assert one.read_bytes() == other.read_bytes()


def test_demo_images_decode_as_colour_pictures(tmp_path: Path) -> None:
    """Each image Pillow wrote opens as an RGB PNG of the demo's size, paper coloured in."""
    image_module = pytest.importorskip("PIL.Image")
    result = _run(tmp_path, images=2, size=(40, 24))
    for path in result.with_cleanup.images:
        with image_module.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 24))
            colours = image.getcolors(maxcolors=40 * 24)
        # Line art on coloured paper: black ink and more than a handful of colours.
        assert colours is not None
        assert (0, 0, 0) in {colour for _count, colour in colours}
        assert len(colours) > 10


# The plot ------------------------------------------------------------------------------


def test_the_plot_puts_the_runs_side_by_side(tmp_path: Path) -> None:
    """Two panels share the memory axis; the right one shows the threshold and cleanups."""
    pytest.importorskip("matplotlib")
    result = _run(tmp_path, images=4, every=2)
    figure = draw_comparison(
        result.without_cleanup.report,
        result.with_cleanup.report,
        budget=result.budget,
        leftover_bytes=result.leftover_bytes,
        every=2,
    )
    left, right = figure.axes
    assert left.get_title() == "without cleanup: managed_batch(every=None)"
    assert right.get_title().startswith("with cleanup: managed_batch(every=2, budget=")
    assert left.get_ylabel() == "host memory (MiB)"
    assert left.get_shared_y_axes().joined(left, right)
    legend = right.get_legend()
    assert legend is not None
    labels = [text.get_text() for text in legend.get_texts()]
    assert "GC threshold (80% of the budget)" in labels
    assert "cleanup step (every 2)" in labels
    assert (tmp_path / "out" / "timeline.png").stat().st_size < 200_000


def test_the_footprint_is_host_memory_on_the_cpu(tmp_path: Path) -> None:
    """On the CPU each timeline point is the process's resident memory after the image."""
    report = _run(tmp_path, images=2).without_cleanup.report
    assert footprint_timeline(report) == [
        (entry.item, entry.host_resident) for entry in report.timeline
    ]


# Without the optional packages ---------------------------------------------------------


def test_demo_without_pillow_skips_the_images_with_one_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Pillow the runs succeed, write no images and say once how to get them."""
    # Hidden the way a missing install looks to `import PIL`; matplotlib needs Pillow too.
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    caplog.set_level("INFO", logger="memscope")
    result = _run(tmp_path, size=(32, 32))
    assert result.images_skipped == IMAGES_SKIPPED
    assert "pip install 'memscope[plot]'" in IMAGES_SKIPPED
    for run in result.runs:
        assert run.images == ()
        assert not (run.folder / "images").exists()
        assert run.report.items == 3
        assert run.report_json.exists()
    notes = [record.getMessage() for record in caplog.records if "Pillow" in record.getMessage()]
    assert notes == [f"demo: {IMAGES_SKIPPED}"]


def test_demo_without_the_plot_extra_gives_one_note_for_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Pillow and matplotlib, one note names both and the extra that brings them."""
    for module in ("PIL", "PIL.Image", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    result = _run(tmp_path, images=2, size=(16, 16))
    assert result.timeline_plot is None
    assert result.skipped == IMAGES_AND_PLOT_SKIPPED
    assert "pip install 'memscope[plot]'" in result.skipped
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        WITH_CLEANUP,
        WITHOUT_CLEANUP,
    ]
    assert sorted(path.name for path in result.with_cleanup.folder.iterdir()) == [
        "report.json",
        "timeline.csv",
    ]


def test_demo_without_matplotlib_skips_only_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib the runs still succeed and the result says how to get the plot."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = _run(tmp_path, images=2, size=(32, 32))
    assert result.timeline_plot is None
    assert result.plot_skipped is not None
    assert "pip install 'memscope[plot]'" in result.plot_skipped
    assert not (tmp_path / "out" / "timeline.png").exists()
    assert result.with_cleanup.timeline_csv.exists()


def test_demo_on_the_cpu_needs_host_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where host memory cannot be read, the CPU demo refuses at once and says what to install."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr("memscope.host.PROC_ROOT", tmp_path / "no-proc")
    with pytest.raises(HostMemoryUnavailableError, match=r"pip install 'memscope\[host\]'"):
        Demo(device="cpu", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# The output folder ---------------------------------------------------------------------


def test_default_folder_is_new_and_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without out=, each run makes a new memscope-demo-<time> folder in the current one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("memscope.cli._demo_files.time.strftime", lambda _format: "20250101-120000")
    first = Demo(images=1, size=(16, 16), device="cpu").run()
    second = Demo(images=1, size=(16, 16), device="cpu").run()
    assert first.folder == tmp_path / "memscope-demo-20250101-120000"
    assert second.folder == tmp_path / "memscope-demo-20250101-120000-2"
    assert (first.folder / WITH_CLEANUP / "report.json").exists()


def test_out_may_not_hold_files(tmp_path: Path) -> None:
    """An existing non-empty folder, or a file, is refused before anything is written."""
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="never overwrites"):
        Demo(out=tmp_path, device="cpu")
    with pytest.raises(InvalidArgumentError, match="not an empty folder"):
        Demo(out=tmp_path / "keep.txt", device="cpu")
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


def test_out_that_cannot_be_created_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    """A folder under a file cannot be made: refused at once, named, no folder left behind."""
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match=r"^out '.*file/a/b' cannot be created: "):
        check_output_folder(tmp_path / "file" / "a" / "b")
    new = tmp_path / "new" / "nested"
    assert check_output_folder(new) == new
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_on_a_virtual_file_system_is_refused() -> None:
    """/proc allows what it then refuses: the check tries, so it is refused up front."""
    with pytest.raises(InvalidArgumentError, match=r"^--out '/proc/nonexistent' cannot be"):
        check_output_folder("/proc/nonexistent", "--out")


def test_an_existing_empty_folder_is_used(tmp_path: Path) -> None:
    """An empty folder given as out= receives the files."""
    result = Demo(images=1, size=(16, 16), device="cpu", out=tmp_path).run()
    assert result.folder == tmp_path
    assert (tmp_path / WITHOUT_CLEANUP / "report.json").exists()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"images": 0}, InvalidArgumentError, "images must be an int >= 1"),
        ({"every": 0}, InvalidArgumentError, "every must be an int >= 1"),
        ({"seed": -1}, InvalidArgumentError, "seed must be an int >= 0"),
        ({"size": (0, 5)}, InvalidArgumentError, "size width must be an int >= 1, got 0"),
        ({"memory_threshold": 1.5}, InvalidArgumentError, "memory_threshold"),
        ({"device": "cuda:7"}, DeviceUnavailableError, "cuda:7"),
        ({"progress": "yes"}, InvalidArgumentTypeError, "progress must be a bool"),
        ({"images": 10**6}, InvalidArgumentError, "use fewer or smaller images"),
        ({"out": 3}, InvalidArgumentTypeError, "out must be a path"),
    ],
)
def test_bad_settings_fail_before_any_work(
    tmp_path: Path, options: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each setting is checked when the demo is made; no folder is created."""
    settings: dict[str, object] = {"out": tmp_path / "out"}
    settings.update(options)
    with pytest.raises(error, match=message):
        Demo(**settings)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# The point of it -----------------------------------------------------------------------


def _demo_reports(out: Path, *options: str) -> dict[str, dict[str, Any]]:
    """``memscope demo`` in a fresh process, as users run it: both runs' reports, by run."""
    command = ("-m", "memscope", "demo", "--no-progress", "--device", "cpu", "--out", str(out))
    result = subprocess.run(
        [sys.executable, *command, *options],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {
        run: json.loads((out / run / "report.json").read_text())
        for run in (WITHOUT_CLEANUP, WITH_CLEANUP)
    }


def test_memscope_keeps_the_leak_in_check(tmp_path: Path) -> None:
    """In a fresh process the leak grows host memory without cleanup; with it, memscope
    collects and the peak stays within the budget's allowance plus one cleanup interval."""
    images, every, size = 20, 2, 128
    reports = _demo_reports(
        tmp_path / "out", "--images", str(images), "--every", str(every), "--size", str(size)
    )
    leftover = leftover_bytes(size, size)
    without, with_ = reports[WITHOUT_CLEANUP], reports[WITH_CLEANUP]
    grown_without = without["host_resident_peak"] - without["host_resident_start"]
    grown_with = with_["host_resident_peak"] - with_["host_resident_start"]
    assert without["gc_runs"] == 0
    assert grown_without >= 4 * every * leftover
    assert with_["gc_runs"] >= 1
    # Two intervals' leftovers before the threshold, one more until the next cleanup step.
    assert grown_with <= 3 * every * leftover + 16 * MiB
    assert grown_with < grown_without


@pytest.mark.gpu
def test_demo_on_the_accelerator_plots_reserved_memory(tmp_path: Path, accelerator: str) -> None:
    """On a real GPU both runs record reserved memory for every image, and the second cleans."""
    result = Demo(images=6, size=(64, 64), device=accelerator, every=2, out=tmp_path / "o").run()
    for run in result.runs:
        assert run.report.device.startswith(accelerator)
        assert len(footprint_timeline(run.report)) == 6
    assert result.with_cleanup.report.budget == result.budget
    assert result.with_cleanup.report.cleanups == 4


def test_the_mmap_threshold_is_fixed_on_glibc() -> None:
    """On glibc the demo fixes malloc's mmap threshold; elsewhere it reports it could not."""
    fixed = demo_module.fix_mmap_threshold()
    assert fixed is (platform.libc_ver()[0] == "glibc")


def test_the_demo_repeats_its_figures(tmp_path: Path) -> None:
    """Two runs of ``memscope demo`` on the CPU read the growth it leaves behind (within 5 %),
    the same growth in the run with cleanup, and agree on whether either run named a leak."""
    figures = []
    for attempt in range(2):
        reports = _demo_reports(tmp_path / f"run-{attempt}", "--images", "16", "--size", "96")
        without, with_ = reports[WITHOUT_CLEANUP], reports[WITH_CLEANUP]
        figures.append((without["memory_growth_per_item"], with_["memory_growth_per_item"]))
        figures.append((without["leak"] is None, with_["leak"] is None))
    (growth, kept), first_leaks, (second_growth, second_kept), second_leaks = figures
    assert isinstance(growth, float)
    assert growth == pytest.approx(leftover_bytes(96, 96), rel=0.05)
    assert second_growth == pytest.approx(growth, rel=0.05)
    assert isinstance(kept, float)
    assert second_kept == pytest.approx(kept, rel=0.05, abs=64 * 1024)
    assert first_leaks == second_leaks
