"""The search for a batch size that fits: one decision step, and two thin drivers.

``@adaptive_batch`` and ``process_in_chunks`` run the same search. What differs is only what
an attempt calls (the function with a size; the function with a chunk) and when the work is
done (after one success; after the last chunk). :class:`SizeSearch` holds the decisions, and
its subclasses fill in those two things.

A driver asks the search what to do, does it, and hands back the outcome, as tenacity's
``Retrying`` asks its ``iter()``:

* :meth:`SizeSearch.start` and :meth:`SizeSearch.decide` return a :class:`Call` (make this
  attempt), a :class:`Hand` (yield this result, for ``iter_chunks``) or a :class:`Finish`
  (done), or raise ``BatchSizeExhaustedError``;
* :func:`drive` and :func:`drive_async`, the only loops, make the calls, catching
  out-of-memory errors as values (:func:`~memscope.oom.call_catching_oom`), and differ by
  one ``await``; :func:`run_search` and :func:`run_search_async` return what a search that
  hands nothing on finished with.

Every decision, and the recovery between attempts, happens in :meth:`SizeSearch.decide`,
which a driver calls outside any ``except`` block: there the failed attempt's memory can
really be freed. So does the measuring (:mod:`memscope.sizing._measure`): the figures are read
and the peak reset as the step that makes an attempt ends, and the peak is read as the next
step begins, so nothing but the attempt runs in between.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, NoReturn, TypeVar

from memscope import _context as context
from memscope._recovery import recover_from_oom
from memscope.exceptions import BatchSizeExhaustedError
from memscope.manager import MemoryManager

# The recovery layer's public names: memscope.oom reads the sizing names it used to have
# from this layer only when asked for them, so importing it here makes no cycle.
from memscope.oom import CaughtOom, add_oom_note, call_catching_oom, call_catching_oom_async
from memscope.sizing._measure import AttemptMeter
from memscope.sizing._snapshot import Attempt, CountedWork, Work
from memscope.sizing._state import AdaptiveBatchState

__all__: list[str] = []

logger = logging.getLogger("memscope")

Result = TypeVar("Result")


@dataclass(slots=True)
class Call:
    """The search's verdict: make this attempt next.

    The search empties it as it decides on the attempt's outcome: its arguments (a chunk,
    say) are let go before the failed attempt's memory is freed, although the driver still
    holds the call.
    """

    function: Callable[..., Any]
    arguments: tuple[Any, ...]
    keywords: Mapping[str, Any]

    def release(self) -> None:
        """Let go of the attempt's arguments."""
        self.arguments = ()
        self.keywords = {}


@dataclass(frozen=True, slots=True)
class Hand:
    """The search's verdict: hand this result on (yield it), then go on (:data:`HANDED`)."""

    result: Any


HANDED = object()
"""The outcome of a :class:`Hand`: the result was handed on."""


@dataclass(frozen=True, slots=True)
class Finish(Generic[Result]):
    """The search's verdict: the work is done, and this is its result (or, ``raised``, the
    ``StopIteration`` an attempt raised, for the caller to raise outside the driver)."""

    result: Result
    raised: BaseException | None = None


class SizeSearch(ABC, Generic[Result]):
    """One run of the search, for one ``@adaptive_batch`` call or one ``process_in_chunks``.

    ``state`` is what the sizes learned are kept in (the decorated function's, shared by its
    calls; or the chunked run's own). ``batch`` is the ``managed_batch`` active when the run
    began, if any: it hears of every finished item, every out-of-memory error and every
    cleanup. With the state's ``measure`` on, each attempt is measured through ``manager``;
    ``figures`` reads what the device has available even when nothing is measured. With
    ``hands_on``, each success's result is handed on (:class:`Hand`) instead of kept.
    """

    def __init__(
        self,
        *,
        name: str,
        state: AdaptiveBatchState,
        manager: MemoryManager,
        batch: context.ActiveBatch | None,
        figures: bool = False,
        hands_on: bool = False,
    ) -> None:
        self.name = name
        self.state = state
        self.manager = manager
        self.batch = batch
        self.hands_on = hands_on
        self.meter = AttemptMeter(manager, batch, measure=state.measure, figures=figures)
        # The sizes this run attempted, in order, a size repeated only after another.
        self.sizes: list[int] = []
        self._attempt: Attempt | None = None
        self._finish: Finish[Result] | None = None
        self._pending: Call | None = None

    # What the subclasses say: what an attempt calls, and when the work is done.

    @abstractmethod
    def _call(self, size: int) -> Call:
        """The call that attempts the work (what is left of it) at ``size``."""

    @abstractmethod
    def _accept(self, attempt: Attempt, result: Any) -> None:
        """Keep what a successful ``attempt`` returned (or raise if it cannot be used)."""

    @abstractmethod
    def _finished(self) -> bool:
        """Whether all the work is done."""

    @abstractmethod
    def _result(self) -> Result:
        """What the run returns, once finished."""

    @abstractmethod
    def _items_left(self) -> int | None:
        """How many items are left (attempts are never larger); ``None``: no such limit."""

    @abstractmethod
    def _where(self) -> str:
        """Where in the work the run is, for the exhausted error (``""`` or `` for ...``)."""

    def _work(self) -> Work:
        """What is left, as the sizing rules see it: items, unless a subclass says otherwise."""
        return CountedWork(self._items_left())

    def _check_reading(self, available: int | None) -> None:
        """Refuse to go on without figures the subclass needs; by default none are needed."""

    # The decision step.

    def start(self) -> Call | Hand | Finish[Result]:
        """The first step: the first attempt, or the result if there is nothing to do."""
        return self._next()

    def decide(self, outcome: object) -> Call | Hand | Finish[Result]:
        """The step after the last one, given its ``outcome``: what the attempt returned,
        the :class:`~memscope.oom.CaughtOom` it ran into, a :class:`Finish` with the
        ``StopIteration`` it raised, or :data:`HANDED` after a :class:`Hand`.

        After a success: :class:`Hand` when the search hands results on, else the next
        attempt or :class:`Finish`. After an out-of-memory error: the retry at a smaller
        size, once the failed attempt's memory is freed; or, when no smaller size is allowed,
        ``BatchSizeExhaustedError`` raised from the error.
        """
        if outcome is HANDED:
            return self._next()
        if self._pending is not None:
            self._pending.release()
            self._pending = None
        attempt = self._attempt
        if attempt is None:
            raise RuntimeError("SizeSearch.decide() follows an attempt that start() asked for")
        self._attempt = None
        if isinstance(outcome, CaughtOom):
            self.meter.abandon()
            return self._attempt_at(self._retry_after(attempt, outcome.error))
        if isinstance(outcome, Finish):
            if self.hands_on and outcome.raised is not None:
                # As from any generator: the caller's for loop must not end in silence.
                raise outcome.raised
            self._finish = outcome
            return outcome
        # First, before anything else allocates: the peak the attempt reached.
        used = self.meter.finish()
        self._accept(attempt, outcome)
        self.state._record_success(attempt, used)
        if self.batch is not None:
            self.batch._record_items(attempt.size)
        return Hand(outcome) if self.hands_on else self._next()

    def outcome(self) -> Result:
        """What the finished run returns (or the ``StopIteration`` an attempt raised)."""
        assert self._finish is not None
        if self._finish.raised is not None:
            raise self._finish.raised
        return self._finish.result

    def close(self) -> None:
        """The run is over (finished, given up, or left by an exception): stop measuring."""
        self.meter.abandon()

    def _next(self) -> Call | Finish[Result]:
        if self._finished():
            self._finish = Finish(self._result())
            return self._finish
        reading = self.meter.start()
        self._check_reading(reading.available)
        attempt = self.state._choose(self._work(), reading.available, reading.measurable)
        return self._attempt_at(attempt)

    def _attempt_at(self, attempt: Attempt) -> Call:
        if not self.sizes or self.sizes[-1] != attempt.size:
            self.sizes.append(attempt.size)
        self._attempt = attempt
        call = self._call(attempt.size)
        batch = self.batch
        if batch is not None and context.tracked_item.get() is not batch:
            # Outside any item of the batch, the chunk's items are counted by this search (an
            # item is counted by the outermost memscope layer): decorated calls the chunk
            # makes are part of them.
            call.function = context.as_item(batch, call.function)
        self._pending = call
        return call

    def _retry_after(self, attempt: Attempt, error: BaseException) -> Attempt:
        retry, reduced = self.state._record_oom(attempt, self._work())
        if self.batch is not None:
            self.batch._record_oom(error, retried=retry is not None, batch_size_reduced=reduced)
        if retry is None:
            self._raise_exhausted(error)
        if attempt.regrowing_from is not None:
            logger.info(
                "%s: out of memory trying to grow the batch size to %d; back to %d",
                self.name,
                attempt.size,
                retry.size,
            )
        elif attempt.predicted:
            logger.warning(
                "%s: out of memory at the predicted batch size %d (wrong prediction %d); "
                "retrying at %d",
                self.name,
                attempt.size,
                self.state.wrong_predictions,
                retry.size,
            )
        else:
            how = " to measure" if retry.probe else ""
            logger.warning(
                "%s: out of memory at batch size %d; retrying at %d%s",
                self.name,
                attempt.size,
                retry.size,
                how,
            )
        recover_from_oom(error, self.manager, self.batch)
        # The retry's figures are read after the recovery, which freed the failed attempt's.
        reading = self.meter.start()
        return replace(retry, available=reading.available, measurable=reading.measurable)

    def _raise_exhausted(self, error: BaseException) -> NoReturn:
        tried = ", ".join(str(size) for size in self.sizes)
        exhausted = BatchSizeExhaustedError(
            f"{self.name} ran out of memory at every batch size tried{self._where()}, down to "
            f"min_size={self.state.min_size} (sizes tried: {tried})",
            sizes_tried=tuple(self.sizes),
        )
        add_oom_note(exhausted, self.manager, batch_sizes_tried=self.sizes)
        # The last out-of-memory error keeps its traceback: it is the cause the user reads.
        try:
            raise exhausted from error
        finally:
            # Breaks the cycle frame -> error -> traceback -> frame.
            del exhausted


# The drivers: two loops, identical but for the await. -----------------------------------


def drive(search: SizeSearch[Any]) -> Generator[Any, None, None]:
    """Make the attempts ``search`` decides on, until it finishes or gives up; yield what it
    hands on (each success's result, for ``iter_chunks``) before the next attempt is chosen,
    so the caller's work between two results is never measured as an attempt's."""
    try:
        step = search.start()
        while not isinstance(step, Finish):
            if isinstance(step, Call):
                step = search.decide(_attempt(step))
            else:
                yield step.result
                step = search.decide(HANDED)
    finally:
        search.close()


async def drive_async(search: SizeSearch[Any]) -> AsyncGenerator[Any, None]:
    """:func:`drive` for attempts that return awaitables: awaits each."""
    try:
        step = search.start()
        while not isinstance(step, Finish):
            if isinstance(step, Call):
                step = search.decide(await _attempt_async(step))
            else:
                yield step.result
                step = search.decide(HANDED)
    finally:
        search.close()


def _attempt(call: Call) -> object:
    try:
        return call_catching_oom(call.function, *call.arguments, **call.keywords)
    except StopIteration as error:
        return Finish(None, raised=error)  # no generator may raise it: raised past the driver


async def _attempt_async(call: Call) -> object:
    try:
        return await call_catching_oom_async(call.function, *call.arguments, **call.keywords)
    except StopAsyncIteration as error:
        # No async generator may raise it (a coroutine turns StopIteration into RuntimeError).
        return Finish(None, raised=error)


def run_search(search: SizeSearch[Result]) -> Result:
    """The search's result, once :func:`drive` has run it (it hands nothing on)."""
    for _ in drive(search):
        raise RuntimeError("run_search() runs a search that hands nothing on")
    return search.outcome()


async def run_search_async(search: SizeSearch[Result]) -> Result:
    """:func:`run_search` for attempts that return awaitables."""
    async for _ in drive_async(search):
        raise RuntimeError("run_search_async() runs a search that hands nothing on")
    return search.outcome()
