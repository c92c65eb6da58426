"""Nested ``with`` blocks of batches, the same batch re-entered included: which batch is
current, and which report counts each call."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from memscope import auto_clear, managed_batch
from memscope.batch import ManagedBatch, current_batch

BATCHES = 3

# An operation: enter batch i (a `with` block inside the open ones), leave the innermost
# open block, or make one decorated call.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.integers(0, BATCHES - 1)),
        st.just(("leave", -1)),
        st.just(("call", -1)),
    ),
    max_size=40,
)


@auto_clear(every=1000)
def colorize() -> None:
    """A per-item function; inside a batch each call is one of its items."""


@settings(max_examples=150, deadline=None)
@given(operations)
def test_the_innermost_open_block_is_current_and_counts_each_call(
    steps: list[tuple[str, int]],
) -> None:
    """Whatever the nesting (a batch inside itself too), the batch of the innermost open
    ``with`` block is current, each call counts into its report and no other, and a batch's
    report, made when its outer block ends, holds exactly the calls of that run."""
    batches: list[ManagedBatch] = [managed_batch("cpu", every=None) for _ in range(BATCHES)]
    open_blocks: list[int] = []
    holds = [0] * BATCHES
    calls_this_run = [0] * BATCHES

    def leave_innermost() -> None:
        index = open_blocks.pop()
        batches[index].__exit__(None, None, None)
        holds[index] -= 1
        if holds[index] == 0:
            report = batches[index].report
            assert (report.calls, report.items) == (calls_this_run[index],) * 2

    for action, index in steps:
        if action == "enter":
            if holds[index] == 0:
                calls_this_run[index] = 0
            batches[index].__enter__()
            holds[index] += 1
            open_blocks.append(index)
        elif action == "leave" and open_blocks:
            leave_innermost()
        elif action == "call":
            colorize()
            if open_blocks:
                calls_this_run[open_blocks[-1]] += 1
        expected = batches[open_blocks[-1]] if open_blocks else None
        assert current_batch() is expected
        assert [batch.active for batch in batches] == [count > 0 for count in holds]
    while open_blocks:
        leave_innermost()
    assert current_batch() is None
