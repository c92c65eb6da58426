"""Memory of a long journaled run: does it stay flat with the number of items?

Run ``python -m benchmarks.journal_memory`` (Linux: it reads ``VmRSS`` and ``VmHWM`` from
``/proc/self/status``); ``--items`` sets the run's length (default a million). Each scenario
runs in a fresh process, so its peak is its own; what is printed is the peak resident memory
above the resident memory just before the loop (the input already built), as a Markdown
table for docs/durable-runs.md:

* **journal API, keys as reached**: the calls the batch makes per item (``item_key``,
  ``Journal.reached``, ``Journal.done``) over a generator of paths;
* **managed_batch, a generator**: ``batch.track()`` of a generator of paths;
* **managed_batch, a list**: ``batch.track()`` of a list of paths (the list is the input,
  built before the baseline);
* **rerun, reading the journal**: opening the journal of the full run again (what a rerun
  holds to know what to skip: the done keys).

This is a benchmark, not a test: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SCENARIOS = {
    "journal": "journal API, keys as reached",
    "generator": "managed_batch, a generator",
    "list": "managed_batch, a list",
    "rerun": "rerun, reading the journal",
}


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _paths(count: int) -> Iterator[str]:
    return (f"line-art/{number:07}.png" for number in range(count))


def _measure(scenario: str, count: int, journal: Path) -> tuple[int, float]:
    """Peak resident bytes above the start, and seconds, of one scenario in this process."""
    from memscope import managed_batch
    from memscope.journal import Journal, item_key
    from memscope.testing import RecordingManager

    items: object = list(_paths(count)) if scenario == "list" else _paths(count)
    start = _status("VmRSS")
    began = time.perf_counter()
    if scenario == "journal":
        writer = Journal(journal, sync_every=1000)
        writer.open()
        for item in items:  # type: ignore[attr-defined]
            key = item_key(item)
            if writer.reached(key) == "new":
                writer.done(key)
        writer.close(time.perf_counter() - began)
    elif scenario == "rerun":
        writer = Journal(journal)
        writer.open()
        writer.close(0.0)
    else:
        writer = Journal(journal, sync_every=1000)
        with managed_batch(manager=RecordingManager(), journal=writer, every=None) as batch:
            for _ in batch.track(items):  # type: ignore[call-overload]
                pass
    return _status("VmHWM") - start, time.perf_counter() - began


def main(arguments: list[str] | None = None) -> int:
    """Run every scenario in a fresh process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--journal", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(arguments)
    if options.scenario:
        peak, seconds = _measure(options.scenario, options.items, options.journal)
        print(f"{peak} {seconds}")
        return 0
    print(f"{options.items:,} items\n")
    print("| scenario | peak above the start | time |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for scenario, title in SCENARIOS.items():
            journal = Path(folder) / ("full.jsonl" if scenario == "rerun" else f"{scenario}.jsonl")
            if scenario == "rerun":
                os.replace(Path(folder) / "journal.jsonl", journal)
            command = [sys.executable, "-m", "benchmarks.journal_memory", "--items"]
            command += [str(options.items), "--scenario", scenario, "--journal", str(journal)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            peak, seconds = output.split()
            print(f"| {title} | {int(peak) / 2**20:.1f} MiB | {float(seconds):.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
