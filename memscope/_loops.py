"""The loops of a batch: ``track()`` and ``map()``, as generators over keyed items.

Each item's key (for the journal, or for a failure's record) is made and checked as the item
is reached, before its work; the batch decides what a finished, failed or skipped item
means.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from memscope import _context as context
from memscope._recovery import recover_from_oom
from memscope.exceptions import BatchStateError, InvalidArgumentError, InvalidArgumentTypeError
from memscope.journal import item_key
from memscope.oom import is_oom_error
from memscope.reports import ItemFailure
from memscope.typing import ItemKey
from memscope.watch import WatchedBatch

if TYPE_CHECKING:
    from memscope._ledger import Ledger
    from memscope.watch import Hooks

__all__: list[str] = []

logger = logging.getLogger("memscope")

Item = TypeVar("Item")
Result = TypeVar("Result")


class LoopedBatch(context.ActiveBatch, WatchedBatch, Protocol):
    """What the loops use of the batch they run in (a ``managed_batch`` is one): its
    watchers' hooks, its ledger, its list of failures and its item count."""

    _hooks: Hooks
    _ledger: Ledger
    _failed_items: list[ItemFailure]

    def _advance(self, count: int, calls: int = 0) -> None:
        """``count`` items finished: counted, and the cadence's cleanup where it is due."""
        ...

    def clean_up(self, reason: str = ...) -> None:
        """A cleanup step now."""
        ...


class _Raised:
    """A ``StopIteration`` the mapped function raised, carried out of the generator whole
    (a generator may not raise one itself)."""

    __slots__ = ("error",)

    def __init__(self, error: StopIteration) -> None:
        self.error = error


class Loop(Iterator[Item]):
    """What ``track()`` and ``map()`` return: the loop's generator, and an error once the
    batch ended.

    Leaving the batch closes every loop (so the iterable's own clean-up runs even after a
    ``break``); a loop still running then, in a worker thread say, must not stop early in
    silence, so its next step raises.
    """

    def __init__(self, generator: Generator[Any, None, None]) -> None:
        self._generator = generator
        self._ended = False

    def __iter__(self) -> Loop[Item]:
        return self

    def __next__(self) -> Item:
        if self._ended:
            raise BatchStateError(
                "batch.track(): the batch ended while this loop was still running (in another "
                "thread?); finish the loops before leaving the batch"
            )
        value = next(self._generator)
        if type(value) is _Raised:
            raise value.error
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the loop, as ``generator.close()`` would."""
        self._generator.close()

    def end(self) -> None:
        """The batch ended: close the loop; a later step raises ``BatchStateError``."""
        self._ended = True
        try:
            self._generator.close()
        except ValueError:
            # Running in another thread at this moment; its next step raises.
            logger.debug("a track() loop was running while its batch ended", exc_info=True)


def keyed(
    batch: LoopedBatch,
    items: Iterable[Item],
    key: Callable[[Item], object] | None,
    *,
    name: str,
) -> Iterable[tuple[Item, ItemKey | None]]:
    """The items with their keys (``None`` where nothing needs one); ``name``: the
    parameter that gave the items, for the error if they cannot be iterated."""
    if key is not None and not callable(key):
        raise InvalidArgumentTypeError(f"key must be a function or None, got {key!r}")
    total = len(items) if isinstance(items, Sized) else None
    try:
        iterator = iter(items)  # once: a DataLoader starts its workers on each iter()
    except TypeError:
        hint = ""
        if hasattr(items, "__aiter__"):
            hint = ": for an async iterable, call batch.step() after each item of an async for"
        raise InvalidArgumentTypeError(
            f"{name} must be iterable, got {items!r:.80} of type {type(items).__name__}{hint}"
        ) from None
    for iterating in batch._hooks.iterating:
        iterating(batch, total)
    if not batch._hooks.keys_needed and key is None:
        return zip(iterator, itertools.repeat(None))
    # Each key is made and checked as its item is reached, before the item's work.
    return ((item, item_key(item, key)) for item in iterator)


def done(batch: LoopedBatch, key: ItemKey | None) -> None:
    """An item's work finished: shown to the watchers that record keys, then counted."""
    if key is not None:
        for item_finished in batch._hooks.item_finished:
            item_finished(batch, key)
    batch._advance(1)


def skipped(batch: LoopedBatch, key: ItemKey) -> bool:
    """Whether a watcher skips the item with ``key`` (an earlier run did it); counted."""
    hooks = batch._hooks
    if not any(skips(batch, key) for skips in hooks.skips):
        return False
    with batch._ledger.lock:
        batch._ledger.skipped += 1
    for item_skipped in hooks.item_skipped:
        item_skipped(batch, key)
    return True


def failed(batch: LoopedBatch, key: ItemKey, error: Exception) -> None:
    """Record an item of ``map(on_error="skip")`` whose call raised, and free what it left."""
    failure = ItemFailure.of(key, error)
    with batch._ledger.lock:
        batch._failed_items.append(failure)
    for item_failed in batch._hooks.item_failed:
        item_failed(batch, failure)
    logger.warning(
        # %r: a message from a non-UTF-8 file name must not break a UTF-8 log handler.
        "item %r failed and is skipped: %s: %r",
        key,
        failure.error_type,
        failure.message,
    )
    if is_oom_error(error):
        batch._record_oom(error, retried=False)
        recover_from_oom(error, batch.manager, batch)
    elif batch.every is not None:
        batch.clean_up(f"the failed item {key!r}")


def tracked(
    batch: LoopedBatch, keyed_items: Iterable[tuple[Item, ItemKey | None]]
) -> Generator[Item, None, None]:
    """``track()``'s generator: each loop body is one tracked item."""
    marked, mark = context.tracked_item.get, context.tracked_item.set
    advance = batch._advance  # the hot path: bound once
    for item, key in keyed_items:
        if key is not None and skipped(batch, key):
            continue
        # Generators share their caller's context, so this marks the loop body.
        outer = marked()
        mark(batch)
        try:
            yield item
        finally:
            mark(outer)
        # Reached only when the loop asks for the next item: the body is done.
        if key is None:
            advance(1)
        else:
            done(batch, key)


def check_map(function: object, on_error: object) -> bool:
    """Whether ``map()`` skips failures; an error for a bad function or ``on_error``."""
    if not callable(function):
        raise InvalidArgumentTypeError(f"function must be callable, got {function!r}")
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__
    ):
        # Its items would count (and be journaled as done) when the coroutine is made,
        # before any of its work has run.
        raise InvalidArgumentTypeError(
            f"map() runs plain functions, got the coroutine function {function!r}: await it "
            "in an async for loop and call batch.step() after each item"
        )
    if on_error not in ("raise", "skip"):
        raise InvalidArgumentError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error == "skip"


def mapped(
    batch: LoopedBatch,
    function: Callable[[Item], Result],
    keyed_items: Iterable[tuple[Item, ItemKey | None]],
    *,
    skip_errors: bool,
) -> Generator[Result | _Raised, None, None]:
    """``map()``'s generator: each call is one tracked item."""
    tracked_item = context.tracked_item
    for position, (item, key) in enumerate(keyed_items):
        if key is not None and skipped(batch, key):
            continue
        failure: Exception | None = None
        outer = tracked_item.get()
        tracked_item.set(batch)
        try:
            result = function(item)
        except StopIteration as error:
            if not skip_errors:
                yield _Raised(error)
                return
            failure = error
        except Exception as error:
            if not skip_errors:
                raise
            failure = error
        finally:
            tracked_item.set(outer)
        if failure is not None:
            failed(batch, position if key is None else key, failure)
            del failure
            continue
        done(batch, key)
        yield result
