"""Leak detection: whether the memory that stays after cleanup creeps up, how fast, and why.

:class:`LeakWatch` is fed one figure after each cleanup (the device's allocated bytes, or the
process's resident bytes on the CPU) and keeps a robust fit of the latest ones. When the
growth is steady and significant it names a leak once, as a WARNING and as a
:class:`~memscope.reports.LeakFinding`, then looks for what holds the memory with a
:class:`SuspectSearch`: the tensors created over the next few items that stay alive, grouped,
and the Python objects that refer to them. ``managed_batch`` runs a watch for each batch;
both can be used by hand as well::

    watch = LeakWatch("cuda:0", capacity=torch.cuda.mem_get_info()[1])
    for item, image in enumerate(images, start=1):
        colorize(image)
        gc.collect()
        watch.observe(item, torch.cuda.memory_allocated())
    print(watch.finding)

What is judged a leak, and the figures behind it, is described in ``docs/leaks.md``.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import logging
import math
import statistics
import sys
import threading
import time
import types
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple

import torch

from memscope._validation import check_fraction, check_int
from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError
from memscope.reports._leak import (
    FIT_WINDOW,
    MIN_GROWTH_PER_ITEM,
    MIN_SAMPLES,
    SAMPLED,
    LeakFinding,
    LeakSuspect,
    Sampled,
)
from memscope.units import format_bytes, parse_bytes

# LeakFinding and LeakSuspect are imported here for convenience; they are documented, and
# exported, by memscope.reports, where the report that holds them lives.
__all__ = ["LeakWatch", "SuspectSearch"]

logger = logging.getLogger("memscope")

DEFAULT_WINDOW: Final = FIT_WINDOW
"""Samples the growth is fitted over: the latest 64 cleanups."""
DEFAULT_MIN_SAMPLES: Final = MIN_SAMPLES
"""Samples needed before anything is judged."""
DEFAULT_MIN_GROWTH_PER_ITEM: Final = MIN_GROWTH_PER_ITEM
"""Growth slower than this many bytes per item (64 KiB) is never called a leak."""
DEFAULT_MIN_SHARE: Final = 0.01
"""The growth must have taken at least this share of the capacity (1 %) to be called a leak."""

SIGNIFICANCE: Final = 4.0
"""The growth must stand this many standard errors above zero."""
QUARTER_SIGNIFICANCE: Final = 2.0
"""Each quarter of the window must rise this many standard errors above the one before."""
QUARTER_SHARE: Final = 0.25
"""Each quarter of the window must rise by at least this share of what the slope predicts."""
CLEAR_SHARE: Final = 0.125
"""A finding clears once the latest quarter window grows less than this share of its rate
(a leak is named only while it grows at QUARTER_SHARE of its rate or more)."""
JUDGE_SHARE: Final = 4
"""The samples are judged again after a quarter of the window's samples (every 16 at 64):
a Theil-Sen fit of 64 samples costs 0.5 to 1 ms, a sample alone a deque append."""
SEARCH_SETTLE: Final = 2
"""Cleanups between the steps of the suspect search."""
SUSPECT_LIMIT: Final = 10
"""Suspect groups a finding lists at most."""

# The median absolute deviation of normal noise times this is its standard deviation.
_MAD_TO_SD: Final = 1.4826
# A median of normal samples varies sqrt(pi/2) times as much as their mean.
_MEDIAN_EFFICIENCY: Final = math.sqrt(math.pi / 2)
# Theil-Sen's slope varies about 10 % more than least squares' under normal noise.
_THEIL_SEN_EFFICIENCY: Final = 1.1


# Fitting ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fit:
    """A robust line through samples ``(item, bytes)``."""

    slope: float
    intercept: float
    noise: float
    slope_error: float
    first_item: int
    last_item: int
    samples: int

    def at(self, item: int) -> float:
        return self.intercept + self.slope * item


def _theil_sen_slope(points: list[tuple[int, int]]) -> float:
    """The median of the slopes between every two samples: one odd sample moves it little."""
    slopes = [
        (later_bytes - bytes_) / (later_item - item)
        for index, (item, bytes_) in enumerate(points)
        for later_item, later_bytes in points[index + 1 :]
    ]
    return statistics.median(slopes)


def _fit(points: list[tuple[int, int]]) -> _Fit:
    """Theil-Sen's line through ``points`` (at least two, items increasing), with its noise."""
    slope = _theil_sen_slope(points)
    intercept = statistics.median(bytes_ - slope * item for item, bytes_ in points)
    noise = _MAD_TO_SD * statistics.median(
        abs(bytes_ - intercept - slope * item) for item, bytes_ in points
    )
    mean_item = statistics.fmean(item for item, _ in points)
    spread = math.sqrt(sum((item - mean_item) ** 2 for item, _ in points))
    return _Fit(
        slope=slope,
        intercept=intercept,
        noise=noise,
        slope_error=_THEIL_SEN_EFFICIENCY * noise / spread,
        first_item=points[0][0],
        last_item=points[-1][0],
        samples=len(points),
    )


def _rises_in_every_quarter(points: list[tuple[int, int]], fit: _Fit) -> bool:
    """Whether the memory rises from each quarter of the window to the next.

    One large item that leaves memory behind (a cache that fills once) is a step: it lifts at
    most two of the three rises between the quarters' medians. Steady growth lifts all
    three, each by about a quarter of the window's growth.
    """
    count = len(points)
    bounds = [round(count * quarter / 4) for quarter in range(5)]
    medians = []
    for start, stop in itertools.pairwise(bounds):
        quarter = points[start:stop]
        medians.append(
            (
                statistics.median(item for item, _ in quarter),
                statistics.median(bytes_ for _, bytes_ in quarter),
                len(quarter),
            )
        )
    for (item, bytes_, size), (next_item, next_bytes, next_size) in itertools.pairwise(medians):
        rise = next_bytes - bytes_
        predicted = fit.slope * (next_item - item)
        rise_error = _MEDIAN_EFFICIENCY * fit.noise * math.sqrt(1 / size + 1 / next_size)
        if rise < QUARTER_SHARE * predicted or rise < QUARTER_SIGNIFICANCE * rise_error:
            return False
    return True


# The watch --------------------------------------------------------------------------------


class LeakWatch:
    """Watch the memory that stays after each cleanup, and name a leak once it is clear.

    Call :meth:`observe` after each cleanup with the items done so far and the bytes that
    stayed. The growth is the Theil-Sen slope of the latest ``window`` samples. A leak is
    named (one WARNING, and :attr:`finding`) when, over at least ``min_samples`` samples:

    * the growth is at least ``min_growth_per_item`` bytes per item,
    * it stands 4 standard errors above the samples' jitter,
    * it is steady: the memory rises from each quarter of the window to the next,
    * it goes on: the latest quarter of the window (``min_samples`` at least) grows at a
      quarter of the rate or more,
    * and the memory has grown by at least ``min_share`` of ``capacity`` since the lowest
      sample of the watch (skipped when the capacity is unknown).

    A named leak starts a :class:`SuspectSearch` that takes four more cleanups; its suspects
    then join the finding. While the leak goes on, the finding's rate, evidence and
    projection follow the latest samples. When the latest quarter of the window grows less
    than an eighth of the finding's rate, the growth has stopped: the finding is kept with
    ``cleared_at_item`` set (logged at INFO), and a later leak is named anew.

    The samples are judged after every quarter window of new ones (every 16 at a window of
    64; a Theil-Sen fit of 64 samples costs 0.5 to 1 ms), so most samples cost
    a deque append. The watch holds ``window`` samples whatever the length of the run.

    Args:
        device: the device whose memory is sampled, for messages (``"cuda:0"``).
        capacity: the bytes that run out (the device's total, the host's limit), or ``None``
            when unknown: then no item of exhaustion is projected and the share test is
            skipped. An int or a size such as ``"24GiB"``.
        sampled: ``"allocated"`` (the device's tensors) or ``"resident"`` (the process's
            resident memory, on the CPU).
        history_recorded: whether CUDA's allocation history is being recorded, so the
            finding can point at the snapshot that has the allocations' stack traces.
        after_cleanup: whether each sample is taken just after a cleanup (GC and cache
            clearing); ``False`` in a count-only batch, which cleans nothing, so the finding
            says the growth was measured without cleanup.
        window: samples the growth is fitted over.
        min_samples: samples needed before a leak can be named.
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
        self.capacity = None if capacity is None else parse_bytes(capacity, "capacity")
        if self.capacity == 0:
            raise InvalidArgumentError("capacity must be positive or None, got 0")
        self.sampled: Sampled = sampled
        self.history_recorded = history_recorded
        self.after_cleanup = after_cleanup
        self.window = check_int(window, "window", minimum=4)
        self.min_samples = check_int(min_samples, "min_samples", minimum=4)
        if self.min_samples > self.window:
            raise InvalidArgumentError(
                f"min_samples must not exceed window ({self.window}), got {min_samples!r}"
            )
        self.min_growth_per_item = parse_bytes(min_growth_per_item, "min_growth_per_item")
        self.min_share = check_fraction(min_share, "min_share")
        self.search_suspects = search_suspects

        self._lock = threading.Lock()
        self._samples: deque[tuple[int, int]] = deque(maxlen=self.window)
        self._lowest: int | None = None
        self._since_judged = 0
        self._fit: _Fit | None = None
        self._fit_is_current = False
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
    def growth_per_item(self) -> float | None:
        """The growth of the latest samples in bytes per item; ``None`` before two samples."""
        with self._lock:
            fit = self._current_fit()
        return None if fit is None else fit.slope

    @property
    def finding(self) -> LeakFinding | None:
        """The leak named last (``active`` while it grows), or ``None`` if none was named."""
        return self._finding

    @property
    def samples(self) -> int:
        """How many samples the fit holds now (at most ``window``)."""
        return len(self._samples)

    # Sampling ---------------------------------------------------------------------------

    def observe(self, item: int, retained: int | None) -> LeakFinding | None:
        """Take the bytes that stayed after the cleanup at ``item``; returns :attr:`finding`.

        ``item`` counts the items done so far; a sample at an item no later than the last
        one is ignored (the batch's final cleanup, say). ``retained`` ``None`` (a device that
        cannot tell) is ignored too. Logs the WARNING when a leak is named, and runs the
        steps of the suspect search when they are due.
        """
        item = check_int(item, "item", minimum=0)
        if retained is None:
            return self._finding
        retained = check_int(retained, "retained", minimum=0)
        with self._lock:
            if self._samples and item <= self._samples[-1][0]:
                logger.debug("leak watch: ignoring a sample at item %d, not after the last", item)
                return self._finding
            self._samples.append((item, retained))
            self._lowest = retained if self._lowest is None else min(self._lowest, retained)
            self._fit_is_current = False
            self._since_judged += 1
            if self._search is not None:
                self._advance_search()
            if self._since_judged >= max(1, len(self._samples) // JUDGE_SHARE):
                self._since_judged = 0
                self._judge()
            return self._finding

    def _current_fit(self) -> _Fit | None:
        if not self._fit_is_current:
            self._fit = _fit(list(self._samples)) if len(self._samples) >= 2 else None
            self._fit_is_current = True
        return self._fit

    # Judging ----------------------------------------------------------------------------

    def _judge(self) -> None:
        if len(self._samples) < self.min_samples:
            return
        fit = self._current_fit()
        assert fit is not None  # at least min_samples >= 4 samples
        points = list(self._samples)
        # The latest quarter of the window (min_samples at least) says whether growth goes on.
        recent_slope = _theil_sen_slope(points[-max(self.min_samples, len(points) // 4) :])
        finding = self._finding
        if finding is not None and finding.active:
            stop_below = max(self.min_growth_per_item, CLEAR_SHARE * finding.growth_per_item)
            if recent_slope < stop_below:
                self._clear(finding, fit.last_item)
                return
        if not self._is_leak(points, fit, recent_slope):
            return
        if finding is not None and finding.active:
            # The same leak, measured on more evidence: its figures follow, its name stays.
            self._finding = replace(self._evidence(fit), **_kept_from(finding))
            return
        self._name(fit)

    def _is_leak(self, points: list[tuple[int, int]], fit: _Fit, recent_slope: float) -> bool:
        if fit.slope < max(self.min_growth_per_item, 1):
            return False
        if fit.slope < SIGNIFICANCE * fit.slope_error:
            return False
        if recent_slope < QUARTER_SHARE * fit.slope:
            return False  # growth that stopped (a cache that filled) is no leak
        if self.capacity is not None and self._lowest is not None:
            grown = fit.at(fit.last_item) - self._lowest
            if grown < self.min_share * self.capacity:
                return False
        return _rises_in_every_quarter(points, fit)

    def _evidence(self, fit: _Fit) -> LeakFinding:
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
            detected_at_item=fit.last_item,
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

    def _name(self, fit: _Fit) -> None:
        finding = self._evidence(fit)
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

    def _clear(self, finding: LeakFinding, item: int) -> None:
        self._finding = replace(finding, cleared_at_item=item)
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


# The suspect search -----------------------------------------------------------------------


class SuspectSearch:
    """Find the tensors made after a moment that stay alive, and what holds them.

    Three steps, each a call: making the search notes every tensor alive now (weakly);
    :meth:`take_candidates`, a few items later, notes the tensors made since; and
    :meth:`suspects`, a few items after that, groups the candidates still alive by holder,
    device, shape and dtype. A tensor made in the last item and still held by a loop variable
    is dead by the third step; one appended to a list each item is not.

    Holders are found two ways: from the modules' globals forwards (a list or an object's
    attribute held by a module global, found even when ``gc.freeze()`` hid it from the
    collector), and backwards with ``gc.get_referrers``. Each step walks the collector's
    objects once; :attr:`seconds` adds up what the steps cost.
    """

    def __init__(self) -> None:
        started = time.perf_counter()
        self._before: dict[int, weakref.ReferenceType[torch.Tensor]] = {
            id(tensor): weakref.ref(tensor) for tensor in _live_tensors()
        }
        self._candidates: list[weakref.ReferenceType[torch.Tensor]] | None = None
        self.seconds = time.perf_counter() - started
        """Seconds the steps so far took."""

    @property
    def candidates_taken(self) -> bool:
        """Whether :meth:`take_candidates` ran."""
        return self._candidates is not None

    def take_candidates(self) -> int:
        """Note the tensors made since the search started; returns how many are alive."""
        started = time.perf_counter()
        before = self._before
        candidates = []
        for tensor in _live_tensors():
            known = before.get(id(tensor))
            if known is None or known() is not tensor:
                candidates.append(weakref.ref(tensor))
        self._candidates = candidates
        self._before = {}
        self.seconds += time.perf_counter() - started
        return len(candidates)

    def suspects(self, limit: int = SUSPECT_LIMIT) -> tuple[LeakSuspect, ...]:
        """The candidates still alive, grouped, largest first (at most ``limit`` groups)."""
        if self._candidates is None:
            raise InvalidArgumentError("suspects() needs take_candidates() to have run first")
        limit = check_int(limit, "limit", minimum=1)
        started = time.perf_counter()
        # A plain loop: a walrus in a comprehension would keep the last tensor in a cell.
        alive = []
        tensor = None
        for ref in self._candidates:
            tensor = ref()
            if tensor is not None:
                alive.append(tensor)
        del tensor
        try:
            holders = _name_holders(alive)
            groups = _group(alive, holders)
        finally:
            del alive
        self.seconds += time.perf_counter() - started
        return tuple(groups[:limit])


def _live_tensors() -> list[torch.Tensor]:
    """Every tensor the collector tracks (frozen objects excepted: they predate the batch)."""
    # isinstance against torch.Tensor goes through its metaclass; one issubclass per type
    # keeps a walk over a million objects at a few tens of milliseconds.
    is_tensor_type: dict[type, bool] = {}
    tensors: list[torch.Tensor] = []
    for obj in gc.get_objects():
        kind = type(obj)
        known = is_tensor_type.get(kind)
        if known is None:
            known = is_tensor_type[kind] = issubclass(kind, torch.Tensor)
        if known:
            tensors.append(obj)
    return tensors


_Key = tuple[str, tuple[int, ...], str]
"""What makes tensors alike in a suspect group: device, shape, dtype."""


def _key(tensor: torch.Tensor) -> _Key:
    return str(tensor.device), tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")


def _group(tensors: Sequence[torch.Tensor], holders: dict[int, _Holder]) -> list[LeakSuspect]:
    """Suspects: the tensors by holder and key; a container's count is all it holds alike.

    The search sees the tensors of a few items; the list they were appended to holds those
    of every item since the leak began, and that is the figure worth reading.
    """
    survivors: dict[tuple[str | None, _Key], list[torch.Tensor]] = {}
    containers: dict[str, object] = {}
    for tensor in tensors:
        holder = holders.get(id(tensor))
        label = None if holder is None else holder.label
        if holder is not None and holder.container is not None:
            containers.setdefault(holder.label, holder.container)
        survivors.setdefault((label, _key(tensor)), []).append(tensor)
    counted_storages: set[tuple[str, int]] = set()
    suspects = []
    # Named holders count a shared storage first: a view's base, alive through the view but
    # held by no name, must not take the bytes from the list the views are in.
    for (label, key), alike in sorted(survivors.items(), key=lambda group: group[0][0] is None):
        container = None if label is None else containers.get(label)
        if container is not None:
            held = [
                item
                for item in _items(container)
                if isinstance(item, torch.Tensor) and _key(item) == key
            ]
            alike = held or alike
        device, shape, dtype = key
        suspects.append(
            LeakSuspect(
                holder=label,
                device=device,
                shape=shape,
                dtype=dtype,
                count=len(alike),
                nbytes=sum(_new_storage_bytes(tensor, counted_storages) for tensor in alike),
            )
        )
    suspects.sort(key=lambda suspect: (-suspect.nbytes, -suspect.count))
    return suspects


def _new_storage_bytes(tensor: torch.Tensor, counted: set[tuple[str, int]]) -> int:
    """The bytes of ``tensor``'s storage, or 0 if another tensor's count had them already."""
    try:
        storage = tensor.untyped_storage()
        pointer, nbytes = storage.data_ptr(), storage.nbytes()
    except Exception:  # sparse and other storage-less layouts
        return tensor.nelement() * tensor.element_size()
    if pointer == 0:
        return nbytes
    key = (str(tensor.device), pointer)
    if key in counted:
        return 0
    counted.add(key)
    return nbytes


# Naming holders ---------------------------------------------------------------------------
#
# Forwards first: from the modules' globals and from the locals of the running frames, two
# steps deep (a global or local, its items or attributes, their items). That finds what
# gc.freeze() hides from gc.get_referrers and the locals of running functions, which it
# never sees, and gives the names people wrote. What is left is named backwards, with
# gc.get_referrers.

_CONTAINERS: Final = (list, tuple, set, frozenset, deque, dict)
_SKIPPED: Final = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


@dataclass(frozen=True, slots=True)
class _Holder:
    """What holds a tensor: a label for people, and the container when it is one."""

    label: str
    container: object = None


class _Place(NamedTuple):
    """Where a value sits: ``name`` in a scope (``in module colorize``, ``in run() (...)``)."""

    scope: str
    name: object
    local: bool = False

    def holder(self, value: object, owner: object = None, attribute: object = None) -> _Holder:
        """``list `outputs` in module colorize``, ``local variable `out` in run() ...``, or
        with an ``owner`` at the place, ``list `history` of Colorizer `colorizer` ...``."""
        if isinstance(value, _CONTAINERS):
            kind = type(value).__name__
        elif attribute is not None:
            kind = "attribute"
        else:
            kind = "local variable" if self.local else "global"
        where = f"`{self.name}` {self.scope}"
        if attribute is not None:
            where = f"`{attribute}` of {_owner_label(owner)} {where}"
        return _Holder(f"{kind} {where}", value if isinstance(value, _CONTAINERS) else None)


def _name_holders(tensors: Sequence[torch.Tensor]) -> dict[int, _Holder]:
    """What holds each tensor, by ``id``: named forwards first, then backwards."""
    wanted = {id(tensor) for tensor in tensors}
    names: dict[int, _Holder] = {}
    # Deprecated module attributes warn when touched; the search must not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for place, value in _scopes():
            _note(names, wanted, value, place)
            if isinstance(value, dict):
                # A dict of lists (results by name, say): one step further, by key.
                for key, inner in _entries(value):
                    if isinstance(inner, _CONTAINERS):
                        _note(names, wanted, inner, place, value, key)
            if isinstance(value, _CONTAINERS):
                continue
            for attribute, inner in _attributes(value):
                if not isinstance(inner, _SKIPPED):
                    _note(names, wanted, inner, place, value, attribute)
        unnamed = [tensor for tensor in tensors if id(tensor) not in names]
        if unnamed:
            for tensor_id, holder in _names_from_referrers(unnamed, own=(tensors,)).items():
                names.setdefault(tensor_id, holder)
    return names


def _scopes() -> Iterator[tuple[_Place, object]]:
    """Every module global and every local of this thread's frames, with its place."""
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or _is_memscope(module_name):
            continue
        scope = f"in module {module_name}"
        for name, value in list(namespace.items()):
            if isinstance(value, _SKIPPED):
                continue
            if isinstance(value, type) and getattr(value, "__module__", None) != module_name:
                continue  # a class imported from elsewhere is scanned where it is defined
            yield _Place(scope, name), value
    for frame in _running_frames():
        code = frame.f_code
        scope = (
            f"in {getattr(code, 'co_qualname', code.co_name)}() "
            f"({code.co_filename}:{frame.f_lineno})"
        )
        for name, value in list(frame.f_locals.items()):
            if not isinstance(value, _SKIPPED):
                yield _Place(scope, name, local=True), value


def _running_frames() -> Iterator[types.FrameType]:
    """The frames of this thread's stack, but memscope's own and module bodies.

    Only this thread's: reading the locals of a frame that another thread is running is not
    safe on every Python version. The cleanup that feeds the watch runs in the loop's thread.
    """
    frame = inspect.currentframe()
    while frame is not None:
        if not _is_memscope(frame.f_globals.get("__name__")) and (
            frame.f_locals is not frame.f_globals
        ):
            yield frame
        frame = frame.f_back


def _is_memscope(module_name: object) -> bool:
    return isinstance(module_name, str) and (
        module_name == "memscope" or module_name.startswith("memscope.")
    )


def _note(
    names: dict[int, _Holder],
    wanted: set[int],
    value: object,
    place: _Place,
    owner: object = None,
    attribute: object = None,
) -> None:
    """Name the wanted tensors that ``value`` is or holds; labels are made only on a hit."""
    if id(value) in wanted:
        names.setdefault(id(value), place.holder(value, owner, attribute))
    elif isinstance(value, _CONTAINERS):
        held = [id(item) for item in _items(value) if id(item) in wanted]
        if held:
            holder = place.holder(value, owner, attribute)
            for tensor_id in held:
                names.setdefault(tensor_id, holder)


def _owner_label(owner: object) -> str:
    return f"class {owner.__name__}" if isinstance(owner, type) else type(owner).__name__


def _attributes(value: object) -> list[tuple[Any, Any]]:
    """An object's (or a class's) own attributes; none where it has no ``__dict__``."""
    try:
        return list(vars(value).items())
    except Exception:  # no __dict__, or one that raises when read
        return []


def _entries(mapping: dict[Any, Any]) -> list[tuple[Any, Any]]:
    """A dict's items, or none if it changed size while being read (in another thread)."""
    try:
        return list(mapping.items())
    except Exception:
        return []


def _items(container: object) -> list[object]:
    """What a container holds: a dict's values, other containers' items."""
    try:
        if isinstance(container, dict):
            return list(container.values())
        if isinstance(container, _CONTAINERS):
            return list(container)
    except Exception:  # changed size while being read, in another thread
        return []
    return []


def _names_from_referrers(
    tensors: Sequence[torch.Tensor], own: tuple[object, ...] = ()
) -> dict[int, _Holder]:
    """Names for what refers to ``tensors``, from ``gc.get_referrers``: two walks at most.

    The first walk finds the direct holders. An object names its attribute; a container is
    named in the second walk by what refers to it in turn: an object's attribute, a
    generator's local, or the object whose ``__dict__`` it is.
    """
    wanted = {id(tensor) for tensor in tensors}
    names: dict[int, _Holder] = {}
    # Ids only: a dict or tuple holding the containers would itself refer to them.
    containers: list[object] = []
    held_by: dict[int, list[int]] = {}
    for referrer in _referrers(tensors, own):
        held = _held_ids(referrer, wanted)
        if not held:
            continue
        if isinstance(referrer, _CONTAINERS):
            containers.append(referrer)
            held_by[id(referrer)] = held
            continue
        kind, where = _direct_label(referrer, wanted)
        holder = _Holder(f"{kind} {where}")
        for tensor_id in held:
            names.setdefault(tensor_id, holder)
    if not containers:
        return names
    places, owners = _container_places(containers, own)
    for container in containers:
        held = held_by[id(container)]
        owner = owners.get(id(container))
        if owner is not None and isinstance(container, dict):
            # An object's __dict__: the tensors are the object's attributes.
            for key, value in list(container.items()):
                if id(value) in held:
                    label = f"attribute `{key}` of a {owner} object"
                    names.setdefault(id(value), _Holder(label))
            continue
        place = places.get(id(container), "that nothing memscope can name refers to")
        holder = _Holder(f"{type(container).__name__} {place}", container)
        for tensor_id in held:
            names.setdefault(tensor_id, holder)
    return names


def _referrers(objects: Sequence[object], own: tuple[object, ...] = ()) -> list[object]:
    """``gc.get_referrers(*objects)`` without the search's own lists, tuples and frames.

    ``own`` are the search's other lists that hold the objects (the tensors it looks at).
    """
    referrers = gc.get_referrers(*objects)
    ignored = {id(objects), *map(id, own)}
    return [
        referrer
        for referrer in referrers
        if id(referrer) not in ignored
        # The tuple of arguments of the call itself refers to every object.
        and not (
            isinstance(referrer, tuple)
            and len(referrer) == len(objects)
            and all(mine is theirs for mine, theirs in zip(referrer, objects, strict=True))
        )
        and not (
            isinstance(referrer, types.FrameType)
            and _is_memscope(referrer.f_globals.get("__name__"))
        )
    ]


def _held_ids(referrer: object, wanted: set[int]) -> list[int]:
    values: Iterable[object]
    if isinstance(referrer, types.FrameType):
        values = list(referrer.f_locals.values())
    elif isinstance(referrer, types.CellType):
        try:
            values = [referrer.cell_contents]
        except ValueError:  # an empty cell
            return []
    elif isinstance(referrer, _CONTAINERS):
        values = _items(referrer)
    elif isinstance(referrer, types.GeneratorType | types.CoroutineType):
        frame = getattr(referrer, "gi_frame", None) or getattr(referrer, "cr_frame", None)
        values = [] if frame is None else list(frame.f_locals.values())
    else:
        values = [value for _, value in _attributes(referrer)]
    return list(dict.fromkeys(id(value) for value in values if id(value) in wanted))


def _direct_label(referrer: object, wanted: set[int]) -> tuple[str, str]:
    """What a referrer that is no container calls what it holds, and where that is:
    ``("local variable", "`out` in run() (job.py:12)")``, ``("attribute", "`cache` of a
    Colorizer object")``."""
    if isinstance(referrer, types.GeneratorType | types.CoroutineType):
        frame = getattr(referrer, "gi_frame", None) or getattr(referrer, "cr_frame", None)
        if frame is not None:
            referrer = frame
    if isinstance(referrer, types.FrameType):
        code = referrer.f_code
        return "local variable", (
            f"`{_first_key(referrer.f_locals, wanted)}` in "
            f"{getattr(code, 'co_qualname', code.co_name)}() "
            f"({code.co_filename}:{referrer.f_lineno})"
        )
    if isinstance(referrer, types.CellType):
        return "closure variable", "of a function"
    attributes = dict(_attributes(referrer))
    if any(id(value) in wanted for value in attributes.values()):
        return "attribute", (
            f"`{_first_key(attributes, wanted)}` of a {type(referrer).__name__} object"
        )
    return "part", f"of a {type(referrer).__name__} object"


def _first_key(mapping: dict[Any, Any], wanted: set[int]) -> str:
    return next((str(key) for key, value in mapping.items() if id(value) in wanted), "?")


def _container_places(
    containers: Sequence[object], own: tuple[object, ...] = ()
) -> tuple[dict[int, str], dict[int, str]]:
    """Where each container sits, from what refers to it, and the type names of the objects
    whose ``__dict__`` some of them are.

    An object, a frame or a generator names the place; another container only says "in a
    dict", so it counts only where nothing better refers to the container.
    """
    wanted = {id(container) for container in containers}
    places: dict[int, str] = {}
    fallbacks: dict[int, str] = {}
    owners: dict[int, str] = {}
    for referrer in _referrers(containers, own):
        owned = _own_attributes_id(referrer)
        if owned is not None and owned in wanted:
            owners.setdefault(owned, type(referrer).__name__)
        for container_id in _held_ids(referrer, wanted):
            if isinstance(referrer, _CONTAINERS):
                fallbacks.setdefault(container_id, f"in a {type(referrer).__name__}")
            else:
                places.setdefault(container_id, _direct_label(referrer, {container_id})[1])
    return {**fallbacks, **places}, owners


def _own_attributes_id(referrer: object) -> int | None:
    """The ``id`` of an object's ``__dict__``, or ``None`` for anything else."""
    if isinstance(referrer, (type, types.ModuleType, *_CONTAINERS)):
        return None
    try:
        return id(vars(referrer))
    except Exception:
        return None
