"""The whole GPU check in one command: ``python -m benchmarks.gpu_check``.

On a machine with a GPU it runs every ``gpu``-marked test (``python -m pytest -m gpu``) and the
GPU benchmarks (``python -m benchmarks --device cuda``), and writes into a new folder:

- ``performance.md``: the section to paste into docs/performance.md: the card, the torch, CUDA
  and driver versions, the tests' outcome and the benchmark tables;
- ``check.json``: the same facts for a script, with each run's command, exit status and time;
- ``pytest.txt`` and ``benchmarks.md``: each run's full output.

It exits 0 when every run passed and the gpu tests really ran (tests that all skipped mean the
tests did not see the GPU, which fails the check). On a machine without a GPU it says so and
exits 3 before running anything. ``--device cpu`` runs the same steps on the CPU, to try the
command itself (the gpu tests then skip, which it reports); ``--pytest`` and ``--benchmarks``
replace the two runs' commands.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import memscope

NO_GPU_STATUS = 3
"""The exit status when there is no GPU to check."""

DEFAULT_PYTEST = "{python} -m pytest -m gpu -rA -p no:cacheprovider"
DEFAULT_BENCHMARKS = "{python} -m benchmarks --device {device}"
DEFAULT_TIMEOUT = 1800.0

_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


@dataclass(frozen=True)
class Run:
    """One command the check ran, and how it went."""

    name: str
    command: list[str]
    exit_status: int
    seconds: float
    output: str
    """The output's file name in the check's folder."""
    summary: str
    """One line saying how it went."""


def find_gpu() -> str | None:
    """The accelerator's device type torch sees here (``cuda``, then ``mps``), or ``None``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return None


def no_gpu_message() -> str:
    """Why there is nothing to check here, and where to run the check instead."""
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"no GPU here: torch {torch.__version__}, {build}, sees no CUDA or MPS device. Run "
        "python -m benchmarks.gpu_check on a machine with a GPU and a GPU build of torch; "
        "--device cpu tries the command itself on the CPU."
    )


def _cudnn_version() -> int | None:
    # torch leaves these two untyped; typed here, once.
    available: Callable[[], bool] = torch.backends.cudnn.is_available
    version: Callable[[], int | None] = torch.backends.cudnn.version
    return version() if available() else None


def machine(device: str) -> dict[str, Any]:
    """The card and the software the check ran on."""
    facts: dict[str, Any] = {
        "device": device,
        "cards": [],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "driver": None,
        "memscope": memscope.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            facts["cards"].append(
                {
                    "name": properties.name,
                    "memory": properties.total_memory,
                    "capability": f"{properties.major}.{properties.minor}",
                }
            )
        facts["driver"] = _nvidia_driver()
    elif device == "mps":
        facts["cards"].append({"name": f"Apple {platform.machine()} GPU (MPS)", "memory": None})
    return facts


def _nvidia_driver() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi where it is installed."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        answer = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else None


def count_outcomes(output: str) -> dict[str, int]:
    """pytest's closing counts (``3 passed, 1 skipped``), read from its output."""
    lines = [line for line in output.splitlines() if _COUNT.search(line)]
    if not lines:
        return {}
    counts: dict[str, int] = {}
    for number, outcome in _COUNT.findall(lines[-1]):
        counts["errors" if outcome == "error" else outcome] = int(number)
    return counts


def judge_tests(exit_status: int, counts: dict[str, int], device: str) -> tuple[bool, str]:
    """Whether the gpu tests passed, and one line saying so."""
    described = ", ".join(f"{number} {outcome}" for outcome, number in counts.items()) or "none"
    if exit_status != 0:
        return False, f"gpu tests failed (pytest exited {exit_status}): {described}"
    if counts.get("passed", 0) == 0:
        if device == "cpu":
            return True, f"gpu tests: {described}; on the CPU they skip, a dry run"
        return False, f"gpu tests did not run ({described}): the tests did not see the GPU"
    return True, f"gpu tests passed: {described}"


def _command(template: str, device: str) -> list[str]:
    return shlex.split(template.format(python=shlex.quote(sys.executable), device=device))


def child_environment(device: str) -> dict[str, str]:
    """The runs' environment: on ``--device cpu`` no CUDA device is visible to them, so a dry
    run on a machine with a GPU runs the same steps as on one without."""
    environment = dict(os.environ)
    if device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""
    return environment


def _run(
    name: str, command: list[str], output: Path, timeout: float, environment: dict[str, str]
) -> tuple[int, float, str]:
    """Run ``command`` with its output to the terminal and to ``output``."""
    sys.stdout.write(f"== {name}: {_shown(command)}\n")
    sys.stdout.flush()
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            env=environment,
        )
        status, text = finished.returncode, finished.stdout
    except subprocess.TimeoutExpired as error:
        partial = error.stdout if isinstance(error.stdout, str) else ""
        status, text = 124, partial + f"\n(stopped after {timeout:.0f} s)\n"
    except OSError as error:
        status, text = 127, f"could not start {command[0]!r}: {error}\n"
    seconds = time.perf_counter() - started
    output.write_text(text)
    sys.stdout.write(text)
    return status, seconds, text


def _shown(command: list[str]) -> str:
    """The command as a person types it: ``python``, not this interpreter's full path."""
    if command and command[0] == sys.executable:
        command = ["python", *command[1:]]
    return shlex.join(command)


def _card_line(facts: dict[str, Any]) -> str:
    cards = facts["cards"]
    if not cards:
        return f"the CPU ({facts['cpus']} CPUs, no GPU: a dry run)"
    names = sorted({card["name"] for card in cards})
    card = " + ".join(names)
    memory = cards[0].get("memory")
    if memory:
        card += f" ({memscope.format_bytes(memory)})"
    if len(cards) > 1:
        card = f"{len(cards)} x {card}"
    return card


def performance_section(facts: dict[str, Any], runs: list[Run], benchmarks: str) -> str:
    """The Markdown section for docs/performance.md."""
    versions = f"torch {facts['torch']}"
    if facts["cuda"]:
        versions += f", CUDA {facts['cuda']}"
    if facts["cudnn"]:
        versions += f", cuDNN {facts['cudnn']}"
    if facts["driver"]:
        versions += f", driver {facts['driver']}"
    lines = [
        f"### {_card_line(facts)}",
        "",
        f"Measured on {facts['date']} with `python -m benchmarks.gpu_check`: {versions}; "
        f"memscope {facts['memscope']}, Python {facts['python']}, {facts['cpus']} CPUs.",
        "",
    ]
    lines += [f"- {run.summary} (`{_shown(run.command)}`)" for run in runs]
    lines += ["", benchmarks.strip(), ""]
    return "\n".join(lines)


def _new_folder(parent: Path, facts: dict[str, Any]) -> Path:
    card = facts["cards"][0]["name"] if facts["cards"] else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = parent / f"gpu-check-{slug}-{stamp}"
    folder.mkdir(parents=True)
    return folder


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=(
            "Run every gpu-marked test and the GPU benchmarks, and write the results, with the "
            "card and the torch and CUDA versions, into a new folder ready for "
            "docs/performance.md."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="the folder to write into, new or empty (a new gpu-check-CARD-TIME folder here)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="the device to check (the GPU torch sees; cpu: a dry run of the command itself)",
    )
    parser.add_argument(
        "--pytest",
        default=DEFAULT_PYTEST,
        metavar="COMMAND",
        help=f"the test run ({DEFAULT_PYTEST!r}; {{python}} and {{device}} are filled in)",
    )
    parser.add_argument(
        "--benchmarks",
        default=DEFAULT_BENCHMARKS,
        metavar="COMMAND",
        help=f"the benchmark run ({DEFAULT_BENCHMARKS!r})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"the longest each run may take ({DEFAULT_TIMEOUT:.0f})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.timeout <= 0:
        parser.error(f"--timeout must be more than 0 seconds, got {arguments.timeout}")
    device = arguments.device or find_gpu()
    if device is None:
        sys.stderr.write(f"gpu_check: {no_gpu_message()}\n")
        return NO_GPU_STATUS
    if device != "cpu" and find_gpu() != device.partition(":")[0]:
        sys.stderr.write(f"gpu_check: --device {device}: {no_gpu_message()}\n")
        return NO_GPU_STATUS
    out: Path | None = arguments.out
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {str(out)!r} already exists and is not an empty folder")
    facts = machine(device)
    try:
        if out is None:
            folder = _new_folder(Path.cwd(), facts)
        else:
            folder = out
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {str(out or Path.cwd())!r} cannot be created: {error.strerror}")

    runs: list[Run] = []
    environment = child_environment(device)
    command = _command(arguments.pytest, device)
    status, seconds, text = _run(
        "gpu tests", command, folder / "pytest.txt", arguments.timeout, environment
    )
    tests_passed, summary = judge_tests(status, count_outcomes(text), device)
    runs.append(Run("gpu tests", command, status, seconds, "pytest.txt", summary))

    command = _command(arguments.benchmarks, device)
    status, seconds, text = _run(
        "benchmarks", command, folder / "benchmarks.md", arguments.timeout, environment
    )
    benchmarks_passed = status == 0
    summary = (
        f"benchmarks ran in {seconds:.0f} s"
        if benchmarks_passed
        else f"benchmarks failed (exited {status})"
    )
    runs.append(Run("benchmarks", command, status, seconds, "benchmarks.md", summary))

    (folder / "performance.md").write_text(performance_section(facts, runs, text))
    passed = tests_passed and benchmarks_passed
    check = {"passed": passed, "machine": facts, "runs": [asdict(run) for run in runs]}
    (folder / "check.json").write_text(json.dumps(check, indent=2) + "\n")
    verdict = "passed" if passed else "FAILED"
    sys.stdout.write(f"== the GPU check {verdict}: {'; '.join(run.summary for run in runs)}\n")
    sys.stdout.write(f"== wrote {folder}/: performance.md (for docs/performance.md), ")
    sys.stdout.write("check.json, pytest.txt, benchmarks.md\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
