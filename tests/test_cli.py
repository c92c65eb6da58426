"""The ``memscope`` command: the overview, ``info``, ``estimate`` and ``demo``."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from memscope import BatchReport, ImageMemoryModel, format_bytes
from memscope.cli._command import main
from memscope.cli._demo_command import DEMO_OPTIONS
from memscope.cli._info import (
    ESTIMATE_OPTIONS,
    HOST_FIGURES_MISSING,
    INFO_DEVICE_FIGURES,
    describe_model,
)
from memscope.cli._options import as_typed, counted
from memscope.cli.demo import IMAGES_AND_PLOT_SKIPPED, WITH_CLEANUP, WITHOUT_CLEANUP
from memscope.journal import Journal
from memscope.testing import FakeDevice, FakeHost, GiB, MiB

# The command in a child process sees a CPU-only machine, as the tests here do.
CPU_ONLY_ENVIRONMENT = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _run_module(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memscope", *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=cwd,
        env=CPU_ONLY_ENVIRONMENT,
    )


# The command itself --------------------------------------------------------------------


def test_main_job_prints_device_and_example_estimates() -> None:
    """Without a command it runs as a module and prints the device and three estimates."""
    result = _run_module()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "device: " in out
    assert "512x512:    23,887,872 bytes (22.8 MiB)" in out
    assert "1024x1024:    95,551,488 bytes (91.1 MiB)" in out
    assert "2048x2048:   382,205,952 bytes (364.5 MiB)" in out


def test_explicit_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """``--device cpu`` inspects the CPU."""
    assert main(["--device", "cpu"]) == 0
    assert "device: cpu" in capsys.readouterr().out


def test_console_script_is_declared() -> None:
    """Installing the package installs a ``memscope`` command that runs cli.main."""
    (entry_point,) = importlib.metadata.entry_points(group="console_scripts", name="memscope")
    assert entry_point.value == "memscope.cli:main"


@pytest.mark.parametrize(
    "arguments", [[], ["info"], ["estimate"], ["demo"], ["report"], ["calibrate"]]
)
def test_help_describes_each_command(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--help`` exits 0 with a usage line, at the top and for every command."""
    with pytest.raises(SystemExit) as exited:
        main([*arguments, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: memscope {' '.join(arguments)}".rstrip())
    if not arguments:
        assert all(
            command in out for command in ("info", "estimate", "demo", "report", "calibrate")
        )


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--device", "gpu"], "--device 'gpu' is not a device torch knows"),
        (["bogus"], "'bogus'"),
        (["info", "--jsn"], "--jsn"),
        (["info", "--device", "cuda:3"], "--device 'cuda:3' is not available"),
        (["--device", "cpu", "info", "--device", "meta"], "--device given twice"),
        (["--device", "cpu", "estimate", "512"], "--device does not apply to estimate"),
        (["--device", "cpu", "report", "run.jsonl"], "--device does not apply to report"),
        (["estimate"], "SIZE"),
        (["estimate", "10x"], "'10x'"),
        (["estimate", "0x5"], "'0x5'"),
        (["estimate", "-5x5"], "'-5x5': sides must be positive"),
        (["estimate", "--", "-5x5"], "'-5x5': sides must be positive"),
        (["estimate", "512", "-5"], "'-5': sides must be positive"),
        (["estimate", "abc"], "'abc'"),
        (["estimate", "512", "--dtype", "int8"], "'int8'"),
        (["estimate", "512", "--references", "-1"], "--references must be an int >= 0"),
        (["estimate", "512", "--overhead", "0"], "--overhead must be a finite number > 0"),
        (["estimate", "512", "--channels", "0"], "--channels must be an int >= 1"),
        (["estimate", "512", "--latent-channels", "-1"], "--latent-channels must be"),
        (["estimate", "512", "--latent-downscale", "0"], "--latent-downscale must be"),
        (["estimate", "512", "--activation-factor", "-1"], "--activation-factor must be"),
        (["estimate", "512", "--reference-scale", "0"], "--reference-scale must be"),
        (["demo", "--device", "gpu"], "--device 'gpu'"),
        (["demo", "--device", "cuda:3"], "--device 'cuda:3'"),
        (["--device", "cuda:3", "demo"], "--device 'cuda:3'"),
        (["--device", "cuda:3", "calibrate"], "--device 'cuda:3' is not available"),
        (["demo", "--threshold", "1.5"], "--threshold must be between 0 and 1"),
        (["demo", "--threshold", "high"], "'high'"),
        (["demo", "--images", "0"], "--images must be an int >= 1, got 0"),
        (["demo", "--images", "100000000"], "use fewer or smaller images"),
        (["demo", "--size", "64x"], "'64x'"),
        (["demo", "--every", "0"], "--every must be an int >= 1, got 0"),
        (["demo", "--seed", "-1"], "--seed must be an int >= 0, got -1"),
        (["demo", "--out", "/dev/null"], "--out '/dev/null' already exists"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    arguments: list[str],
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad argument, memscope's complaints included, exits 2 with one line naming it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("memscope")
    assert "error: " in lines[0]
    assert named in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["/proc/nonexistent", "{tmp}/file/folder"])
def test_demo_refuses_an_unusable_output_folder_before_any_work(out: str, tmp_path: Path) -> None:
    """An output folder that cannot be made is one line and exit 2, before any image."""
    if out.startswith("/proc") and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    (tmp_path / "file").write_text("")
    folder = out.format(tmp=tmp_path)
    result = _run_module("demo", "--out", folder)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"memscope demo: error: --out {folder!r} cannot be created: "
        f"{'No such file or directory' if out.startswith('/proc') else 'Not a directory'} "
        "(see 'memscope demo --help')"
    ]


@pytest.mark.parametrize(
    ("options", "field"),
    [(DEMO_OPTIONS, name) for name in DEMO_OPTIONS]
    + [(ESTIMATE_OPTIONS, name) for name in ESTIMATE_OPTIONS],
)
def test_every_parameter_is_named_as_its_option(options: dict[str, str], field: str) -> None:
    """A message that starts with a parameter's name starts with its option instead."""
    assert as_typed(f"{field} must be an int >= 1, got 0", options) == (
        f"{options[field]} must be an int >= 1, got 0"
    )
    assert as_typed(f"the {field} is fine", options) == f"the {field} is fine"


def test_counts_read_right_in_the_singular_and_the_plural() -> None:
    """1 image, 2 images, 0 images: counts agree with their nouns."""
    assert [counted(number, "image") for number in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert counted(1, "reference image") == "1 reference image"


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """When the reader leaves early (``| head``), the command exits without a traceback."""
    sizes = [str(side) for side in range(16, 16 + 4000)]
    with subprocess.Popen(
        [sys.executable, "-m", "memscope", "estimate", *sizes],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CPU_ONLY_ENVIRONMENT,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline().startswith(b"estimated memory per image")
        process.stdout.close()
        errors = process.stderr.read()
        assert process.wait(timeout=120) == 141
    assert b"Traceback" not in errors
    assert errors == b""


# info ----------------------------------------------------------------------------------


def test_info_lists_the_cpu_and_versions(capsys: pytest.CaptureFixture[str]) -> None:
    """``info`` prints torch's and CUDA's versions and a row per device."""
    assert main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"torch {torch.__version__}" in out[0]
    assert f"CUDA {torch.version.cuda or 'n/a'}" in out[0]
    assert out[1].split() == ["device", *INFO_DEVICE_FIGURES]
    assert out[-3].split() == ["cpu", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"]
    assert out[-2] == "n/a: the device reports no memory figures"
    assert out[-1].startswith("host memory (this process): ")


def test_info_labels_resident_peak_and_limit_as_host_memory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``info`` shows the process's resident, peak and limit as host memory; JSON agrees."""
    monkeypatch.setattr("memscope.cli._info._peak_resident_bytes", lambda: 3584 * MiB)
    with FakeHost(resident=3 * GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB):
        assert main(["info"]) == 0
        text = capsys.readouterr().out.splitlines()[-1]
        assert main(["info", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    assert text.startswith(
        "host memory (this process): resident 3.0 GiB, peak 3.5 GiB, limit 4.0 GiB (cgroup "
    )
    host = data["host"]
    assert (host["resident"], host["peak"], host["limit"]) == (3 * GiB, 3584 * MiB, 4 * GiB)
    assert host["limit_source"].startswith("cgroup memory.max in ")
    assert text.endswith(f"({host['limit_source']})")


def test_info_reads_this_process_through_psutil(capsys: pytest.CaptureFixture[str]) -> None:
    """With psutil, the figures are this process's: resident <= peak, a limit within the RAM."""
    psutil = pytest.importorskip("psutil")
    assert main(["info"]) == 0
    text = capsys.readouterr().out.splitlines()[-1]
    assert main(["info", "--json"]) == 0
    captured = capsys.readouterr()
    host = json.loads(captured.out)["host"]
    assert captured.err == ""
    assert 0 < host["resident"] <= host["peak"]
    assert host["resident"] < host["limit"] <= psutil.virtual_memory().total
    assert text.startswith("host memory (this process): resident ")
    assert text.endswith(f"limit {format_bytes(host['limit'])} ({host['limit_source']})")


def test_info_without_host_figures_says_once_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without psutil nor /proc: the text says n/a and how to get figures; JSON has nulls."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr("memscope.host.PROC_ROOT", tmp_path / "no-proc")
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.count("memscope[host]") == 1
    assert text.splitlines()[-1] == f"host memory (this process): n/a: {HOST_FIGURES_MISSING}"
    assert main(["info", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["host"] == {
        "resident": None,
        "peak": None,
        "limit": None,
        "limit_source": None,
    }
    assert captured.err.splitlines() == [
        f"memscope info: no host memory figures: {HOST_FIGURES_MISSING}"
    ]


def test_info_shows_every_gpu_with_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """Every device torch sees gets a row: usage, used, free, total, allocated, reserved."""
    with FakeDevice("cuda", device_count=2, total=8 * GiB) as fake:
        fake.set_memory(1, allocated=2 * GiB, reserved=3 * GiB)
        assert main(["info"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) >= {"cuda:0", "cuda:1", "cpu"}
    # 3 GiB reserved, 2 GiB of it live: usage and used count the live 2 GiB of 8; the
    # driver's free memory leaves the reserved 3 GiB out.
    assert rows["cuda:1"].split() == [
        *("cuda:1", "25.0%"),
        *("2.0", "GiB", "5.0", "GiB", "8.0", "GiB"),
        *("2.0", "GiB", "3.0", "GiB"),
    ]


@pytest.mark.parametrize("position", ["before", "after", "both"])
def test_info_device_may_come_before_or_after_the_command(
    position: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``memscope --device cuda:1 info`` and ``memscope info --device cuda:1`` agree."""
    arguments = {
        "before": ["--device", "cuda:1", "info"],
        "after": ["info", "--device", "cuda:1"],
        "both": ["--device", "cuda:1", "info", "--device", "cuda:1"],
    }[position]
    with FakeDevice("cuda", device_count=2, total=8 * GiB):
        assert main(arguments) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:-1]] == ["cuda:1"]


def test_info_text_and_json_state_the_same_facts(capsys: pytest.CaptureFixture[str]) -> None:
    """Each table cell is the JSON's figure, formatted; n/a in the text is null in JSON."""
    # Fixed host figures: the two runs of the command must see the same ones.
    with (
        FakeHost(resident=3 * GiB, physical_memory=64 * GiB),
        FakeDevice("cuda", device_count=2, total=8 * GiB) as fake,
    ):
        fake.set_memory(0, allocated=1 * GiB, reserved=3 * GiB, other_processes=2 * GiB)
        assert main(["info"]) == 0
        text = capsys.readouterr().out.splitlines()
        assert main(["info", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    header, columns, *rows = text
    assert header == (
        f"memscope {data['memscope']}, torch {data['torch']}, CUDA {data['cuda'] or 'n/a'}"
    )
    assert columns.split() == ["device", *INFO_DEVICE_FIGURES]
    assert [device["device"] for device in data["devices"]] == [row.split()[0] for row in rows[:3]]
    for device, row in zip(data["devices"], rows, strict=False):
        assert set(device) == {"device", *INFO_DEVICE_FIGURES}
        usage = "n/a" if device["usage"] is None else f"{device['usage']:.1%}"
        cells = [usage, *(format_bytes(device[name]) for name in INFO_DEVICE_FIGURES[1:])]
        assert row.split() == [device["device"], *" ".join(cells).split()]
    host = data["host"]
    assert rows[-1] == (
        f"host memory (this process): resident {format_bytes(host['resident'])}, "
        f"peak {format_bytes(host['peak'])}, limit {format_bytes(host['limit'])} "
        f"({host['limit_source']})"
    )


def test_info_json_is_valid_and_complete(capsys: pytest.CaptureFixture[str]) -> None:
    """``info --json`` prints one JSON object with the versions and every device's figures."""
    with FakeDevice("cuda", device_count=2, total=8 * GiB) as fake:
        fake.set_memory(0, allocated=1 * GiB, reserved=1 * GiB)
        assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["torch"] == torch.__version__
    assert data["cuda"] == torch.version.cuda
    devices = {device["device"]: device for device in data["devices"]}
    assert list(devices)[:2] == ["cuda:0", "cuda:1"]
    assert "cpu" in devices
    assert devices["cuda:0"]["total"] == 8 * GiB
    assert devices["cuda:0"]["used"] == 1 * GiB
    assert devices["cuda:0"]["allocated"] == 1 * GiB
    assert devices["cuda:0"]["usage"] == 0.125
    # The table says n/a for the CPU's usage; JSON says null, not 0.0.
    assert (devices["cpu"]["total"], devices["cpu"]["usage"]) == (None, None)


# estimate ------------------------------------------------------------------------------


def test_estimate_prints_a_row_per_size(capsys: pytest.CaptureFixture[str]) -> None:
    """``estimate`` prints the default model's figure for each size; one side means square."""
    assert main(["estimate", "1024x1024", "512", "640x480"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "estimated memory per image, by the estimation model (ImageMemoryModel):"
    assert lines[1:5] == describe_model(ImageMemoryModel())
    assert lines[5].split() == ["size", "pixels", "bytes", "memory"]
    assert lines[6].split() == ["1024x1024", "1,048,576", "95,551,488", "91.1", "MiB"]
    assert lines[7].split()[:3] == ["512x512", "262,144", "23,887,872"]
    assert lines[8].split()[2] == f"{ImageMemoryModel().estimate((640, 480)):,}"


def test_estimate_states_the_assumptions_in_short_lines() -> None:
    """The model's fields read as a few short lines, not a repr; numbers agree with nouns."""
    default = describe_model(ImageMemoryModel())
    assert default == [
        "  tensors: float32 (4 bytes per element), 3 image channels",
        "  references: 4 reference images per image, at 1x the image's sides",
        "  latent: 4 channels at 1/8 of the image's sides; activations 2x the latent",
        "  overhead: 1.5x the sum",
    ]
    custom = describe_model(
        ImageMemoryModel(references=1, bytes_per_element=2, channels=1, reference_scale=0.5)
    )
    assert custom[0] == "  tensors: float16 or bfloat16 (2 bytes per element), 1 image channel"
    assert custom[1] == "  references: 1 reference image per image, at 0.5x the image's sides"
    assert all(len(line) <= 80 for line in default + custom)


def test_estimate_options_change_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    """--references, --dtype, --reference-scale and the rest set the model's fields."""
    arguments = [
        "estimate",
        "1024x768",
        "--references",
        "12",
        "--dtype",
        "bfloat16",
        "--reference-scale",
        "0.5",
        "--channels",
        "4",
        "--latent-channels",
        "16",
        "--latent-downscale",
        "16",
        "--activation-factor",
        "3",
        "--overhead",
        "1.2",
        "--json",
    ]
    assert main(arguments) == 0
    data = json.loads(capsys.readouterr().out)
    model = ImageMemoryModel(
        references=12,
        bytes_per_element=2,
        reference_scale=0.5,
        channels=4,
        latent_channels=16,
        latent_downscale=16,
        activation_factor=3.0,
        overhead=1.2,
    )
    assert data["estimates"] == [
        {"width": 1024, "height": 768, "bytes": model.estimate((1024, 768))}
    ]
    assert data["model"]["bytes_per_element"] == 2
    assert data["model"]["references"] == 12


@pytest.mark.parametrize(("dtype", "bytes_per_element"), [("float16", 2), ("float32", 4)])
def test_estimate_dtype_sets_the_element_size(
    dtype: str, bytes_per_element: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dtype float16 halves the element size of float32."""
    assert main(["estimate", "512", "--dtype", dtype, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = ImageMemoryModel(bytes_per_element=bytes_per_element).estimate((512, 512))
    assert data["estimates"][0]["bytes"] == expected


# demo ----------------------------------------------------------------------------------


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``demo`` prints both runs' reports and writes their files and the comparison plot."""
    image_module = pytest.importorskip("PIL.Image")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    arguments = ["demo", "--images", "3", "--size", "64", "--out", str(out), "--no-progress"]
    assert main([*arguments, "--device", "cpu", "--every", "2", "--threshold", "0.9"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("colorizing 3 synthetic line-art images of 64x64 on cpu, twice")
    assert "managed_batch(every=2, budget=...) cleans up after every 2 images" in printed
    assert "GC at 90% of the budget" in printed
    for run in (WITHOUT_CLEANUP, WITH_CLEANUP):
        report = BatchReport.from_json(out / run / "report.json")
        assert report.items == 3
        assert report.memory_threshold == 0.9
        label = run.replace("-", " ") + ":"
        head, *details = report.lines()
        start = lines.index(f"{label} {head}")
        assert lines[start + 1 : start + 1 + len(details)] == details
        with (out / run / "timeline.csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        assert [row["item"] for row in rows] == ["1", "2", "3"]
        images = sorted((out / run / "images").glob("*.png"))
        assert len(images) == 3
        with image_module.open(images[0]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
        assert any(line.startswith(f"  {run}/") and "3 colorized images" in line for line in lines)
    assert "budget" in BatchReport.from_json(out / WITH_CLEANUP / "report.json").summary()
    with image_module.open(out / "timeline.png") as plot:
        assert plot.format == "PNG"
    assert f"wrote to {out}/:" in lines
    assert "skipped" not in printed


def test_an_interrupted_demo_removes_its_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during the demo removes what it wrote, says so in one line, exits 130, and the
    same command then runs (the folder is no longer refused as not empty)."""
    from memscope.cli import demo as demo_module

    out = tmp_path / "out"
    arguments = ["demo", "--images", "2", "--size", "32", "--out", str(out), "--no-progress"]
    real_run = demo_module.Demo._run
    runs = []

    def interrupted_second_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        if len(runs) == 2:
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(demo_module.Demo, "_run", interrupted_second_run)
    assert main([*arguments, "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert err == f"memscope demo: interrupted; removed its partial output in {out}\n"
    assert not out.exists()
    monkeypatch.setattr(demo_module.Demo, "_run", real_run)
    assert main([*arguments, "--device", "cpu"]) == 0
    assert (out / WITH_CLEANUP / "report.json").is_file()


def test_an_interrupted_demo_empties_a_folder_it_was_given(tmp_path: Path) -> None:
    """Given an existing empty folder, an interrupted demo empties it and keeps the folder."""
    from memscope.cli import demo as demo_module

    out = tmp_path / "given"
    out.mkdir()
    demo = demo_module.Demo(images=1, size=(32, 32), device="cpu", out=out)

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        (out / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    demo._run_in = interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        demo.run()
    assert out.is_dir()
    assert list(out.iterdir()) == []
    assert demo.removed_output == out


def test_demo_of_one_image_says_image_not_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Counts of one read in the singular wherever the demo prints them."""
    pytest.importorskip("PIL")
    out = tmp_path / "out"
    arguments = ["demo", "--images", "1", "--every", "1", "--size", "16", "--no-progress"]
    assert main([*arguments, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "colorizing 1 synthetic line-art image of 16x16" in printed
    assert "cleans up after every image;" in printed
    assert "(1 colorized image, PNG)" in printed
    assert "cpu: 1 item in " in printed
    assert " 1 images" not in printed
    assert "1 cache clears" not in printed


def test_demo_shows_a_progress_bar_with_tqdm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With tqdm installed, the demo draws a progress bar (on stderr)."""
    pytest.importorskip("tqdm")
    assert main(["demo", "--images", "2", "--size", "32", "--out", str(tmp_path / "o")]) == 0
    assert "2/2" in capsys.readouterr().err


def test_demo_without_tqdm_or_matplotlib_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the optional packages: one note each, no bar, no plot, exit 0."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "out"
    assert main(["demo", "--images", "2", "--size", "32", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "memscope demo: no progress bar: tqdm is not installed (pip install 'memscope[progress]')"
    ]
    assert "(skipped: the timeline plot needs matplotlib" in captured.out
    assert "pip install 'memscope[plot]'" in captured.out
    assert (out / WITH_CLEANUP / "timeline.csv").exists()
    assert not (out / "timeline.png").exists()


def test_demo_without_pillow_writes_no_images_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without Pillow (nor matplotlib, which needs it) one line says what was skipped."""
    for module in ("PIL", "PIL.Image", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "out"
    assert main(["demo", "--images", "2", "--size", "32", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("pip install 'memscope[plot]'") == 1
    assert f"  (skipped: {IMAGES_AND_PLOT_SKIPPED})" in printed.splitlines()
    assert "images/ (" not in printed
    assert sorted(path.name for path in out.iterdir()) == [WITH_CLEANUP, WITHOUT_CLEANUP]
    for run in (WITHOUT_CLEANUP, WITH_CLEANUP):
        assert sorted(path.name for path in (out / run).iterdir()) == [
            "report.json",
            "timeline.csv",
        ]


def test_demo_refuses_a_folder_with_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming a folder that holds files exits 2 and leaves the files alone."""
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--out", str(tmp_path)])
    assert exited.value.code == 2
    assert "never overwrites" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_demo_as_a_module_makes_a_new_folder_here(tmp_path: Path) -> None:
    """``python -m memscope demo`` writes into a new memscope-demo-* folder in the cwd."""
    result = _run_module("demo", "--images", "2", "--size", "32", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("memscope-demo-")
    assert (folder / WITH_CLEANUP / "report.json").exists()
    assert len(list((folder / WITHOUT_CLEANUP / "images").iterdir())) == 2


# report --------------------------------------------------------------------------------


def _journal(path: Path) -> Path:
    """A journal of three items, the second of which failed."""
    from memscope import managed_batch

    def colorize(name: str) -> str:
        if name == "b.png":
            raise ValueError("corrupt image")
        return name

    with managed_batch("cpu", journal=Journal(path, job="colorize-v1")) as batch:
        list(batch.map(colorize, ["a.png", "b.png", "c.png"], on_error="skip"))
    return path


def test_report_summarises_a_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``memscope report JOURNAL`` prints the done and failed items; --json the same facts."""
    journal = _journal(tmp_path / "run.jsonl")
    assert main(["report", str(journal)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{journal} (job colorize-v1): 2 done, 1 failed, 1 run, ")
    assert lines[1] == "  failed 'b.png': ValueError: corrupt image"
    assert main(["report", str(journal), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["done"], data["failed"], data["runs"]) == (2, 1, 1)
    assert data["failures"][0]["key"] == "b.png"


def test_report_of_a_missing_journal_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal that is not there: one line on stderr, status 2, nothing on stdout."""
    assert main(["report", str(tmp_path / "none.jsonl")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("memscope report: ")
