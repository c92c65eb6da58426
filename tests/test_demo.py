"""The demo: synthetic line art, the random colorizer, its images, a run end to end."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from memscope import (
    BatchReport,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope.cli.demo import (
    IMAGES_AND_PLOT_SKIPPED,
    IMAGES_SKIPPED,
    Colorizer,
    Demo,
    _save_png,
    draw_line_art,
)

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


# Images --------------------------------------------------------------------------------


def test_png_round_trips_the_pixels(tmp_path: Path) -> None:
    """The demo's PNG writer (Pillow) stores exactly the tensor's pixels, losslessly."""
    pytest.importorskip("PIL")
    pixels = torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8, generator=torch.Generator())
    path = _save_png(tmp_path / "image.png", pixels)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert torch.equal(_pixels(path), pixels)


def test_png_writer_reads_a_non_contiguous_tensor(tmp_path: Path) -> None:
    """A permuted view is written in its logical order, not its storage order."""
    pytest.importorskip("PIL")
    planes = torch.arange(2 * 4 * 3, dtype=torch.uint8).reshape(3, 2, 4)
    pixels = planes.permute(1, 2, 0)
    assert not pixels.is_contiguous()
    assert torch.equal(_pixels(_save_png(tmp_path / "view.png", pixels)), pixels)


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


# A run end to end ----------------------------------------------------------------------


def _run(tmp_path: Path, **options: object) -> tuple[Demo, Path]:
    out = tmp_path / "out"
    demo = Demo(images=3, size=(64, 48), device="cpu", out=out, **options)  # type: ignore[arg-type]
    demo.run()
    return demo, out


def test_demo_writes_images_report_timeline_and_plot(tmp_path: Path) -> None:
    """A small run writes PNG images, a loadable JSON report, the CSV timeline and a plot."""
    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = Demo(images=3, size=(64, 48), device="cpu", out=out).run()
    assert result.folder == out
    images = sorted((out / "images").iterdir())
    assert [path.name for path in images] == [
        "colorized-0.png",
        "colorized-1.png",
        "colorized-2.png",
    ]
    assert list(result.images) == images
    assert (result.images_skipped, result.plot_skipped, result.skipped) == (None, None, None)
    for path in images:
        assert _pixels(path).shape == (48, 64, 3)
    report = BatchReport.from_json(out / "report.json")
    assert report == result.report
    assert (report.items, report.calls, report.failures, report.device) == (3, 3, 0, "cpu")
    with (out / "timeline.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0][: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert [row[0] for row in rows[1:]] == ["1", "2", "3"]
    assert result.timeline_plot == out / "timeline.png"
    with pytest.importorskip("PIL.Image").open(out / "timeline.png") as plot:
        assert plot.format == "PNG"


def test_demo_images_decode_as_colour_pictures(tmp_path: Path) -> None:
    """Each image Pillow wrote opens as an RGB PNG of the demo's size, paper coloured in."""
    image_module = pytest.importorskip("PIL.Image")
    result = Demo(images=2, size=(40, 24), device="cpu", out=tmp_path / "out").run()
    assert len(result.images) == 2
    for path in result.images:
        with image_module.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 24))
            colours = image.getcolors(maxcolors=40 * 24)
        # Line art on coloured paper: black ink and more than a handful of colours.
        assert colours is not None
        assert (0, 0, 0) in {colour for _count, colour in colours}
        assert len(colours) > 10


def test_demo_without_pillow_skips_the_images_with_one_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without Pillow the run succeeds, writes no images and says once how to get them."""
    # Hidden the way a missing install looks to `import PIL`; matplotlib needs Pillow too.
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    caplog.set_level("INFO", logger="memscope")
    result = Demo(images=3, size=(32, 32), device="cpu", out=tmp_path / "out").run()
    assert result.images == ()
    assert result.images_skipped == IMAGES_SKIPPED
    assert "pip install 'memscope[plot]'" in IMAGES_SKIPPED
    assert not (tmp_path / "out" / "images").exists()
    assert result.report.items == 3
    assert (tmp_path / "out" / "report.json").exists()
    notes = [record.getMessage() for record in caplog.records if "Pillow" in record.getMessage()]
    assert notes == [f"demo: {IMAGES_SKIPPED}"]


def test_demo_without_the_plot_extra_gives_one_note_for_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Pillow and matplotlib, one note names both and the extra that brings them."""
    for module in ("PIL", "PIL.Image", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    result = Demo(images=2, size=(16, 16), device="cpu", out=tmp_path / "out").run()
    assert (result.images, result.timeline_plot) == ((), None)
    assert result.skipped == IMAGES_AND_PLOT_SKIPPED
    assert "pip install 'memscope[plot]'" in result.skipped
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "report.json",
        "timeline.csv",
    ]


def test_demo_cleans_up_on_the_batch_cadence(tmp_path: Path) -> None:
    """One cadence: the batch cleans up every `every` images, plus its final cleanup."""
    demo, out = _run(tmp_path, every=2)
    report = BatchReport.from_json(out / "report.json")
    assert demo.every == 2
    assert report.calls == 3
    # After image 2, then the batch's exit; the decorated function adds none of its own.
    assert report.cache_clears == 2
    assert report.memory_threshold == 0.8


def test_demo_is_deterministic(tmp_path: Path) -> None:
    """The same seed writes byte-identical images."""
    Demo(images=2, size=(32, 32), device="cpu", out=tmp_path / "a", seed=5).run()
    Demo(images=2, size=(32, 32), device="cpu", out=tmp_path / "b", seed=5).run()
    for name in ("colorized-0.png", "colorized-1.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (
            tmp_path / "b" / "images" / name
        ).read_bytes()


def test_demo_without_matplotlib_skips_only_the_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib the run still succeeds and says how to get the plot."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = Demo(images=2, size=(32, 32), device="cpu", out=tmp_path / "out").run()
    assert result.timeline_plot is None
    assert result.plot_skipped is not None
    assert "pip install 'memscope[plot]'" in result.plot_skipped
    assert not (tmp_path / "out" / "timeline.png").exists()
    assert (tmp_path / "out" / "timeline.csv").exists()


def test_default_folder_is_new_and_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without out=, each run makes a new memscope-demo-<time> folder in the current one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("memscope.cli.demo.time.strftime", lambda _format: "20250101-120000")
    first = Demo(images=1, size=(16, 16), device="cpu").run()
    second = Demo(images=1, size=(16, 16), device="cpu").run()
    assert first.folder == tmp_path / "memscope-demo-20250101-120000"
    assert second.folder == tmp_path / "memscope-demo-20250101-120000-2"
    assert (first.folder / "images" / "colorized-0.png").exists()


def test_out_may_not_hold_files(tmp_path: Path) -> None:
    """An existing non-empty folder, or a file, is refused before anything is written."""
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="never overwrites"):
        Demo(out=tmp_path, device="cpu")
    with pytest.raises(InvalidArgumentError, match="not an empty folder"):
        Demo(out=tmp_path / "keep.txt", device="cpu")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_an_existing_empty_folder_is_used(tmp_path: Path) -> None:
    """An empty folder given as out= receives the files."""
    result = Demo(images=1, size=(16, 16), device="cpu", out=tmp_path).run()
    assert result.folder == tmp_path
    assert (tmp_path / "report.json").exists()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"images": 0}, InvalidArgumentError, "images must be an int >= 1"),
        ({"every": 0}, InvalidArgumentError, "every must be an int >= 1"),
        ({"size": (0, 5)}, InvalidArgumentError, "size width must be positive"),
        ({"memory_threshold": 1.5}, InvalidArgumentError, "memory_threshold"),
        ({"device": "cuda:7"}, DeviceUnavailableError, "cuda:7"),
        ({"progress": "yes"}, InvalidArgumentTypeError, "progress must be a bool"),
    ],
)
def test_bad_settings_fail_before_any_work(
    tmp_path: Path, options: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each setting is checked when the demo is made; no folder is created."""
    with pytest.raises(error, match=message):
        Demo(out=tmp_path / "out", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_demo_on_the_accelerator_records_device_figures(tmp_path: Path, accelerator: str) -> None:
    """On a real GPU the timeline carries usage and allocated memory for every image."""
    result = Demo(images=3, size=(64, 64), device=accelerator, out=tmp_path / "out").run()
    assert result.report.device.startswith(accelerator)
    assert all(entry.allocated is not None for entry in result.report.timeline)
    assert all(entry.usage > 0 for entry in result.report.timeline)
