"""Batch sizes on a simulated card: out-of-memory errors needed, and the size reached.

Run ``python -m benchmarks sizing``. Results are printed as a Markdown table, ready for
docs/sizing.md. This is a benchmark, not a test: nothing here asserts anything.

The card is :class:`memscope.testing.FakeDevice` as CUDA: 24 GiB, of which 1 GiB holds the
model's weights, and a batch of ``n`` needs ``n * per_item`` more. ``per_item`` is chosen so
that the largest batch that fits is each of 3 to 100 in turn (somewhere between that and one
more item fills the card). The simulated function fills memory item by item, as a forward
pass does layer by layer: a batch too large leaves the peak where the card ran out and raises
the out-of-memory error CUDA's allocator raises. Each strategy decorates a fresh function for
each card, starting at 128, and calls it 12 times.

Compared: memscope's ``@adaptive_batch`` (measured sizing, at several headrooms, and the
factor search it falls back on), accelerate's ``find_executable_batch_size`` (x0.9 after each
error) and toma's ``toma.batch`` (halving), the last two installed with
``pip install 'memscope[bench]'`` and called as their documentation shows. A library that is
not installed gets a row that says so.

``gc.collect`` is replaced by a no-op while the strategies run: every library collects after
an error (and accelerate before every call), which here only costs time (the simulated card
holds no Python objects), never changes a decision.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import platform
import random
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata

import torch

import memscope
from memscope import adaptive_batch
from memscope.estimation import DEFAULT_HEADROOM
from memscope.testing import FakeDevice, GiB, oom_error

TOTAL = 24 * GiB
WEIGHTS = GiB
START = 128
CALLS = 12

Decorate = Callable[[Callable[[int], int]], Callable[[], int]]


@dataclass
class Card:
    """The simulated card for one trial: a batch of ``n`` needs ``WEIGHTS + n * per_item``."""

    fake: FakeDevice
    per_item: float
    ooms: int = 0
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fake.set_memory(allocated=WEIGHTS, reserved=WEIGHTS, other_processes=0)

    @property
    def largest_fit(self) -> int:
        return math.floor((TOTAL - WEIGHTS) / self.per_item)

    def run(self, batch_size: int) -> int:
        """The user's function: fills the card with the batch, or runs out of memory."""
        try:
            if WEIGHTS + batch_size * self.per_item > TOTAL:
                # What fitted was allocated before the allocation that failed.
                self.fake.set_memory(allocated=WEIGHTS + int(self.largest_fit * self.per_item))
                self.ooms += 1
                raise oom_error("cuda", tried=int(self.per_item))
            self.fake.set_memory(allocated=int(WEIGHTS + batch_size * self.per_item))
            self.sizes.append(batch_size)
            return batch_size
        finally:
            self.fake.set_memory(allocated=WEIGHTS)


@dataclass
class Strategy:
    """One way of choosing batch sizes, and what it did on every card."""

    name: str
    decorate: Decorate | None
    missing: str = ""
    ooms: list[int] = field(default_factory=list)
    final_shares: list[float] = field(default_factory=list)
    mean_shares: list[float] = field(default_factory=list)


def memscope_strategy(headroom: float = DEFAULT_HEADROOM, measure: bool = True) -> Decorate:
    def decorate(function: Callable[[int], int]) -> Callable[[], int]:
        return adaptive_batch(start=START, headroom=headroom, measure=measure, device="cuda")(
            function
        )

    return decorate


def accelerate_strategy() -> tuple[Decorate | None, str]:
    try:
        from accelerate.utils import find_executable_batch_size
    except ImportError as error:
        return None, f"not installed ({error.name}): pip install 'memscope[bench]'"

    def decorate(function: Callable[[int], int]) -> Callable[[], int]:
        decorated: Callable[[], int] = find_executable_batch_size(
            function, starting_batch_size=START
        )
        return decorated

    return decorate, ""


def toma_strategy() -> tuple[Decorate | None, str]:
    try:
        from toma import toma
        from toma.batchsize_cache import GlobalBatchsizeCache
    except ImportError as error:
        return None, f"not installed ({error.name}): pip install 'memscope[bench]'"

    def decorate(function: Callable[[int], int]) -> Callable[[], int]:
        # toma's default cache keys the size by the free memory, which it reads through
        # torch.cuda.get_device_properties (not simulated); this cache keeps one size per
        # function, as memscope and accelerate do.
        decorated: Callable[[], int] = toma.batch(
            initial_batchsize=START, cache_type=GlobalBatchsizeCache
        )(function)
        return decorated

    return decorate, ""


def strategies() -> list[Strategy]:
    accelerate, accelerate_missing = accelerate_strategy()
    toma_decorate, toma_missing = toma_strategy()
    return [
        Strategy("memscope `@adaptive_batch`, headroom 3 % (default)", memscope_strategy()),
        Strategy("memscope, headroom 0 %", memscope_strategy(headroom=0.0)),
        Strategy("memscope, headroom 5 %", memscope_strategy(headroom=0.05)),
        Strategy("memscope, headroom 10 %", memscope_strategy(headroom=0.1)),
        Strategy("memscope, `measure=False` (halving)", memscope_strategy(measure=False)),
        Strategy("accelerate `find_executable_batch_size` (x0.9)", accelerate, accelerate_missing),
        Strategy("toma `toma.batch` (halving)", toma_decorate, toma_missing),
    ]


@contextlib.contextmanager
def collections_skipped() -> Iterator[None]:
    """``gc.collect`` as a no-op: it would only cost time here."""
    original = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = original


def trial_cards(count: int | None, seed: int) -> list[tuple[int, float]]:
    """(largest size that fits, where between it and one more the card is full) per trial."""
    generator = random.Random(seed)
    largest = list(range(3, 101))
    if count is not None:
        largest = [largest[round(index * 97 / max(count - 1, 1))] for index in range(count)]
    return [(fits, generator.random()) for fits in largest]


def run_strategy(strategy: Strategy, cards: list[tuple[int, float]], calls: int) -> None:
    assert strategy.decorate is not None
    with FakeDevice("cuda", total=TOTAL) as fake:
        for fits, fraction in cards:
            card = Card(fake, per_item=(TOTAL - WEIGHTS) / (fits + fraction))
            step = strategy.decorate(card.run)
            sizes = [step() for _ in range(calls)]
            strategy.ooms.append(card.ooms)
            strategy.final_shares.append(sizes[-1] / card.largest_fit)
            strategy.mean_shares.append(statistics.mean(sizes) / card.largest_fit)


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sizing", description=__doc__)
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="cards to simulate, spread over largest sizes 3..100 (default: all 98)",
    )
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per function (12)")
    parser.add_argument("--seed", type=int, default=0, help="picks where each card is full (0)")
    arguments = parser.parse_args(argv)
    cards = trial_cards(arguments.trials, arguments.seed)
    rows = strategies()
    with collections_skipped():
        for strategy in rows:
            if strategy.decorate is not None:
                run_strategy(strategy, cards, arguments.calls)

    write = sys.stdout.write
    write(
        f"memscope {memscope.__version__}, accelerate {version_of('accelerate')}, "
        f"toma {version_of('toma')}, torch {torch.__version__}, Python "
        f"{platform.python_version()}\n"
    )
    write(
        f"simulated card: {TOTAL // GiB} GiB, {WEIGHTS // GiB} GiB of weights, memory linear "
        f"in the batch size; {len(cards)} cards whose largest batch is "
        f"{min(fits for fits, _ in cards)} to {max(fits for fits, _ in cards)}; start "
        f"{START}, {arguments.calls} calls per function\n\n"
    )
    write(
        "| strategy | OOMs in all, mean | OOMs, most | last size / largest that fits, mean "
        "| ... least | mean size / largest that fits |\n|---|---:|---:|---:|---:|---:|\n"
    )
    for strategy in rows:
        if strategy.decorate is None:
            write(f"| {strategy.name} | {strategy.missing} | | | | |\n")
            continue
        write(
            f"| {strategy.name} | {statistics.mean(strategy.ooms):.2f} | {max(strategy.ooms)} "
            f"| {statistics.mean(strategy.final_shares):.1%} "
            f"| {min(strategy.final_shares):.1%} "
            f"| {statistics.mean(strategy.mean_shares):.1%} |\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
