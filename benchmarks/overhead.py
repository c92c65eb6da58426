"""memscope's own cost per item when nothing needs doing: ``python -m benchmarks overhead``.

Each mode runs a trivial item (a call of an empty function) in a loop: the bare loop,
``managed_batch`` in its cadences, with a timeline, ``@auto_clear`` outside a batch, on the CPU
and on a fake CUDA device (:class:`memscope.testing.FakeDevice`), with a realistic heap (about
365,000 objects tracked by the collector, like a loaded pipeline). It prints three tables:

- **Instructions per item**, counted by valgrind's callgrind, which gives the same count on a
  loaded machine as on an idle one. The whole benchmark runs once more as a worker process
  under ``valgrind --tool=callgrind --instr-atstart=no``: the start-up (Python, torch, the
  heap) runs uninstrumented, at a few times native speed instead of about 50 times. Around
  each measured loop the worker makes callgrind client requests through a tiny C helper,
  compiled on the spot against valgrind's ``callgrind.h``: start instrumentation and zero the
  counters before, dump the counters (one file per loop, labelled) and stop instrumentation
  after. Only the loop is counted, not its set-up or the batch's enter and exit. Each mode
  runs, in one batch after a warm-up (so the leak watch's window is full), a short and a long
  loop; per item = (long total - short total) / (long length - short length), so what every
  loop pays once (the client requests, the generator of ``batch.track``, the first item's
  lazy work) cancels. Both lengths are multiples of 80 items: the leak watch judges its
  window every 16 samples, so each loop holds whole judging periods (16 items at
  ``every=1``, 80 at ``every=5``) and the difference is the steady state's average, not
  wherever a judgement happened to fall. Before each loop ``gc.collect()`` sets the
  collector's counters to zero, so its automatic collections fall alike. Client requests
  were chosen over ``callgrind_control -i on`` because that needs vgdb's pipes, which
  containers often lack, and over ``--toggle-collect=`` on a marker function because that
  needs instrumentation from the start (minutes for torch's import under callgrind).
  Without valgrind, a C compiler or ``callgrind.h`` the table says so and is left out.
- **Wall time**: ns per item and the ratio of the bare loop's time to each mode's, from runs
  taken in turns in this process (one round runs every mode once), so the machine's drift
  hits every mode alike; the median ratio of the rounds. ``--item-us`` turns the trivial
  item into a busy wait of that many microseconds, for the ratio a real item would see.
- **Torch calls per cleanup step** on the fake CUDA device, from the fake's record of calls.

It asserts nothing: ``tests/test_benchmarks.py`` only checks that it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

import memscope
import memscope.host
from memscope import auto_clear, managed_batch
from memscope.reports import TimelineEntry
from memscope.reports._timeline import Timeline
from memscope.testing import FakeDevice, GiB

Loop = Callable[[int], None]
"""Runs ``n`` items of a mode."""

HEAP_OBJECTS = 365_000
"""Objects tracked by the collector while the modes run, as in a loaded pipeline."""

_CLIENT_REQUESTS_C = r"""
#include <valgrind/callgrind.h>
void memscope_measure_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void memscope_measure_stop(const char *label) {
    CALLGRIND_DUMP_STATS_AT(label);
    CALLGRIND_STOP_INSTRUMENTATION;
}
"""


@dataclass(frozen=True)
class Mode:
    """One way of running the trivial item, on one device."""

    name: str
    device: str
    """``cpu``, or ``cuda`` for the fake CUDA device."""
    opened: Callable[[], AbstractContextManager[Loop]]
    """Sets the mode up (enters its batch) and gives the loop to run inside."""


def trivial_item() -> None:
    """The item: an empty function, so that what a mode costs is all memscope's."""


def spinning_item(microseconds: float) -> Callable[[], None]:
    """An item that busy-waits ``microseconds``, standing in for real work."""
    seconds = microseconds / 1e6

    def item() -> None:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass

    return item


def _bare(item: Callable[[], None]) -> Callable[[], AbstractContextManager[Loop]]:
    @contextlib.contextmanager
    def opened() -> Iterator[Loop]:
        def run(items: int) -> None:
            for _ in range(items):
                item()

        yield run

    return opened


def _batch(
    item: Callable[[], None], device: str, **options: object
) -> Callable[[], AbstractContextManager[Loop]]:
    @contextlib.contextmanager
    def opened() -> Iterator[Loop]:
        with managed_batch(device, **options) as batch:  # type: ignore[arg-type]

            def run(items: int) -> None:
                for _ in batch.track(range(items)):
                    item()

            yield run

    return opened


def _decorated(item: Callable[[], None], device: str) -> Callable[[], AbstractContextManager[Loop]]:
    @contextlib.contextmanager
    def opened() -> Iterator[Loop]:
        decorated = auto_clear(device=device)(item)

        def run(items: int) -> None:
            for _ in range(items):
                decorated()

        yield run

    return opened


def _fresh_host_readings(
    opened: Callable[[], AbstractContextManager[Loop]],
) -> Callable[[], AbstractContextManager[Loop]]:
    """``opened`` with host monitors that read the host after every item (``reuse_for`` 0):
    what a timeline row costs when its item is slower than the reuse time."""

    @contextlib.contextmanager
    def fresh() -> Iterator[Loop]:
        default = memscope.host.REUSE_READING_FOR
        memscope.host.REUSE_READING_FOR = 0.0
        try:
            with opened() as loop:
                yield loop
        finally:
            memscope.host.REUSE_READING_FOR = default

    return fresh


def _timeline_appends(item: Callable[[], None]) -> Callable[[], AbstractContextManager[Loop]]:
    @contextlib.contextmanager
    def opened() -> Iterator[Loop]:
        timeline = Timeline()
        append = timeline.append

        def run(items: int) -> None:
            first = len(timeline) + 1
            for number in range(first, first + items):
                item()
                append(number, 1.5, 0.3, 1_000_000_000, 2_000_000_000, False, None)

        yield run

    return opened


def modes(item: Callable[[], None] = trivial_item) -> list[Mode]:
    """Every mode of issue 23's table, on the CPU and then on the fake CUDA device; then a CPU
    timeline whose every row reads the host afresh, and the bare loop keeping a compact
    timeline row per item (what a row costs on its own)."""
    found = [Mode("bare loop", "cpu", _bare(item))]
    for device in ("cpu", "cuda"):
        shown = '"cpu"' if device == "cpu" else '"cuda" (fake)'
        found += [
            Mode(f"managed_batch({shown}, every=None)", device, _batch(item, device, every=None)),
            Mode(f"managed_batch({shown}) defaults", device, _batch(item, device)),
            Mode(f"managed_batch({shown}, every=1)", device, _batch(item, device, every=1)),
            Mode(f"managed_batch({shown}, every=5)", device, _batch(item, device, every=5)),
            Mode(
                f"managed_batch({shown}, timeline=True)",
                device,
                _batch(item, device, timeline=True),
            ),
            Mode(
                f"@auto_clear(device={shown}) defaults, outside a batch",
                device,
                _decorated(item, device),
            ),
        ]
    found.append(
        Mode(
            'managed_batch("cpu", timeline=True), a fresh host reading every item',
            "cpu",
            _fresh_host_readings(_batch(item, "cpu", timeline=True)),
        )
    )
    # What a batch's timeline=True will pay for keeping a row, once it keeps a Timeline.
    found.append(Mode("bare loop + Timeline.append per item", "cpu", _timeline_appends(item)))
    return found


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeDevice]:
    """The fake CUDA device the ``cuda`` modes run on: 24 GiB, 30 % used, nothing to free."""
    with FakeDevice("cuda", total=24 * GiB) as fake:
        fake.set_usage(0.3)
        yield fake


@contextlib.contextmanager
def on_device(device: str) -> Iterator[FakeDevice | None]:
    if device == "cuda":
        with fake_cuda() as fake:
            yield fake
    else:
        yield None


def build_heap(objects: int) -> list[object]:
    """Enough small containers that the collector tracks about ``objects`` objects."""
    missing = max(0, objects - len(gc.get_objects()))
    # Each entry is a list holding a list: two objects the collector tracks. (A dict of
    # atomic values would not do: CPython stops tracking it.)
    return [[[index]] for index in range(missing // 2)]


# Instructions per item, under callgrind ----------------------------------------------------


class ClientRequests:
    """Callgrind's client requests, through the C helper compiled into ``folder``."""

    def __init__(self, library: Path) -> None:
        self._library = ctypes.CDLL(str(library))
        self._library.memscope_measure_stop.argtypes = [ctypes.c_char_p]

    def measure(self, label: str, loop: Loop, items: int) -> None:
        """Count the instructions of ``loop(items)`` alone, dumped under ``label``."""
        start, stop = self._library.memscope_measure_start, self._library.memscope_measure_stop
        encoded = label.encode()
        start()
        loop(items)
        stop(encoded)


def compile_client_requests(folder: Path) -> Path | str:
    """The helper library's path, or why it cannot be built here."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc) to build the callgrind client requests"
    source = folder / "memscope_callgrind.c"
    library = folder / "memscope_callgrind.so"
    source.write_text(_CLIENT_REQUESTS_C)
    built = subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        return f"could not build the callgrind client requests ({built.stderr.strip()[:200]})"
    return library


def _label(mode: Mode, items: int) -> str:
    return f"{mode.name}|{items}"


def run_worker(
    library: Path, lengths: tuple[int, int], warmup: int, heap_objects: int
) -> list[str]:
    """The worker's part, under callgrind: every mode, a short and a long measured loop.

    Returns the labels of the loops it measured, in order.
    """
    requests = ClientRequests(library)
    heap = build_heap(heap_objects)
    measured = []
    for mode in modes():
        with on_device(mode.device), mode.opened() as loop:
            loop(warmup)
            for items in lengths:
                label = _label(mode, items)
                # Both loops start with the collector's counters at zero, so its automatic
                # collections fall alike in both and their cost per item stays in.
                gc.collect()
                requests.measure(label, loop, items)
                measured.append(label)
    del heap
    return measured


def parse_dumps(folder: Path) -> dict[str, int]:
    """Instructions per dump label, from callgrind's files in ``folder``."""
    totals: dict[str, int] = {}
    for path in sorted(folder.glob("callgrind.out*")):
        text = path.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: Client Request: (.*)$", text, re.MULTILINE)
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.MULTILINE)
        if label is not None and total is not None:
            totals[label.group(1)] = int(total.group(1))
    return totals


def per_item(totals: dict[str, int], lengths: tuple[int, int]) -> dict[str, float]:
    """Instructions per item of each mode with both loops counted, in the modes' order.

    (long total - short total) / (long - short): what both loops pay once cancels.
    """
    short, long = lengths
    found: dict[str, float] = {}
    for mode in modes():
        short_total = totals.get(_label(mode, short))
        long_total = totals.get(_label(mode, long))
        if short_total is not None and long_total is not None:
            found[mode.name] = (long_total - short_total) / (long - short)
    return found


def instructions_per_item(
    lengths: tuple[int, int], warmup: int, heap_objects: int, timeout: float
) -> dict[str, float] | str:
    """Instructions per item of every mode, or why they could not be counted here."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return "valgrind is not installed: no instruction counts, wall-time ratios only"
    with tempfile.TemporaryDirectory(prefix="memscope-callgrind-") as name:
        folder = Path(name)
        library = compile_client_requests(folder)
        if isinstance(library, str):
            return f"{library}: no instruction counts, wall-time ratios only"
        root = Path(__file__).resolve().parent.parent
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(root), environment.get("PYTHONPATH")])
        )
        command = [
            valgrind,
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={folder / 'callgrind.out'}",
            sys.executable,
            "-m",
            "benchmarks.overhead",
            "--worker",
            str(library),
            "--lengths",
            *map(str, lengths),
            "--warmup",
            str(warmup),
            "--heap-objects",
            str(heap_objects),
        ]
        try:
            worker = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=environment,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"the callgrind run took over {timeout:.0f} s: no instruction counts"
        if worker.returncode != 0:
            return f"the callgrind run failed: {worker.stderr.strip()[-400:]}"
        totals = parse_dumps(folder)
    return per_item(totals, lengths)


# Wall time ---------------------------------------------------------------------------------


def wall_ratios(
    item: Callable[[], None], items: int, rounds: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """Per mode: median ns per item and median ratio of the bare loop's time to the mode's.

    One round runs every mode once, in turn, so a slow moment of the machine hits the modes
    of one round alike; each round's ratio compares the mode with that round's bare loop.
    """
    every_mode = modes(item)
    seconds: dict[str, list[float]] = {mode.name: [] for mode in every_mode}
    for _ in range(rounds):
        for mode in every_mode:
            with on_device(mode.device), mode.opened() as loop:
                loop(warmup)
                started = time.perf_counter()
                loop(items)
                seconds[mode.name].append(time.perf_counter() - started)
    bare = seconds[every_mode[0].name]
    return {
        name: (
            statistics.median(taken) / items * 1e9,
            statistics.median(base / own for base, own in zip(bare, taken, strict=True)),
        )
        for name, taken in seconds.items()
    }


# Torch calls per cleanup step --------------------------------------------------------------


def torch_calls_per_step(items: int, warmup: int) -> dict[str, tuple[float, dict[str, float]]]:
    """Per fake-CUDA mode that cleans up: torch calls per cleanup step, and by function.

    A step is a cleanup the cadence runs: every item with ``every=1``, every fifth with
    ``every=5`` (the decorator's default) ...; a mode's steps in ``items`` items are counted
    from the batch's report where there is one.
    """
    found: dict[str, tuple[float, dict[str, float]]] = {}
    for mode, every in (
        ('managed_batch("cuda" (fake), every=1)', 1),
        ('managed_batch("cuda" (fake), every=5)', 5),
        ('@auto_clear(device="cuda" (fake)) defaults, outside a batch', 5),
    ):
        with fake_cuda() as fake:
            opened = next(m for m in modes() if m.name == mode).opened
            with opened() as loop:
                loop(warmup)
                fake.calls.clear()
                loop(items)
                counted = list(fake.calls)
        steps = items // every
        by_function: dict[str, float] = {}
        for call in counted:
            by_function[call.function] = by_function.get(call.function, 0) + 1 / steps
        found[mode] = (len(counted) / steps, by_function)
    return found


# Timeline memory ---------------------------------------------------------------------------


def timeline_bytes_per_row(rows: int) -> dict[str, float]:
    """Bytes per row a timeline keeps in memory (tracemalloc), as entries and as columns.

    The rows are a CUDA batch's (usage, allocated and reserved bytes), one per item; the CPU
    keeps fewer figures. The list of entries is how the batch kept its timeline before the
    compact columns.
    """

    def kept(build: Callable[[], object]) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            built = build()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        del built
        return (after - before) / rows

    def as_entries() -> list[TimelineEntry]:
        return [
            TimelineEntry(row + 1, row * 1e-3, 0.3, 10**9 + row, 2 * 10**9 + row, row % 5 == 0)
            for row in range(rows)
        ]

    def as_columns() -> Timeline:
        timeline = Timeline()
        append = timeline.append
        for row in range(rows):
            append(row + 1, row * 1e-3, 0.3, 10**9 + row, 2 * 10**9 + row, row % 5 == 0)
        return timeline

    return {
        "list of TimelineEntry (before)": kept(as_entries),
        "Timeline (compact columns)": kept(as_columns),
    }


# Output ------------------------------------------------------------------------------------


def _print_tables(
    counts: dict[str, float] | str,
    lengths: tuple[int, int],
    wall: dict[str, tuple[float, float]],
    item_us: float,
    calls: dict[str, tuple[float, dict[str, float]]],
    timeline_rows: int,
    timeline_bytes: dict[str, float],
    tracked: int,
) -> None:
    write = sys.stdout.write
    write(f"memscope {memscope.__version__}, torch {torch.__version__}, ")
    write(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; ")
    write(f"{tracked:,} objects tracked by the collector\n\n")
    write("Instructions per item (callgrind, trivial item, ")
    write(f"difference of {lengths[0]} and {lengths[1]} items)\n\n")
    if isinstance(counts, str):
        write(f"{counts}\n")
    else:
        bare = counts.get("bare loop")
        write("| mode | instructions per item | memscope's part |\n|---|---:|---:|\n")
        for name, count in counts.items():
            part = "" if bare is None or name == "bare loop" else f"{count - bare:,.0f}"
            write(f"| {name} | {count:,.0f} | {part} |\n")
    item = "trivial item" if item_us == 0 else f"item of {item_us:g} us"
    write(f"\nWall time ({item}, rounds taken in turns, medians)\n\n")
    write("| mode | ns per item | vs bare loop |\n|---|---:|---:|\n")
    for name, (nanoseconds, ratio) in wall.items():
        write(f"| {name} | {nanoseconds:,.0f} | {ratio:.3g} |\n")
    write("\nTorch calls per cleanup step, fake CUDA device\n\n")
    write("| mode | torch calls per step | by function |\n|---|---:|---|\n")
    for name, (per_step, by_function) in calls.items():
        detail = ", ".join(f"{function} {count:g}" for function, count in by_function.items())
        write(f"| {name} | {per_step:g} | {detail} |\n")
    if timeline_bytes:
        write(f"\nTimeline in memory, {timeline_rows:,} rows of a CUDA batch (tracemalloc)\n\n")
        write("| kept as | bytes per row |\n|---|---:|\n")
        for name, per_row in timeline_bytes.items():
            write(f"| {name} | {per_row:.1f} |\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--lengths",
        type=int,
        nargs=2,
        default=(80, 160),
        metavar=("SHORT", "LONG"),
        help=(
            "the two measured loop lengths under callgrind (default 80 160: multiples of 80, "
            "the leak watch's judging period at every=5)"
        ),
    )
    parser.add_argument(
        "--warmup", type=int, default=400, help="items before each measured loop (400)"
    )
    parser.add_argument(
        "--heap-objects",
        type=int,
        default=HEAP_OBJECTS,
        help=f"objects tracked by the collector (default {HEAP_OBJECTS})",
    )
    parser.add_argument("--wall-items", type=int, default=1000, help="items per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of timed runs (5)")
    parser.add_argument(
        "--item-us", type=float, default=0.0, help="item busy-waits this long in timed runs"
    )
    parser.add_argument(
        "--timeline-rows",
        type=int,
        default=1_000_000,
        help="rows of the timeline memory measurement (1000000; 0 skips it)",
    )
    parser.add_argument("--no-callgrind", action="store_true", help="skip the instruction counts")
    parser.add_argument("--callgrind-timeout", type=float, default=600, help="seconds (600)")
    arguments = parser.parse_args(argv)
    short, long = arguments.lengths
    if not 0 < short < long:
        parser.error(f"--lengths must be two lengths, the short first, got {short} {long}")
    if arguments.worker is not None:
        run_worker(arguments.worker, (short, long), arguments.warmup, arguments.heap_objects)
        return 0
    started = time.perf_counter()
    if arguments.no_callgrind:
        counts: dict[str, float] | str = "instruction counts skipped (--no-callgrind)"
    else:
        counts = instructions_per_item(
            (short, long), arguments.warmup, arguments.heap_objects, arguments.callgrind_timeout
        )
    counted_in = time.perf_counter() - started
    heap = build_heap(arguments.heap_objects)
    tracked = len(gc.get_objects())
    item = trivial_item if arguments.item_us == 0 else spinning_item(arguments.item_us)
    wall = wall_ratios(item, arguments.wall_items, arguments.rounds, arguments.warmup)
    calls = torch_calls_per_step(max(long, 5), arguments.warmup)
    del heap
    rows = arguments.timeline_rows
    timeline_bytes = timeline_bytes_per_row(rows) if rows > 0 else {}
    _print_tables(
        counts, (short, long), wall, arguments.item_us, calls, rows, timeline_bytes, tracked
    )
    sys.stdout.write(
        f"\nThis run took {time.perf_counter() - started:.0f} s, the callgrind worker "
        f"{counted_in:.0f} s of them.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
