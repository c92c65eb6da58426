"""The leak watch's false alarms and sensitivity, on seeded shapes of memory: the docs' table.

Run ``python -m benchmarks leaks`` (``--seeds N`` for fewer or more runs per shape). Prints a
Markdown table, ready for docs/leaks.md, and the watch's cost in operations per sample. This
is a benchmark, not a test: nothing here asserts anything; tests/test_leak_rule.py pins the
same shapes at the targets of issue 24.

Each shape drives :class:`memscope.leaks.LeakWatch` directly, one sample per item, as a batch
with ``every=1`` does. Where a shape says *collected*, the simulated batch collects garbage
only when its threshold says so (80 % of the device) or when the watch asks
(:attr:`~memscope.leaks.LeakWatch.wants_collection`), and tells the watch which samples
followed a collection; the other shapes give every sample as a floor.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from memscope.leaks import LeakWatch
from memscope.testing import GiB, MiB

Series = Callable[[random.Random], Iterator[float]]
"""A shape: given a seeded generator, the memory (bytes) after each item's cleanup."""


@dataclass(frozen=True)
class Shape:
    """One row of the table: memory of a shape on a device of ``capacity`` bytes."""

    name: str
    capacity: int
    series: Series
    leak_rate: float | None = None
    """Bytes per item the shape leaks, or ``None`` where it leaks nothing."""
    garbage: Series | None = None
    """Garbage each item leaves in reference cycles, freed only by a collection."""
    collect_every: int | None = None
    """Items between the collections the batch's own cleanups make, besides the threshold's."""


@dataclass(frozen=True)
class Outcome:
    """What the watch said over one run of a shape."""

    warnings: int
    named_at: int | None
    rate: float | None
    cleared: bool
    collections: int


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def run(shape: Shape, seed: int) -> Outcome:
    """Feed one seeded run of ``shape`` to a fresh watch; count its warnings."""
    noise = random.Random(seed)
    watch = LeakWatch("cuda:0", capacity=shape.capacity, search_suspects=False)
    counter = _Count()
    logger = logging.getLogger("memscope")
    logger.addHandler(counter)
    named_at = rate = None
    garbage = 0.0
    collections = 0
    extra = shape.garbage(random.Random(seed + 1)) if shape.garbage is not None else None
    try:
        for item, held in enumerate(shape.series(noise), start=1):
            collected: bool | None = None
            if extra is not None:
                garbage += next(extra)
                collected = (
                    watch.wants_collection
                    or held + garbage > 0.8 * shape.capacity
                    or (shape.collect_every is not None and item % shape.collect_every == 0)
                )
                if collected:
                    garbage = 0.0
                    collections += 1
            finding = watch.observe(item, max(0, round(held + garbage)), collected=collected)
            if finding is not None and named_at is None:
                named_at, rate = item, finding.growth_per_item
    finally:
        logger.removeHandler(counter)
    finding = watch.finding
    return Outcome(
        warnings=counter.count,
        named_at=named_at,
        rate=rate,
        cleared=finding is not None and not finding.active,
        collections=collections,
    )


# The shapes --------------------------------------------------------------------------------


def wandering(phi: float, items: int = 1000) -> Series:
    """An autocorrelated level: ``v = phi * v + gauss(0, 5 MiB)`` around 2 GiB."""

    def series(noise: random.Random) -> Iterator[float]:
        level = noise.gauss(0, 5 * MiB / math.sqrt(1 - phi * phi))
        for _ in range(items):
            level = phi * level + noise.gauss(0, 5 * MiB)
            yield 2 * GiB + level

    return series


def wave(period: int, items: int = 300, peak_to_peak: int = 500 * MiB) -> Series:
    """A sine of ``peak_to_peak`` (500 MiB) around 2 GiB at a random phase, plus 5 MiB of
    jitter."""

    def series(noise: random.Random) -> Iterator[float]:
        phase = noise.uniform(0, 2 * math.pi)
        for item in range(items):
            angle = 2 * math.pi * item / period + phase
            yield 2 * GiB + peak_to_peak / 2 * math.sin(angle) + noise.gauss(0, 5 * MiB)

    return series


def sawtooth(period: int, items: int = 1000) -> Series:
    """A cache of up to 500 MiB the code fills and empties itself every ``period`` items."""

    def series(noise: random.Random) -> Iterator[float]:
        offset = noise.randrange(period)
        for item in range(items):
            yield 2 * GiB + 500 * MiB * ((item + offset) % period) / period + noise.gauss(0, MiB)

    return series


def flat(items: int, level: int = 2 * GiB) -> Series:
    """A steady level with 1 MiB of jitter: the memory a healthy loop keeps."""

    def series(noise: random.Random) -> Iterator[float]:
        for _ in range(items):
            yield level + noise.gauss(0, MiB)

    return series


def cycles(per_item: float) -> Series:
    """Garbage in reference cycles: ``per_item`` bytes each item that only a collection frees."""

    def series(noise: random.Random) -> Iterator[float]:
        while True:
            yield per_item

    return series


def leaking(rate: float, items: int, jitter: float, uniform: bool = False) -> Series:
    """``rate`` bytes per item that stay, from 1 GiB, plus normal (or uniform) jitter."""

    def series(noise: random.Random) -> Iterator[float]:
        for item in range(1, items + 1):
            spread = noise.uniform(-jitter, jitter) if uniform else noise.gauss(0, jitter)
            yield GiB + rate * item + spread

    return series


def _sawtooth_garbage(period: int) -> Series:
    """500 MiB of garbage over ``period`` items that memscope's collection every ``period``
    items frees (a cache flushed by the batch's cleanups)."""

    def series(noise: random.Random) -> Iterator[float]:
        while True:
            yield 500 * MiB / period

    return series


SHAPES: tuple[Shape, ...] = (
    Shape("1. wandering, phi 0.99, 8 GiB, 1,000 items", 8 * GiB, wandering(0.99)),
    Shape("1. wandering, phi 0.97, 24 GiB, 1,000 items", 24 * GiB, wandering(0.97)),
    Shape("1. wandering, phi 0.95, 8 GiB, 1,000 items", 8 * GiB, wandering(0.95)),
    Shape("1. wandering, phi 0.9, 8 GiB, 1,000 items", 8 * GiB, wandering(0.9)),
    Shape("2. sine 500 MiB, period 20, 8 GiB, 300 items", 8 * GiB, wave(20)),
    Shape("2. sine 500 MiB, period 50, 8 GiB, 300 items", 8 * GiB, wave(50)),
    Shape("2. sine 500 MiB, period 100, 8 GiB, 300 items", 8 * GiB, wave(100)),
    Shape("2. sine 500 MiB, period 300, 8 GiB, 300 items", 8 * GiB, wave(300)),
    Shape("2. sine 500 MiB, period 300, 8 GiB, 1,000 items", 8 * GiB, wave(300, 1000)),
    Shape(
        "2. sine 500 MiB, period 1,000, 8 GiB, 1,000 items (limit)",
        8 * GiB,
        wave(1000, 1000),
    ),
    Shape(
        "2. sine 3 GiB, period 100, 8 GiB, 300 items (limit)",
        8 * GiB,
        wave(100, 300, 3 * GiB),
    ),
    Shape(
        "2. sawtooth 500 MiB flushed by collections every 37, 8 GiB",
        8 * GiB,
        flat(1000),
        garbage=_sawtooth_garbage(37),
        collect_every=37,
    ),
    Shape(
        "2. sawtooth 500 MiB flushed by collections every 100, 8 GiB",
        8 * GiB,
        flat(1000),
        garbage=_sawtooth_garbage(100),
        collect_every=100,
    ),
    Shape("2. sawtooth 500 MiB the code empties every 37, 8 GiB", 8 * GiB, sawtooth(37)),
    Shape("2. sawtooth 500 MiB the code empties every 100, 8 GiB", 8 * GiB, sawtooth(100)),
    Shape(
        "3. 64 MiB/item of cyclic garbage, threshold GC, 24 GiB",
        24 * GiB,
        flat(1000, GiB),
        garbage=cycles(64 * MiB),
    ),
    Shape(
        "4. 1 MiB/item + 5 MiB jitter, 80 GiB, 3,000 items",
        80 * GiB,
        leaking(MiB, 3000, 5 * MiB),
        leak_rate=MiB,
    ),
    Shape(
        "16 MiB/item +-2 MiB, 24 GiB",
        24 * GiB,
        leaking(16 * MiB, 200, 2 * MiB, uniform=True),
        leak_rate=16 * MiB,
    ),
    Shape(
        "16 MiB/item +-50 MiB, 24 GiB",
        24 * GiB,
        leaking(16 * MiB, 200, 50 * MiB, uniform=True),
        leak_rate=16 * MiB,
    ),
    Shape(
        "16 MiB/item +-2 MiB, collected only when asked, 24 GiB",
        24 * GiB,
        leaking(16 * MiB, 200, 2 * MiB, uniform=True),
        leak_rate=16 * MiB,
        garbage=cycles(0.0),
    ),
    Shape(
        "1 MiB/item + 5 MiB jitter, 24 GiB",
        24 * GiB,
        leaking(MiB, 600, 5 * MiB),
        leak_rate=MiB,
    ),
    Shape(
        "1 MiB/item + 5 MiB jitter, 80 GiB",
        80 * GiB,
        leaking(MiB, 1500, 5 * MiB),
        leak_rate=MiB,
    ),
    Shape(
        "256 KiB/item + 1 MiB jitter, 24 GiB",
        24 * GiB,
        leaking(256 * 1024, 1500, MiB),
        leak_rate=256 * 1024,
    ),
)


def row(shape: Shape, seeds: int) -> str:
    """One Markdown row: runs with a warning, warnings per run, when named, rate error."""
    outcomes = [run(shape, seed) for seed in range(seeds)]
    warned = sum(outcome.warnings > 0 for outcome in outcomes)
    most = max(outcome.warnings for outcome in outcomes)
    named = [outcome.named_at for outcome in outcomes if outcome.named_at is not None]
    when = f"{statistics.median(named):.0f} / {max(named)}" if named else "-"
    error = "-"
    if shape.leak_rate is not None:
        errors = [abs(outcome.rate / shape.leak_rate - 1) for outcome in outcomes if outcome.rate]
        error = f"{max(errors):.1%}" if errors else "-"
    cleared = sum(outcome.cleared for outcome in outcomes)
    collections = sum(outcome.collections for outcome in outcomes) / seeds
    gc = f"{collections:.1f}" if shape.garbage is not None else "-"
    return f"| {shape.name} | {warned}/{seeds} | {most} | {cleared} | {when} | {error} | {gc} |"


def operations_per_sample(samples: int = 4096) -> float:
    """Python calls per observe over ``samples`` flat samples, the figures made beforehand
    (a machine-independent stand-in for instructions; callgrind gives those)."""
    calls = 0

    def count(frame: object, event: str, argument: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    watch = LeakWatch("cuda:0", capacity=24 * GiB, search_suspects=False)
    noise = random.Random(0)
    figures = [2 * GiB + round(noise.gauss(0, MiB)) for _ in range(samples)]
    logging.getLogger("memscope").disabled = False  # a disabled logger would cost less
    sys.setprofile(count)
    try:
        for item, figure in enumerate(figures, start=1):
            watch.observe(item, figure)
    finally:
        sys.setprofile(None)
    return calls / samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks leaks", description=__doc__)
    parser.add_argument("--seeds", type=int, default=40, help="runs per shape (default 40)")
    arguments = parser.parse_args(argv)
    print(
        "| shape | runs warned | warnings per run, most | runs cleared | named at item "
        "(median / latest) | rate error, worst | collections per run |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape in SHAPES:
        seeds = 50 if shape.name.startswith("4.") and arguments.seeds == 40 else arguments.seeds
        print(row(shape, seeds), flush=True)
    print(f"\nfunction calls per observe (4,096 samples): {operations_per_sample():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
