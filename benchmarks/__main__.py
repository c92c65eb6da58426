"""Side-by-side throughput of memory-management patterns in one process.

Run ``python -m benchmarks`` (CPU, the fake device simulating GPU pressure) or
``python -m benchmarks --device cuda`` on a GPU. Results are printed as Markdown tables, ready
for docs/performance.md. This is a benchmark, not a test: nothing here asserts a time.
``python -m benchmarks sizing`` (batch sizes on a simulated card) and
``python -m benchmarks overhead`` (memscope's own cost per item, in instructions) and
``python -m benchmarks fragmentation`` (expandable segments on a fragmented card) are other
suites.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import wrapt
from torch import nn

import memscope
from memscope import ClearAlways, ClearWhenUseful, MemoryManager, auto_clear, managed_batch
from memscope.testing import FakeDevice, GiB


@dataclass
class Scenario:
    """One way of running the loop, and what it measured."""

    name: str
    run: Callable[[int], None]
    seconds: list[float]
    peak_rss: int | None = None
    peak_reserved: int | None = None
    gc_runs: int | None = None


class Colorizer(nn.Module):
    """A small encoder-decoder that turns a line-art image into RGB, with random weights."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width * 2, width * 2, 3, padding=1),
            nn.ReLU(),
        )
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))


class PipelineObject:
    """Stands in for the many small Python objects a loaded diffusion pipeline keeps alive."""

    def __init__(self, index: int) -> None:
        self.name = f"module.{index}"
        self.config = {"index": index, "children": [index]}


def build_heap(tracked_objects: int) -> list[PipelineObject]:
    """About ``tracked_objects`` objects the cyclic collector must traverse (3 per item)."""
    return [PipelineObject(index) for index in range(tracked_objects // 3)]


def resident_bytes() -> int | None:
    """This process's resident memory now, from /proc (Linux), else None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def time_collections(count: int = 5) -> float:
    """Median milliseconds of a full gc.collect() that frees one image's worth of cycles."""
    timings = []
    for _ in range(count):
        for _ in range(200):
            node: dict[str, object] = {"payload": [0] * 8}
            node["self"] = node
        del node
        started = time.perf_counter()
        gc.collect()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def per_call_nanoseconds(function: Callable[[], None], calls: int) -> float:
    """Best-of-five nanoseconds per call of ``function``."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def measure_call_overhead(calls: int) -> dict[str, float]:
    """Per-call cost of a bare function, a functools wrapper and @auto_clear (no cleanup due)."""

    def bare() -> None:
        pass

    @functools.wraps(bare)
    def functools_wrapper() -> None:
        return bare()

    def pass_through(
        wrapped: Callable[[], None], instance: object, args: tuple[()], kwargs: dict[str, object]
    ) -> None:
        return wrapped(*args, **kwargs)

    decorated = auto_clear(every=10**12, manager=MemoryManager("cpu"))(bare)
    results = {
        "bare call": per_call_nanoseconds(bare, calls),
        "functools.wraps wrapper": per_call_nanoseconds(functools_wrapper, calls),
        "wrapt.FunctionWrapper, pass-through wrapper": per_call_nanoseconds(
            wrapt.FunctionWrapper(bare, pass_through), calls
        ),
        "@auto_clear, no cleanup due": per_call_nanoseconds(decorated, calls),
    }
    # Inside a batch the batch owns the cadence; a cadence far away measures what a call or
    # an item costs when no cleanup is due.
    with managed_batch(manager=MemoryManager("cpu"), freeze_heap=False, every=10**12) as batch:
        results["@auto_clear inside managed_batch (each call an item)"] = per_call_nanoseconds(
            decorated, calls
        )
        results["batch.step(), no cleanup due"] = per_call_nanoseconds(batch.step, calls)
        tracked = batch.track(iter(int, 1))  # an endless iterable

        def next_tracked_item() -> None:
            next(tracked)

        results["batch.track() per item, no cleanup due"] = per_call_nanoseconds(
            next_tracked_item, calls
        )

        def decorated_in_tracked_item() -> None:
            next(tracked)
            decorated()

        results["track() item + @auto_clear call inside it"] = per_call_nanoseconds(
            decorated_in_tracked_item, calls
        )
    return results


@contextlib.contextmanager
def simulated_pressure(device: str) -> Iterator[MemoryManager]:
    """A manager whose threshold GC fires at every check.

    On the CPU a fake CUDA device pinned at 90 % usage stands in for a GPU under pressure;
    on a real GPU a tiny threshold does the same. Both collect at every check (no backoff),
    which is the worst case the cadence allows.
    """
    if device == "cpu":
        with FakeDevice("cuda", total=24 * GiB) as fake:
            fake.set_usage(0.9)
            yield MemoryManager("cuda", memory_threshold=0.8)
    else:
        yield MemoryManager(device, memory_threshold=1e-9)


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["sizing"]:
        # python -m benchmarks sizing: batch sizes on a simulated card (benchmarks/sizing.py).
        from benchmarks import sizing

        return sizing.main(given[1:])
    if given[:1] == ["overhead"]:
        # python -m benchmarks overhead: memscope's own cost per item (benchmarks/overhead.py).
        from benchmarks import overhead as overhead_suite

        return overhead_suite.main(given[1:])
    if given[:1] == ["fragmentation"]:
        # python -m benchmarks fragmentation: reserved memory with and without expandable
        # segments on a card fragmented on purpose (CUDA only).
        from benchmarks import fragmentation

        return fragmentation.main(given[1:])
    if given[:1] == ["leaks"]:
        # python -m benchmarks leaks: the leak watch's false alarms and sensitivity.
        from benchmarks import leaks

        return leaks.main(given[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--items", type=int, default=40, help="images per run (default 40)")
    parser.add_argument("--size", type=int, default=192, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario, best kept")
    parser.add_argument(
        "--heap-objects",
        type=int,
        default=330_000,
        help="tracked objects to keep alive, like a loaded pipeline (default 330000)",
    )
    parser.add_argument("--calls", type=int, default=200_000, help="calls per overhead run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: steadier timings on a small, shared machine)",
    )
    arguments = parser.parse_args(argv)
    device = torch.device(arguments.device)
    torch.set_num_threads(arguments.threads)

    torch.manual_seed(0)
    model = Colorizer().to(device).eval()
    heap = build_heap(arguments.heap_objects)
    image = torch.rand(1, 1, arguments.size, arguments.size, device=device)
    tracked = len(gc.get_objects())

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def colorize_one() -> torch.Tensor:
        with torch.inference_mode():
            colorized = model(image)
        # A little per-image cyclic garbage, as real pipelines leave (callbacks, hooks).
        node: dict[str, object] = {"output": colorized}
        node["self"] = node
        return colorized

    def bare(items: int) -> None:
        for _ in range(items):
            colorize_one()
        synchronize()

    def naive(items: int) -> None:
        for _ in range(items):
            colorize_one()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        synchronize()

    decorated = auto_clear(colorize_one)

    def decorator_defaults(items: int) -> None:
        for _ in range(items):
            decorated()
        synchronize()

    def batch_under_pressure(freeze_heap: bool) -> Callable[[int], None]:
        def run(items: int) -> None:
            with (
                simulated_pressure(arguments.device) as manager,
                managed_batch(manager=manager, every=5, freeze_heap=freeze_heap) as batch,
            ):
                for _ in batch.track(range(items)):
                    colorize_one()
                synchronize()
            scenario_gc_runs[run] = batch.report.gc_runs

        return run

    scenario_gc_runs: dict[Callable[[int], None], int] = {}
    scenarios = [
        Scenario("(a) bare loop", bare, []),
        Scenario("(b) naive gc.collect() + empty_cache() per item", naive, []),
        Scenario("(c) @auto_clear, defaults", decorator_defaults, []),
        Scenario("(d) managed_batch, threshold GC every 5 items", batch_under_pressure(True), []),
        Scenario("(e) as (d) with freeze_heap=False", batch_under_pressure(False), []),
    ]
    if device.type == "cuda":

        def batch_clear_when_useful(items: int) -> None:
            with managed_batch(device, every=1, cache_policy=ClearWhenUseful()) as batch:
                for _ in batch.track(range(items)):
                    colorize_one()
                synchronize()

        def batch_clear_always(items: int) -> None:
            with managed_batch(device, every=1, cache_policy=ClearAlways()) as batch:
                for _ in batch.track(range(items)):
                    colorize_one()
                synchronize()

        scenarios += [
            Scenario("(f) managed_batch every=1, ClearAlways", batch_clear_always, []),
            Scenario("(g) managed_batch every=1, ClearWhenUseful", batch_clear_when_useful, []),
        ]

    for scenario in scenarios:  # warm-up: allocator, kernels, first-call costs
        scenario.run(2)
    for _ in range(arguments.repeats):
        # Interleaved, so that drift in the machine's speed hits every scenario alike.
        for scenario in scenarios:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rss_before = resident_bytes()
            started = time.perf_counter()
            scenario.run(arguments.items)
            scenario.seconds.append(time.perf_counter() - started)
            rss_after = resident_bytes()
            if rss_after is not None and rss_before is not None:
                scenario.peak_rss = max(scenario.peak_rss or 0, rss_after)
            if device.type == "cuda":
                scenario.peak_reserved = torch.cuda.max_memory_reserved(device)
            scenario.gc_runs = scenario_gc_runs.get(scenario.run)

    unfrozen_ms = time_collections()
    # Through a real batch, not gc.freeze(): a batch that declines to freeze (it once took
    # CPython 3.12's own frozen objects for another program's freeze) shows here.
    with managed_batch(manager=MemoryManager("cpu"), every=None):
        frozen_ms = time_collections()
    overhead = measure_call_overhead(arguments.calls)
    del heap

    write = sys.stdout.write
    write(f"memscope {memscope.__version__}, torch {torch.__version__}, ")
    write(f"Python {platform.python_version()}, {platform.machine()}, ")
    write(f"{os.cpu_count()} CPUs ({arguments.threads} torch threads), device {device}")
    if device.type == "cuda":
        write(f" ({torch.cuda.get_device_name(device)})")
    write(f"\n{tracked:,} objects tracked by the collector; {arguments.items} images of ")
    write(f"{arguments.size}x{arguments.size} per run, best of {arguments.repeats}\n\n")

    best_bare = min(scenarios[0].seconds)
    write("| scenario | images/s | vs (a) | GC runs per run | peak RSS |")
    if device.type == "cuda":
        write(" peak reserved |")
    write("\n|---|---:|---:|---:|---:|" + ("---:|" if device.type == "cuda" else "") + "\n")
    for scenario in scenarios:
        best = min(scenario.seconds)
        gc_runs = "" if scenario.gc_runs is None else str(scenario.gc_runs)
        if scenario.run is naive:
            gc_runs = str(arguments.items)
        write(
            f"| {scenario.name} | {arguments.items / best:.1f} | {best_bare / best:.3f} | "
            f"{gc_runs} | {memscope.format_bytes(scenario.peak_rss)} |"
        )
        if device.type == "cuda":
            write(f" {memscope.format_bytes(scenario.peak_reserved)} |")
        write("\n")

    write("\n| full gc.collect() | milliseconds |\n|---|---:|\n")
    write(f"| heap not frozen | {unfrozen_ms:.2f} |\n")
    write(f"| heap frozen (inside managed_batch) | {frozen_ms:.3f} |\n")

    write("\n| call | ns per call | overhead vs bare call |\n|---|---:|---:|\n")
    for name, nanoseconds in overhead.items():
        write(f"| {name} | {nanoseconds:.0f} | {nanoseconds - overhead['bare call']:.0f} ns |\n")
    if device.type == "cuda":
        # So that python -m benchmarks.gpu_check records expandable segments' table too.
        from benchmarks import fragmentation

        write("\n")
        return fragmentation.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
