"""memscope's own per-call cost: an ``@auto_clear`` call with no cleanup due, less wrapt's.

Run ``python -m benchmarks.call_overhead``; to compare with another checkout, run it there too
(``PYTHONPATH=/path/to/checkout python -m benchmarks.call_overhead``), alternating, and
compare the last column. Best of many rounds, so a busy machine's slow moments drop out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import wrapt

from memscope import MemoryManager, auto_clear


def bare() -> None:
    """The decorated function: does nothing, so only the wrapping costs."""


def pass_through(
    wrapped: Callable[[], None], instance: object, args: tuple[()], kwargs: dict[str, object]
) -> None:
    return wrapped(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.call_overhead")
    parser.add_argument("--rounds", type=int, default=15, help="rounds, best kept (15)")
    parser.add_argument("--calls", type=int, default=50_000, help="calls per round (50000)")
    arguments = parser.parse_args(argv)
    wrapped = wrapt.FunctionWrapper(bare, pass_through)
    decorated = auto_clear(every=10**12, manager=MemoryManager("cpu"))(bare)
    best = {"wrapt": float("inf"), "auto_clear": float("inf")}
    for _ in range(arguments.rounds):
        for name, function in (("wrapt", wrapped), ("auto_clear", decorated)):
            started = time.perf_counter_ns()
            for _ in range(arguments.calls):
                function()
            best[name] = min(best[name], (time.perf_counter_ns() - started) / arguments.calls)
    part = best["auto_clear"] - best["wrapt"]
    sys.stdout.write(
        f"wrapt pass-through {best['wrapt']:.0f} ns, @auto_clear {best['auto_clear']:.0f} ns, "
        f"memscope's part {part:.0f} ns\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
