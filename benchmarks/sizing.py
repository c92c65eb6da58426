"""Batch sizes on simulated cards: out-of-memory errors needed, and the size reached.

Run ``python -m benchmarks sizing``. Results are printed as Markdown tables, ready for
docs/sizing.md. This is a benchmark, not a test: nothing here asserts anything.

Each card is :class:`memscope.testing.FakeDevice` as CUDA: 24 GiB, of which 1 GiB holds the
model's weights, and a batch of ``n`` needs ``need(n)`` more. The shape of ``need`` is the
card's kind (:data:`KINDS`): linear; half of it, or 90 % of it, growing with ``n**2`` (as
attention does with tokens); in steps of 8 items (an allocator's blocks); padded to the next
power of two (frameworks that pad batches); linear with a peak that varies by +-5 % from one
call to the next. Its scale is chosen so that the largest batch that fits is each of 3 to
100 in turn (somewhere between that and one more item fills the card; for steps and padding,
the largest size that fits is the end of a step). The simulated function fills memory as a
forward pass does: a batch too large leaves the peak where the card ran out and raises the
out-of-memory error CUDA's allocator raises. Each strategy decorates a fresh function for
each card, starting at 128, and calls it 12 times.

Compared: memscope's ``@adaptive_batch`` (measured sizing, and the factor search it falls back
on), accelerate's ``find_executable_batch_size`` (x0.9 after each error) and toma's
``toma.batch`` (halving), the last two installed with ``pip install 'memscope[bench]'`` and
called as their documentation shows. A library that is not installed gets a row that says so.

A last table runs items of mixed sizes (images of 256 to 1024 pixels a side) through
``process_in_chunks`` with a memory model that is 20 % low, against accelerate and toma
sizing the same chunks by count.

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
from memscope.estimation import DEFAULT_HEADROOM, CalibratedImageMemoryModel
from memscope.sizing import Sizing, adaptive_batch, process_in_chunks
from memscope.testing import FakeDevice, GiB, oom_error

TOTAL = 24 * GiB
WEIGHTS = GiB
START = 128
CALLS = 12

Decorate = Callable[[Callable[[int], int]], Callable[[], int]]


Need = Callable[[int, float], float]
"""The memory a batch of ``n`` needs, as a share of what is free, on a card whose nominal
largest batch is ``fits`` (the second argument): 1.0 fills the card."""


def _linear(n: int, fits: float) -> float:
    return n / fits


def _quadratic(share: float) -> Need:
    def need(n: int, fits: float) -> float:
        ratio = n / fits
        return (1 - share) * ratio + share * ratio * ratio

    return need


def _steps(n: int, fits: float) -> float:
    # Blocks of 8 items; the card holds ceil(fits / 8) blocks and a fraction of one more.
    blocks = math.ceil(math.floor(fits) / 8) + (fits - math.floor(fits))
    return math.ceil(n / 8) / blocks


def _padded(n: int, fits: float) -> float:
    return (1 << max(n - 1, 0).bit_length()) / fits


KINDS: dict[str, tuple[Need, float]] = {
    "linear": (_linear, 0.0),
    "half the memory grows with n^2": (_quadratic(0.5), 0.0),
    "90 % of it grows with n^2": (_quadratic(0.9), 0.0),
    "memory in steps of 8 items": (_steps, 0.0),
    "batches padded to powers of two": (_padded, 0.0),
    "peak noise +-5 %": (_linear, 0.05),
}
"""Each kind of card: its memory curve, and how much its peak varies from call to call."""


@dataclass
class Card:
    """The simulated card for one trial: a batch of ``n`` needs ``WEIGHTS + need(n) * free``."""

    fake: FakeDevice
    need: Need
    fits: float
    noise: float = 0.0
    random: random.Random = field(default_factory=lambda: random.Random(0))
    ooms: int = 0
    sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fake.set_memory(allocated=WEIGHTS, reserved=WEIGHTS, other_processes=0)

    def bytes_for(self, batch_size: int) -> float:
        return self.need(batch_size, self.fits) * (TOTAL - WEIGHTS)

    @property
    def largest_fit(self) -> int:
        """The largest batch that fits (at the nominal peak, without noise)."""
        size = 0
        while WEIGHTS + self.bytes_for(size + 1) <= TOTAL:
            size += 1
        return size

    def run(self, batch_size: int) -> int:
        """The user's function: fills the card with the batch, or runs out of memory."""
        try:
            need = self.bytes_for(batch_size)
            if self.noise:
                need *= 1 + self.random.uniform(-self.noise, self.noise)
            if WEIGHTS + need > TOTAL:
                # What fitted was allocated before the allocation that failed.
                self.fake.set_memory(allocated=TOTAL)
                self.ooms += 1
                raise oom_error("cuda", tried=int(need / max(batch_size, 1)))
            self.fake.set_memory(allocated=int(WEIGHTS + need))
            self.sizes.append(batch_size)
            return batch_size
        finally:
            self.fake.set_memory(allocated=WEIGHTS)


@dataclass
class Outcome:
    """What one strategy did on every card of one kind."""

    ooms: list[int] = field(default_factory=list)
    final_shares: list[float] = field(default_factory=list)
    mean_shares: list[float] = field(default_factory=list)

    def cell(self) -> str:
        return (
            f"{statistics.mean(self.ooms):.2f} ({max(self.ooms)}); "
            f"{statistics.mean(self.final_shares):.1%} ({min(self.final_shares):.1%})"
        )


@dataclass
class Strategy:
    """One way of choosing batch sizes, and what it did on every kind of card."""

    name: str
    decorate: Decorate | None
    missing: str = ""
    outcomes: dict[str, Outcome] = field(default_factory=dict)


def memscope_strategy(headroom: float = DEFAULT_HEADROOM, measure: bool = True) -> Decorate:
    sizing = Sizing(start=START, headroom=headroom, measure=measure)

    def decorate(function: Callable[[int], int]) -> Callable[[], int]:
        return adaptive_batch(sizing=sizing, device="cuda")(function)

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


def run_strategy(
    strategy: Strategy, kind: str, cards: list[tuple[int, float]], calls: int, seed: int
) -> None:
    assert strategy.decorate is not None
    need, noise = KINDS[kind]
    outcome = strategy.outcomes.setdefault(kind, Outcome())
    with FakeDevice("cuda", total=TOTAL) as fake:
        for index, (fits, fraction) in enumerate(cards):
            card = Card(fake, need, fits + fraction, noise, random.Random(seed * 1000 + index))
            largest = card.largest_fit
            step = strategy.decorate(card.run)
            sizes = [step() for _ in range(calls)]
            outcome.ooms.append(card.ooms)
            outcome.final_shares.append(sizes[-1] / largest)
            outcome.mean_shares.append(statistics.mean(sizes) / largest)


# Items of mixed sizes, chunked by a memory model ------------------------------------------

MIXED_ITEMS = 400
MIXED_SIDES = (256, 512, 768, 1024)
BYTES_PER_PIXEL = 3000.0
MODEL_LOW = 0.8


def mixed_items(seed: int) -> list[tuple[int, int]]:
    generator = random.Random(seed)
    return [
        (generator.choice(MIXED_SIDES), generator.choice(MIXED_SIDES)) for _ in range(MIXED_ITEMS)
    ]


@dataclass
class MixedOutcome:
    """What one strategy did over the mixed items: errors, and how full the chunks were."""

    name: str
    missing: str = ""
    ooms: int = 0
    fills: list[float] = field(default_factory=list)
    calls: int = 0

    def row(self) -> str:
        if self.missing:
            return f"| {self.name} | {self.missing} | | | |\n"
        return (
            f"| {self.name} | {self.ooms} | {len(self.fills)} | "
            f"{statistics.mean(self.fills):.1%} | {self.calls} |\n"
        )


class MixedCard:
    """A card whose chunk of images needs ``BYTES_PER_PIXEL`` per pixel above the weights."""

    def __init__(self, fake: FakeDevice, outcome: MixedOutcome) -> None:
        self.fake = fake
        self.outcome = outcome
        fake.set_memory(allocated=WEIGHTS, reserved=WEIGHTS, other_processes=0)

    def run(self, chunk: list[tuple[int, int]]) -> list[tuple[int, int]]:
        self.outcome.calls += 1
        need = BYTES_PER_PIXEL * sum(width * height for width, height in chunk)
        try:
            if WEIGHTS + need > TOTAL:
                self.fake.set_memory(allocated=TOTAL)
                self.outcome.ooms += 1
                raise oom_error("cuda", tried=int(need))
            self.fake.set_memory(allocated=int(WEIGHTS + need))
            self.outcome.fills.append(need / (TOTAL - WEIGHTS))
            return chunk
        finally:
            self.fake.set_memory(allocated=WEIGHTS)


def run_mixed(seed: int) -> list[MixedOutcome]:
    """Every item once, through each strategy: memscope sizes chunks by a (20 % low) memory
    model; accelerate and toma search one count for the whole pass, restarted on an error
    as their decorators do."""
    items = mixed_items(seed)
    model = CalibratedImageMemoryModel(fixed_bytes=0, bytes_per_pixel=BYTES_PER_PIXEL * MODEL_LOW)
    results: list[MixedOutcome] = []
    with FakeDevice("cuda", total=TOTAL) as fake:
        outcome = MixedOutcome("memscope `process_in_chunks(memory_model=...)`")
        card = MixedCard(fake, outcome)
        process_in_chunks(
            card.run, items, memory_model=model, image_size=lambda item: item, device="cuda"
        )
        results.append(outcome)
        outcome = MixedOutcome("memscope `process_in_chunks(start=128)` (by count)")
        card = MixedCard(fake, outcome)
        process_in_chunks(card.run, items, sizing=Sizing(start=START), device="cuda")
        results.append(outcome)
        for strategy in strategies()[4:]:
            outcome = MixedOutcome(strategy.name, strategy.missing)
            results.append(outcome)
            if strategy.decorate is None:
                continue
            card = MixedCard(fake, outcome)

            def whole_pass(batch_size: int, card: MixedCard = card) -> int:
                for begin in range(0, len(items), batch_size):
                    card.run(items[begin : begin + batch_size])
                return batch_size

            strategy.decorate(whole_pass)()
    return results


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
        help="cards of each kind to simulate, spread over largest sizes 3..100 (default: 98)",
    )
    parser.add_argument("--calls", type=int, default=CALLS, help="calls per function (12)")
    parser.add_argument("--seed", type=int, default=0, help="picks where each card is full (0)")
    parser.add_argument(
        "--kind", action="append", choices=sorted(KINDS), help="only these kinds of card"
    )
    arguments = parser.parse_args(argv)
    cards = trial_cards(arguments.trials, arguments.seed)
    kinds = arguments.kind or list(KINDS)
    rows = strategies()
    with collections_skipped():
        for strategy in rows:
            if strategy.decorate is not None:
                for kind in kinds:
                    run_strategy(strategy, kind, cards, arguments.calls, arguments.seed)
        mixed = run_mixed(arguments.seed)

    write = sys.stdout.write
    write(
        f"memscope {memscope.__version__}, accelerate {version_of('accelerate')}, "
        f"toma {version_of('toma')}, torch {torch.__version__}, Python "
        f"{platform.python_version()}\n"
    )
    write(
        f"simulated card: {TOTAL // GiB} GiB, {WEIGHTS // GiB} GiB of weights; {len(cards)} "
        f"cards whose largest batch is {min(fits for fits, _ in cards)} to "
        f"{max(fits for fits, _ in cards)}, of each kind; start {START}, {arguments.calls} "
        "calls per function\n\n"
        "cells: OOMs in all, mean (most); last size / largest that fits, mean (least)\n\n"
    )
    shown = [strategy for strategy in rows if strategy.decorate is not None]
    write("| card | " + " | ".join(strategy.name for strategy in shown) + " |\n")
    write("|---|" + "---|" * len(shown) + "\n")
    for kind in kinds:
        cells = [strategy.outcomes[kind].cell() for strategy in shown]
        write(f"| {kind} | " + " | ".join(cells) + " |\n")
    for strategy in rows:
        if strategy.decorate is None:
            write(f"\n{strategy.name}: {strategy.missing}\n")
    write(
        f"\n{MIXED_ITEMS} images of {MIXED_SIDES[0]} to {MIXED_SIDES[-1]} pixels a side, "
        f"mixed; the memory model is {1 - MODEL_LOW:.0%} low\n\n"
        "| strategy | OOMs | chunks | chunk memory / free memory, mean | calls |\n"
        "|---|---:|---:|---:|---:|\n"
    )
    for outcome in mixed:
        write(outcome.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
