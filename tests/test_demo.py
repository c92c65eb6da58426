"""The demo: synthetic line art, the random colorizer, the PNG writer, a run end to end."""

from __future__ import annotations

import csv
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch

from memscope import (
    BatchReport,
    DeviceUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from memscope._png import PNG_SIGNATURE, encode_png, write_png
from memscope.cli.demo import Colorizer, Demo, draw_line_art

CSV_COLUMNS = ["item", "seconds", "usage", "allocated", "reserved", "gc_ran"]


def decode_png(data: bytes) -> torch.Tensor:
    """An independent reader for the 8-bit RGB PNGs the demo writes (filters None and Sub)."""
    assert data.startswith(PNG_SIGNATURE)
    position, chunks = len(PNG_SIGNATURE), []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        position += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, colour_type) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + width * 3
    rows = []
    for row_index in range(height):
        line = raw[row_index * stride : (row_index + 1) * stride]
        filter_type, row = line[0], bytearray(line[1:])
        assert filter_type in (0, 1)
        if filter_type == 1:
            for index in range(3, len(row)):
                row[index] = (row[index] + row[index - 3]) % 256
        rows.append(list(row))
    return torch.tensor(rows, dtype=torch.uint8).reshape(height, width, 3)


# PNG -----------------------------------------------------------------------------------


def test_png_round_trips_the_pixels(tmp_path: Path) -> None:
    """write_png writes a valid PNG whose pixels are exactly the tensor's."""
    pixels = torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8, generator=torch.Generator())
    path = write_png(tmp_path / "image.png", pixels)
    assert torch.equal(decode_png(path.read_bytes()), pixels)


def test_png_refuses_what_is_not_an_rgb_uint8_image() -> None:
    """Wrong dtype is a TypeError, wrong shape a ValueError, both naming what was given."""
    with pytest.raises(InvalidArgumentTypeError, match="uint8"):
        encode_png(torch.zeros((2, 2, 3)))
    with pytest.raises(InvalidArgumentError, match=r"\(2, 2\)"):
        encode_png(torch.zeros((2, 2), dtype=torch.uint8))


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
    for path in images:
        assert decode_png(path.read_bytes()).shape == (48, 64, 3)
    report = BatchReport.from_json(out / "report.json")
    assert report == result.report
    assert (report.items, report.calls, report.failures, report.device) == (3, 3, 0, "cpu")
    with (out / "timeline.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == CSV_COLUMNS
    assert [row[0] for row in rows[1:]] == ["1", "2", "3"]
    assert result.timeline_plot == out / "timeline.png"
    assert (out / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)


def test_demo_cleans_up_through_the_decorated_function(tmp_path: Path) -> None:
    """Cleanups come from @auto_clear every `every` images, plus the batch's final one."""
    demo, out = _run(tmp_path, every=2)
    report = BatchReport.from_json(out / "report.json")
    assert demo.every == 2
    # Call 2 cleans up, then the batch's exit: the batch's own cadence never doubles it.
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
