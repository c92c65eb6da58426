"""Leak detection: whether the memory that stays after cleanup creeps up, how fast, and why.

:class:`LeakWatch` is fed one figure after each cleanup (the device's allocated bytes, or the
process's resident bytes on the CPU), with whether that cleanup ran a garbage collection. It
judges blocks of those figures with a test that memory which only wanders, repeats or steps
up once does not pass, at a stated false-alarm rate. When the growth is steady and
significant it names a leak once, as a WARNING and as a :class:`~memscope.reports.LeakFinding`,
then looks for what holds the memory with a :class:`SuspectSearch`: the tensors created over
the next few items that stay alive, grouped, and the Python objects that refer to them.
``managed_batch`` runs a watch for each batch; both can be used by hand as well::

    watch = LeakWatch("cuda:0", capacity=torch.cuda.mem_get_info()[1])
    for item, image in enumerate(images, start=1):
        colorize(image)
        gc.collect()
        watch.observe(item, torch.cuda.memory_allocated(), collected=True)
    print(watch.finding)

What is judged a leak, its measured false-alarm rate and sensitivity are in ``docs/leaks.md``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Final

import torch

# The rule's thresholds, re-exported (``as``): docs/leaks.md names them as this module's.
from memscope._leak_rule import (
    BLOCK,
    FAST_SHARE as FAST_SHARE,
    GOING_ON_SHARE as GOING_ON_SHARE,
    MIN_GROWTH_PER_ITEM,
    SAMPLED,
    SIGNIFICANCE,
    STRAIGHT_SHARE as STRAIGHT_SHARE,
    URGENT_SPANS as URGENT_SPANS,
    Blocks,
    LeakRule,
    Sampled,
    Trend,
    median_slope,
)
from memscope._suspects import SuspectSearch
from memscope._validation import check_fraction, check_int
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports import LeakFinding, LeakSuspect
from memscope.units import format_bytes, parse_bytes

# LeakFinding and LeakSuspect are imported here for convenience; they are documented, and
# exported, by memscope.reports, where the report that holds them lives.
__all__ = ["LeakWatch", "SuspectSearch"]

logger = logging.getLogger("memscope")

DEFAULT_WINDOW: Final = 128
"""Samples the growth is judged over: the latest 128 cleanups, in 32 blocks of 4."""
DEFAULT_MIN_SAMPLES: Final = 20
"""Samples needed before anything is judged: five blocks, four steps between them."""
DEFAULT_MIN_GROWTH_PER_ITEM: Final = MIN_GROWTH_PER_ITEM
"""Growth slower than this many bytes per item (64 KiB) is never called a leak."""
DEFAULT_MIN_SHARE: Final = 0.01
"""The growth must have taken at least this share of the capacity (1 %) to be called a leak."""
FALSE_ALARM_PER_JUDGEMENT: Final = SIGNIFICANCE
"""The step test's false-alarm probability per judgement (0.05 %) on memory that wanders."""

CLEAR_SHARE: Final = 0.125
"""A finding is cleared once the latest 32 samples grow less than this share of its rate,"""
CLEAR_JUDGEMENTS: Final = 2
"""at this many judgements in a row (8 samples apart): the hysteresis of "growth stopped"."""
FREED_SHARE: Final = 0.5
"""A collection that frees more than this share of the growth shows it was garbage."""
SEARCH_SETTLE: Final = 2
"""Cleanups between the steps of the suspect search."""


class LeakWatch:
    """Watch the memory that stays after each cleanup, and name a leak once it is clear.

    Call :meth:`observe` after each cleanup with the items done so far, the bytes that stayed
    and whether that cleanup ran a garbage collection. The samples are grouped in blocks of
    four (each its median) and a leak is named (one WARNING, and :attr:`finding`) when, over
    at least ``min_samples`` samples of the latest ``window``:

    * the growth (the Theil-Sen slope of the blocks) is at least ``min_growth_per_item``,
    * the steps between successive blocks rise on average more than memory that wanders at
      random would (a one-sided t test on the steps, false-alarm probability 0.05 % per
      judgement): this holds under autocorrelation, and one step up is never enough,
    * it goes on: the latest 32 samples grow at a quarter of the rate or more,
    * the memory has grown by at least ``min_share`` of ``capacity`` past every level it
      held before: the lowest floor, the last crest it came down from before that floor,
      the level a cleared finding stopped at (skipped when the capacity is unknown),
    * it is fast, urgent or long (:data:`FAST_SHARE`, :data:`URGENT_SPANS`,
      :data:`STRAIGHT_SHARE`, in ``docs/leaks.md``): the first rise of a wave bends within
      a window, and is slow for the memory it sits on,
    * and the growth is memory that stays: where the samples were taken after cleanups that
      ran no collection (``collected=False``), the watch sets :attr:`wants_collection` and
      names the leak only if the next collection (``collected=True``) frees less than half of
      the growth. A collection that frees more shows the growth was garbage: the blocks start
      again from that floor, and the next request waits twice as long (at most a window).

    A named leak starts a :class:`SuspectSearch` that takes four more cleanups; its suspects
    then join the finding. While the leak goes on, the finding's rate, evidence and
    projection follow the latest samples. When the latest 32 samples grow less than an eighth
    of the finding's rate at two judgements in a row, the growth has stopped: the finding is
    kept with ``cleared_at_item`` set (logged at INFO), and a later leak is named anew.

    Judged once per block of 4 samples (a Theil-Sen fit of at most 32 block medians), a
    sample costs a few hundred operations amortised; the watch holds ``window`` samples and
    as many floors.

    Args:
        device: the device whose memory is sampled, for messages (``"cuda:0"``).
        capacity: the bytes that run out (the device's total, the host's limit), or ``None``
            when unknown: then no item of exhaustion is projected and the share test is
            skipped. An int or a size such as ``"24GiB"``.
        sampled: ``"allocated"`` (the device's tensors) or ``"resident"`` (the process's
            resident memory, on the CPU).
        history_recorded: whether CUDA's allocation history is being recorded, so the
            finding can point at the snapshot that has the allocations' stack traces.
        after_cleanup: whether each sample is taken just after a cleanup; ``False`` in a
            count-only batch, which cleans nothing: every sample is then judged as it is,
            no collection is asked for, and the finding says the growth was measured without
            cleanup.
        window: samples the growth is judged over (a multiple of 4 is used; at least 8).
        min_samples: samples needed before a leak can be named (at least 8).
        min_growth_per_item: slower growth is never a leak (bytes, or ``"64KiB"``).
        min_share: the share of ``capacity`` the growth must have taken (0 < share <= 1).
        search_suspects: whether a named leak starts the search for suspects.
    """

    def __init__(
        self,
        device: str | torch.device,
        *,
        capacity: int | str | None = None,
        sampled: Sampled = "allocated",
        history_recorded: bool = False,
        after_cleanup: bool = True,
        window: int = DEFAULT_WINDOW,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        min_growth_per_item: int | str = DEFAULT_MIN_GROWTH_PER_ITEM,
        min_share: float = DEFAULT_MIN_SHARE,
        search_suspects: bool = True,
    ) -> None:
        if not isinstance(device, (str, torch.device)):
            raise InvalidArgumentTypeError(
                f"device must be a str or a torch.device, got {device!r} of type "
                f"{type(device).__name__}"
            )
        if sampled not in SAMPLED:
            raise InvalidArgumentError(
                f"sampled must be one of {', '.join(map(repr, SAMPLED))}, got {sampled!r}"
            )
        for name, flag in (
            ("history_recorded", history_recorded),
            ("after_cleanup", after_cleanup),
            ("search_suspects", search_suspects),
        ):
            if not isinstance(flag, bool):
                raise InvalidArgumentTypeError(f"{name} must be a bool, got {flag!r}")
        self.device = str(device)
        checked_capacity = None if capacity is None else parse_bytes(capacity, "capacity")
        if checked_capacity == 0:
            raise InvalidArgumentError("capacity must be positive or None, got 0")
        self.sampled: Sampled = sampled
        self.history_recorded = history_recorded
        self.after_cleanup = after_cleanup
        self.window = check_int(window, "window", minimum=2 * BLOCK)
        self.min_samples = check_int(min_samples, "min_samples", minimum=2 * BLOCK)
        if self.min_samples > self.window:
            raise InvalidArgumentError(
                f"min_samples must not exceed window ({self.window}), got {min_samples!r}"
            )
        # The thresholds live in the rule alone; the properties below read them there.
        self._rule = LeakRule(
            min_growth_per_item=parse_bytes(min_growth_per_item, "min_growth_per_item"),
            min_share=check_fraction(min_share, "min_share"),
            capacity=checked_capacity,
            min_steps=max(1, math.ceil(self.min_samples / BLOCK) - 1),
            max_blocks=self.window // BLOCK,
        )
        self.search_suspects = search_suspects

        self._lock = threading.Lock()
        self._blocks = Blocks(self._rule.max_blocks)
        self._samples: deque[tuple[int, int]] = deque(maxlen=self.window)
        # The samples nothing could free (after a collection), for the growth figure.
        self._floors: deque[tuple[int, int]] = deque(maxlen=self.window)
        self._only_floors = True
        self._lowest: int | None = None
        self._last: int | None = None
        self._uncollected = False
        self._wanted = False
        self._refuted = 0
        self._rearm_above: float | None = None
        self._low_judgements = 0
        self._trend: Trend | None = None
        self._finding: LeakFinding | None = None
        self._search: SuspectSearch | None = None
        self._search_countdown = 0

    def __repr__(self) -> str:
        return (
            f"LeakWatch({self.device!r}, capacity={self.capacity!r}, sampled={self.sampled!r}, "
            f"samples={len(self._samples)})"
        )

    # What the watch knows ---------------------------------------------------------------

    @property
    def capacity(self) -> int | None:
        """The bytes that run out, or ``None`` when unknown."""
        return self._rule.capacity

    @property
    def min_growth_per_item(self) -> int:
        """Growth slower than this many bytes per item is never a leak."""
        return self._rule.min_growth_per_item

    @property
    def min_share(self) -> float:
        """The share of :attr:`capacity` the growth must have taken to be a leak."""
        return self._rule.min_share

    @property
    def growth_per_item(self) -> float | None:
        """The growth of the memory that stays, in bytes per item: the Theil-Sen slope of the
        latest floors (samples after a collection) where some samples were taken without
        one and there are two floors or more, else of the latest samples; worked out when
        asked. ``None`` before two samples."""
        with self._lock:
            floors_only = not self._only_floors and len(self._floors) >= 2
            points = list(self._floors if floors_only else self._samples)
        return median_slope(points) if len(points) >= 2 else None

    @property
    def finding(self) -> LeakFinding | None:
        """The leak named last (``active`` while it grows), or ``None`` if none was named."""
        return self._finding

    @property
    def samples(self) -> int:
        """How many samples the watch holds now (at most ``window``)."""
        return len(self._samples)

    @property
    def wants_collection(self) -> bool:
        """Whether the growth would be named a leak if a garbage collection confirmed it: the
        caller's next cleanup should collect, and :meth:`observe` say ``collected=True``."""
        return self._wanted

    # Sampling ---------------------------------------------------------------------------

    def observe(
        self, item: int, retained: int | None, *, collected: bool | None = None
    ) -> LeakFinding | None:
        """Take the bytes that stayed after the cleanup at ``item``; returns :attr:`finding`.

        ``collected`` says whether that cleanup ran a garbage collection: ``True`` makes the
        sample a floor, memory nothing could free; ``False`` a sample that may hold garbage
        a collection would free; ``None`` (the caller does not say, as by hand after its own
        ``gc.collect()``) counts as a floor. ``item`` counts the items done so far; a sample
        at an item no later than the last one is ignored (the batch's final cleanup, say).
        ``retained`` ``None`` (a device that cannot tell) is ignored too. Logs the WARNING
        when a leak is named, and runs the steps of the suspect search when they are due.
        """
        # The checks' fast path: this runs after every cleanup.
        if type(item) is not int or item < 0:
            item = check_int(item, "item", minimum=0)
        if collected is not None and collected is not True and collected is not False:
            raise InvalidArgumentTypeError(f"collected must be a bool or None, got {collected!r}")
        if retained is None:
            return self._finding
        if type(retained) is not int or retained < 0:
            retained = check_int(retained, "retained", minimum=0)
        floor = collected is not False or not self.after_cleanup
        with self._lock:
            if self._samples and item <= self._samples[-1][0]:
                logger.debug("leak watch: ignoring a sample at item %d, not after the last", item)
                return self._finding
            if self._search is not None:
                self._advance_search()
            if floor:
                if collected is True and self._uncollected:
                    self._take_floor(item, retained)
                self._floors.append((item, retained))
            else:
                self._uncollected = True
                self._only_floors = False
            lowest = self._lowest
            if lowest is None or retained < lowest:
                self._lowest = retained
            self._samples.append((item, retained))
            self._last = retained
            if self._blocks.add(item, retained):
                self._judge()
            return self._finding

    def _take_floor(self, item: int, retained: int) -> None:
        """A floor a collection confirmed after samples that may have held garbage: where it
        shows they did, start again from it."""
        lowest = self._lowest
        if lowest is None or self._last is None:
            return
        self._uncollected = False
        wanted, self._wanted = self._wanted, False
        grown = self._last - lowest
        if grown > 0 and self._last - retained > FREED_SHARE * grown:
            # The growth was garbage: what the blocks held says nothing about a leak.
            self._blocks.clear()
            self._samples.clear()
            self._trend = None
            if wanted:
                self._refuted += 1
            logger.debug("leak watch: a collection at item %d freed the growth", item)
        elif wanted and self._trend is not None:
            self._name(self._trend, item)

    # Judging ----------------------------------------------------------------------------

    def _judge(self) -> None:
        if len(self._blocks) < 2:
            return
        finding = self._finding
        highest = self._highest_level()
        if (finding is None or not finding.active) and not self._rule.past(
            self._blocks.latest, highest
        ):
            # The test's cheap half first: memory that has not risen past every level it held
            # is no leak whatever its line, so most judgements fit no line at all.
            self._wanted = False
            return
        trend = self._blocks.trend()
        if trend is None:
            return
        self._trend = trend
        if finding is not None and finding.active:
            stop_below = max(self.min_growth_per_item, CLEAR_SHARE * finding.growth_per_item)
            if trend.recent_slope < stop_below:
                self._low_judgements += 1
                if self._low_judgements >= CLEAR_JUDGEMENTS:
                    self._clear(finding, trend)
                return
            self._low_judgements = 0
            if trend.slope >= stop_below:
                # The same leak, measured on more evidence: its figures follow, its name stays.
                self._finding = replace(self._evidence(trend), **_kept_from(finding))
            return
        if not self._rule.holds(trend, self._blocks, highest):
            self._wanted = False
            return
        if self._uncollected:
            # Confirmed or refuted by the next collection; asked for once per wait.
            rule = self._rule
            needed = min(rule.max_blocks, (rule.min_steps + 1) << self._refuted)
            self._wanted = len(self._blocks) >= needed
            return
        self._name(trend, trend.last_item)

    def _highest_level(self) -> float | None:
        """The level growth must pass: the lowest floor, or higher where memory came down."""
        if self._lowest is None:
            return None
        return max(self._lowest, self._rearm_above or 0, self._blocks.high_before_low or 0)

    def _evidence(self, fit: Trend, detected_at: int | None = None) -> LeakFinding:
        retained_last = fit.at(fit.last_item)
        exhausted_at = None
        if self.capacity is not None:
            items_left = max(0.0, (self.capacity - retained_last) / fit.slope)
            exhausted_at = fit.last_item + math.ceil(items_left)
        return LeakFinding(
            device=self.device,
            sampled=self.sampled,
            after_cleanup=self.after_cleanup,
            growth_per_item=fit.slope,
            detected_at_item=fit.last_item if detected_at is None else detected_at,
            first_item=fit.first_item,
            last_item=fit.last_item,
            samples=fit.samples,
            retained_first=round(fit.at(fit.first_item)),
            retained_last=round(retained_last),
            retained_lowest=self._lowest if self._lowest is not None else 0,
            noise=fit.noise,
            capacity=self.capacity,
            exhausted_at_item=exhausted_at,
            hints=self._hints(),
        )

    def _hints(self) -> tuple[str, ...]:
        if self.history_recorded and self.device.startswith("cuda"):
            return (
                "the allocation history is being recorded: a snapshot "
                "(torch.cuda.memory._dump_snapshot('leak.pickle')) shows the stack trace of "
                "each allocation that stays; open it in https://pytorch.org/memory_viz",
            )
        return ()

    def _name(self, fit: Trend, item: int) -> None:
        self._wanted = False
        self._low_judgements = 0
        finding = self._evidence(fit, item)
        self._finding = finding
        logger.warning("%s", finding.message())
        self._search = None
        looking = ""
        if self.search_suspects:
            self._start_search()
            looking = (
                f"; memscope looks for the tensors that stay over the next "
                f"{2 * SEARCH_SETTLE} cleanups"
            )
        logger.info(
            "leak evidence: %d samples from item %d to %d, %s -> %s fitted, jitter %s%s",
            finding.samples,
            finding.first_item,
            finding.last_item,
            format_bytes(finding.retained_first),
            format_bytes(finding.retained_last),
            format_bytes(finding.noise),
            looking,
        )

    def _clear(self, finding: LeakFinding, trend: Trend) -> None:
        item = trend.last_item
        self._finding = replace(finding, cleared_at_item=item)
        # A leak named later must grow past where this growth stopped: memory that rises
        # and falls again (a sawtooth, a wave) is one warning, not one per rise.
        self._rearm_above = trend.at(item)
        self._search = None
        logger.info(
            "memory growth seen since item %s has stopped at item %s: no leak after all "
            "(a cache that filled, say)",
            finding.detected_at_item,
            item,
        )

    # The suspect search -----------------------------------------------------------------

    def _start_search(self) -> None:
        try:
            self._search = SuspectSearch()
        except Exception:
            logger.debug("the search for leak suspects could not start", exc_info=True)
            return
        self._search_countdown = SEARCH_SETTLE

    def _advance_search(self) -> None:
        search = self._search
        assert search is not None
        self._search_countdown -= 1
        if self._search_countdown > 0:
            return
        try:
            if not search.candidates_taken:
                search.take_candidates()
                self._search_countdown = SEARCH_SETTLE
                return
            suspects = search.suspects()
        except Exception:
            logger.debug("the search for leak suspects failed", exc_info=True)
            self._search = None
            return
        self._search = None
        finding = self._finding
        if finding is None or not finding.active:
            return
        hints = finding.hints
        if not suspects:
            hints += (
                "no tensor made after the leak was named stayed alive: what grows is held "
                "outside Python (an autograd graph kept alive, a C++ cache) or is not tensors",
            )
        self._finding = replace(
            finding, suspects=suspects, search_seconds=search.seconds, hints=hints
        )
        logger.info("leak suspects (search took %.2f s):%s", search.seconds, _listed(suspects))


def _kept_from(finding: LeakFinding) -> dict[str, Any]:
    return {
        "detected_at_item": finding.detected_at_item,
        "suspects": finding.suspects,
        "search_seconds": finding.search_seconds,
        "hints": finding.hints,
    }


def _listed(suspects: Iterable[LeakSuspect]) -> str:
    lines = "".join(f"\n  {suspect}" for suspect in suspects)
    return lines or " none found"
