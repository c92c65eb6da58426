"""Documented uses of ``@auto_clear`` and ``managed_batch``, checked with ``mypy --strict``.

Not a test module: ``tests/test_typing.py`` runs mypy on this folder. A line that must not
type-check carries ``# type: ignore[code]``; strict mode reports an unused ignore, so the
check fails if such a line ever starts passing.
"""

from __future__ import annotations

import asyncio

import torch

from memscope import BatchReport, ClearWhenUseful, auto_clear, managed_batch
from memscope.decorator import CleanupStats


@auto_clear(every=5)
def colorize(image: torch.Tensor, *, strength: float = 1.0) -> torch.Tensor:
    return image * strength


@auto_clear
def bare(path: str) -> int:
    return len(path)


@auto_clear(every=2, cache_policy=ClearWhenUseful(min_reclaimable=0.2))
async def colorize_async(image: torch.Tensor) -> torch.Tensor:
    return image


class Pipeline:
    @auto_clear(every=3)
    def run(self, image: torch.Tensor) -> float:
        return float(image.sum())


def uses() -> None:
    colored: torch.Tensor = colorize(torch.zeros(2), strength=0.5)
    length: int = bare("a.png")
    stats: CleanupStats = colorize.cleanup_stats
    calls: int = stats.calls + bare.cleanup_stats.cleanups
    pipeline = Pipeline()
    total: float = pipeline.run(torch.ones(3))
    method_stats: CleanupStats = pipeline.run.cleanup_stats
    awaited: torch.Tensor = asyncio.run(colorize_async(torch.ones(1)))
    with managed_batch("cpu", every=5) as batch:
        for image in batch.track([torch.zeros(1)]):
            colorize(image)
    report: BatchReport = batch.report
    print(colored, length, calls, total, method_stats, awaited, report)


def misuses() -> None:
    colorize("not a tensor")  # type: ignore[arg-type]
    colorize(torch.zeros(1), strength="high")  # type: ignore[arg-type]
    bare(1)  # type: ignore[arg-type]
    Pipeline().run()  # type: ignore[call-arg]
    text: str = bare("a")  # type: ignore[assignment]
    managed_batch(every="5")  # type: ignore[arg-type]
    print(text)
