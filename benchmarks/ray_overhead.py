"""Rows per second through Ray Data with and without memscope.ray, on one local cluster.

Run ``python -m benchmarks.ray_overhead`` (needs ``pip install 'memscope[ray]'``). It starts
a local Ray cluster on the loopback address (``--cpus`` logical CPUs, no dashboard) and runs
the same job (synthetic line art through the demo's small colorization network, 2 actors)
in turns as a plain ``map_batches`` class, as ``memscope.ray.managed(...)`` of it, and as
that with ``freeze_heap=False``, with no memory pressure: what is measured is what memscope
costs when it has nothing to do.

Two tables, printed as Markdown for docs/scaling.md:

* **rows/s**: rows divided by the processing window (first batch started to last batch
  ended, as the actors' own clocks say), so the actors' start-up, the same for both, is left
  out. Median and range over the runs, each run against the plain run of the same turn (the
  variants run back to back, each first in its turn), and how many full garbage
  collections Python made during the batches.
* **per batch**: inside one actor, the time of one batch called directly and through
  memscope (its ``managed_batch``, the chunk search, and the two messages to the collector),
  median over many calls, for the colorizer and for a function that does nothing (memscope's
  cost alone, free of the colorizer's noise).

This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from memscope.cli.demo import Colorizer, draw_line_art
from memscope.ray import ReportCollector, actor_device, managed


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        sys.exit("the Ray benchmark needs Ray Data: pip install 'memscope[ray]'")
    return ray


class Colorize:
    """Colorize a batch of line-art drawings (one per row id); time each batch."""

    def __init__(self, size: int) -> None:
        # One thread per actor: the actors share the machine's cores.
        torch.set_num_threads(1)
        self.size = size
        self.device = actor_device()
        self.network = Colorizer(seed=0).to(self.device).eval()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        started = time.time()
        full_collections = gc.get_stats()[2]["collections"]
        ids = batch["id"]
        with torch.inference_mode():
            line_art = torch.cat(
                [
                    draw_line_art(self.size, self.size, seed=int(seed), device=self.device)
                    for seed in ids
                ]
            )
            colours = self.network(line_art)
            means = colours.mean(dim=(1, 2, 3)).cpu().numpy()
        ended = time.time()
        # Full collections during the batch, on the first row: the sum over rows is the run's.
        full_collections = gc.get_stats()[2]["collections"] - full_collections
        return {
            "id": ids,
            "mean": means,
            "started": [started] * len(ids),
            "ended": [ended] * len(ids),
            "full_collections": [full_collections] + [0] * (len(ids) - 1),
        }


def _start_cluster(ray: Any, cpus: int) -> None:
    # Ray replaces a loopback node address with the machine's external one, and binds its
    # servers there, unless told it runs a single-machine cluster.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.wait_for_min_actors_s = 300


def _run_job(ray: Any, udf: Any, arguments: argparse.Namespace) -> tuple[float, int, int]:
    """One run of the job: rows per second over the processing window, rows, and full
    garbage collections during the batches."""
    dataset = ray.data.range(arguments.rows, override_num_blocks=arguments.blocks).map_batches(
        udf,
        fn_constructor_args=(arguments.size,),
        compute=ray.data.ActorPoolStrategy(size=arguments.actors),
        batch_size=arguments.batch_size,
        # One CPU stays free for the read tasks that feed the actors.
        num_cpus=(arguments.cpus - 1) / arguments.actors,
    )
    rows = _take_all(dataset, arguments.timeout)
    window = max(row["ended"] for row in rows) - min(row["started"] for row in rows)
    return len(rows) / window, len(rows), sum(row["full_collections"] for row in rows)


def _take_all(dataset: Any, timeout: float) -> list[dict[str, Any]]:
    """Every row of ``dataset``; exits if it takes longer than ``timeout`` seconds."""
    outcome: dict[str, Any] = {}

    def take_all() -> None:
        try:
            outcome["rows"] = dataset.take_all()
        except BaseException as error:
            outcome["error"] = error

    worker = threading.Thread(target=take_all, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise SystemExit(f"a run took longer than {timeout:g} s; stopping")
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["rows"])


class PassThrough:
    """A batch function that does nothing: what memscope costs per batch, alone."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch


def _per_batch_seconds(ray: Any, arguments: argparse.Namespace) -> dict[str, float]:
    """Inside one actor: median seconds of a batch called directly and through memscope,
    for the colorizer and for a function that does nothing."""
    collector = ReportCollector()
    functions = {
        "colorize": (Colorize, managed(Colorize, collector=collector)),
        "pass through": (PassThrough, managed(PassThrough, collector=collector)),
    }

    @ray.remote(num_cpus=1)
    class Timer:
        def measure(self, calls: int, size: int, batch_size: int) -> dict[str, float]:
            import numpy

            batch = {"id": numpy.arange(batch_size)}
            medians: dict[str, float] = {}
            for name, (plain_class, managed_class) in functions.items():
                plain, wrapped = plain_class(size), managed_class(size)
                timings: dict[str, list[float]] = {"plain": [], "memscope": []}
                for _ in range(calls):
                    # Alternating, so that drift in the machine's load falls on both alike.
                    for variant, function in (("plain", plain), ("memscope", wrapped)):
                        start = time.perf_counter()
                        function(dict(batch))
                        timings[variant].append(time.perf_counter() - start)
                for variant, values in timings.items():
                    medians[f"{name}, {variant}"] = statistics.median(values)
            return medians

    timer = Timer.remote()
    result: dict[str, float] = ray.get(
        timer.measure.remote(arguments.calls, arguments.size, arguments.batch_size)
    )
    ray.kill(timer)
    collector.close()
    return result


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[index]) for row in [headers, *rows]) for index in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_overhead", description=__doc__)
    parser.add_argument("--rows", type=int, default=1536, help="rows per run (default 1536)")
    parser.add_argument("--blocks", type=int, default=48, help="dataset blocks (default 48)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch (default 32)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--actors", type=int, default=2, help="actors (default 2)")
    parser.add_argument("--cpus", type=int, default=2, help="the cluster's CPUs (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--calls", type=int, default=30, help="batches timed per variant")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run at most")
    arguments = parser.parse_args(argv)
    ray = _import_ray()
    # Stopped from outside, the cluster is still shut down (the finally below runs).
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(f"stopped by signal {number}"))
    _start_cluster(ray, arguments.cpus)
    try:
        collector = ReportCollector()
        variants: dict[str, Callable[..., Any]] = {
            "plain map_batches class": Colorize,
            "memscope.ray.managed(...)": managed(Colorize, collector=collector),
            "managed(..., freeze_heap=False)": managed(
                Colorize, collector=collector, freeze_heap=False
            ),
        }
        throughput: dict[str, list[float]] = {name: [] for name in variants}
        collections: dict[str, list[int]] = {name: [] for name in variants}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # In turns, each variant first in its turn, so that drift in the machine's load
            # and whatever a run leaves for the next fall on every variant alike.
            for repeat in range(arguments.repeats):
                order = list(variants.items())
                shift = repeat % len(order)
                for name, udf in order[shift:] + order[:shift]:
                    rows_per_second, rows, full = _run_job(ray, udf, arguments)
                    throughput[name].append(rows_per_second)
                    collections[name].append(full)
                    print(
                        f"run {repeat + 1}/{arguments.repeats}: {name}: {rows} rows, "
                        f"{rows_per_second:.1f} rows/s",
                        file=sys.stderr,
                    )
            per_batch = _per_batch_seconds(ray, arguments)
        job_report = collector.report()
        collector.close()
    finally:
        ray.shutdown()

    print(
        f"Ray {ray.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores; {arguments.actors} actors on a {arguments.cpus}-CPU local "
        f"cluster; {arguments.rows} rows of {arguments.size}x{arguments.size} line art in "
        f"batches of {arguments.batch_size}; CPU, no memory pressure.\n"
    )
    plain = throughput["plain map_batches class"]
    rows = []
    for name, values in throughput.items():
        # Each run against the plain run of the same repeat: load that drifts over the
        # benchmark falls on both runs of a pair alike.
        ratios = [value / baseline - 1 for value, baseline in zip(values, plain, strict=True)]
        rows.append(
            [
                name,
                f"{statistics.median(values):.1f}",
                f"{min(values):.1f} to {max(values):.1f}",
                f"{statistics.median(ratios) * 100:+.1f} %",
                f"{min(ratios) * 100:+.1f} to {max(ratios) * 100:+.1f} %",
                f"{statistics.median(collections[name]):.0f}",
            ]
        )
    headers = ["variant", "rows/s (median)", "range", "vs plain (median)", "vs plain (range)"]
    print(_table([*headers, "full GCs in batches (median)"], rows))
    print()
    per_batch_rows = []
    for name in ("colorize", "pass through"):
        plain_seconds = per_batch[f"{name}, plain"]
        managed_seconds = per_batch[f"{name}, memscope"]
        per_batch_rows.append(
            [
                name,
                f"{plain_seconds * 1000:.2f} ms",
                f"{managed_seconds * 1000:.2f} ms",
                f"{(managed_seconds - plain_seconds) * 1000:+.2f} ms",
            ]
        )
    print(
        _table(
            ["one batch, inside an actor", "called directly", "through memscope", "difference"],
            per_batch_rows,
        )
    )
    print()
    print("The managed runs' report:\n")
    print(job_report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
