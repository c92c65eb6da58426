"""memscope's pytest plugin: device-memory limits and leak checks in your own test suite.

pytest loads it through the ``pytest11`` entry point ``memscope`` once memscope is installed.
It does nothing to a test that uses none of it: no fixture is autouse, and no device is
touched unless a test carries one of its markers or the run asks for ``--memscope``::

    import pytest

    @pytest.mark.limit_device_memory("6 GiB")
    @pytest.mark.limit_device_leaks("1 MiB", warmups=1)
    def test_inference_step(model, batch):
        model(batch)

- ``@pytest.mark.limit_device_memory(limit, device=None)`` fails the test when its peak
  device memory is over ``limit``: the allocator's peak (reset when the test starts) on
  CUDA and other accelerators, the process's peak resident memory's growth on the CPU
  (host memory). MPS keeps no peak statistics: there the check reads what is allocated at
  the end of the test, a lower bound, and says so.
- ``@pytest.mark.limit_device_leaks(tolerance, warmups=0, device=None)`` runs the test body
  ``warmups`` extra times first, then fails the test when more than ``tolerance`` is still
  held after the measured run (after ``gc.collect()`` and emptying the cache) than before
  it, naming the tensors the test made that are still alive and what holds them.
- ``device`` is the device memscope detects by default; sizes are read by
  :func:`memscope.parse_bytes`. A bad argument is a collection error naming the marker and
  the value.
- The fixtures :func:`fake_cuda`, :func:`fake_mps`, :func:`fake_device_factory` and
  :func:`no_accelerator` give a test a :class:`memscope.testing.FakeDevice` (its total set
  by ``@pytest.mark.fake_device_total("8 GiB")``) or a CPU-only machine, so the markers and
  GPU code paths run on a machine without a GPU.
- ``pytest --memscope`` measures every test and lists the largest peaks, with what each test
  left behind, in the terminal summary (``--memscope-top N``, 0 for all). Under pytest-xdist
  each worker measures its own tests and sends its rows with the test reports.

See ``docs/pytest.md`` for a complete example and how this differs from pytest-memray.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from memscope._pytest_checks import (
    FAKE_TOTAL_MARKER,
    LEAKS_MARKER,
    MARKER_HELP,
    MEMORY_MARKER,
    DeviceProbe,
    ItemChecks,
    MarkerError,
    Measurement,
    leak_failure,
    marker_text,
    memory_failure,
    read_marker,
    surviving_tensors,
)
from memscope.leaks import SuspectSearch
from memscope.testing import FakeDevice, NoAccelerator
from memscope.units import format_bytes, parse_bytes

__all__ = ["fake_cuda", "fake_device_factory", "fake_mps", "no_accelerator"]

logger = logging.getLogger("memscope")

DEFAULT_TOP = 10
"""How many tests the ``--memscope`` table lists unless ``--memscope-top`` says otherwise."""

_CHECKS = pytest.StashKey[ItemChecks]()
_PROPERTY = "memscope"
"""The name of the ``user_properties`` entry that carries a test's row to the table."""


# Options and markers --------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memscope", "device memory (memscope)")
    group.addoption(
        "--memscope",
        action="store_true",
        default=False,
        help="measure every test's peak device memory and what it leaves behind, and list "
        "the largest in the terminal summary",
    )
    group.addoption(
        "--memscope-top",
        type=int,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"how many tests the --memscope table lists, largest first (0: all; "
        f"default {DEFAULT_TOP})",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKER_HELP.values():
        config.addinivalue_line("markers", line)
    top = config.getoption("memscope_top")
    if top < 0:
        raise pytest.UsageError(f"--memscope-top must be 0 (all tests) or more, got {top}")
    # An xdist worker measures and sends rows; the controller, which gets every report, lists.
    if config.getoption("memscope") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_MemscopeTable(top), "memscope-table")


def _read_checks(item: pytest.Item) -> ItemChecks:
    """The item's memscope markers, read; :class:`MarkerError` naming a bad one."""
    read: dict[str, Any] = {}
    devices: dict[str, str] = {}
    for name in (MEMORY_MARKER, LEAKS_MARKER, FAKE_TOTAL_MARKER):
        mark = item.get_closest_marker(name)
        if mark is None:
            continue
        read[name] = read_marker(name, tuple(mark.args), dict(mark.kwargs))
        if name != FAKE_TOTAL_MARKER:
            devices[marker_text(name, tuple(mark.args), dict(mark.kwargs))] = str(read[name].device)
    if len(set(devices.values())) > 1:
        raise MarkerError(
            f"{' and '.join(devices)} measure different devices; one test measures one device"
        )
    return ItemChecks(read.get(MEMORY_MARKER), read.get(LEAKS_MARKER), read.get(FAKE_TOTAL_MARKER))


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, Any]:
    # Checked here, inside the collector's collect(), a bad marker is a collection error
    # of the test's module, reported before any test runs.
    result = yield
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Function):
            try:
                item.stash[_CHECKS] = _read_checks(item)
            except MarkerError as error:
                raise pytest.Collector.CollectError(f"{item.nodeid}: {error}") from None
    return result


def _checks(item: pytest.Item) -> ItemChecks:
    checks = item.stash.get(_CHECKS, None)
    if checks is None:
        # An item some other collector made: its markers are read when it runs.
        checks = item.stash[_CHECKS] = _read_checks(item)
    return checks


# Measuring a test -----------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    checks = _checks(pyfuncitem)
    table = bool(pyfuncitem.config.getoption("memscope"))
    if not checks.measures and not table:
        return (yield)
    test_function = pyfuncitem.obj
    if inspect.iscoroutinefunction(test_function) or inspect.isasyncgenfunction(test_function):
        if checks.measures:
            pytest.fail(
                f"{pyfuncitem.nodeid}: memscope's markers measure synchronous test functions "
                "only; call the async code through asyncio.run() in a plain test",
                pytrace=False,
            )
        return (yield)
    # The test body is run through the test function itself, as pytest would run it, so
    # warm-up runs see the same fixtures and the measured run is the test's own.
    pyfuncitem.obj = _measuring(pyfuncitem, test_function, checks)
    try:
        return (yield)
    finally:
        pyfuncitem.obj = test_function


def _measuring(
    item: pytest.Function, test_function: Callable[..., object], checks: ItemChecks
) -> Callable[..., object]:
    warmups = 0 if checks.leaks is None else checks.leaks.warmups
    limit = checks.memory or checks.leaks
    device = None if limit is None else limit.device

    @functools.wraps(test_function)
    def measured(*args: Any, **kwargs: Any) -> object:
        for _ in range(warmups):
            test_function(*args, **kwargs)
        try:
            probe = DeviceProbe(device)
        except Exception as error:
            if checks.measures:
                raise
            # Only the --memscope table asked: an unmeasurable test still runs.
            logger.warning("%s: not measured: %r", item.nodeid, error)
            return test_function(*args, **kwargs)
        held_before = probe.held()
        search = None if checks.leaks is None else SuspectSearch()
        probe.start_peak()
        result = test_function(*args, **kwargs)
        measurement = _measure(probe, held_before)
        item.user_properties.append((_PROPERTY, measurement.to_row(item.nodeid)))
        failures = _failures(checks, measurement, search)
        if failures:
            pytest.fail("\n".join(failures), pytrace=False)
        return result

    return measured


def _measure(probe: DeviceProbe, held_before: int | None) -> Measurement:
    peak, lower_bound = probe.read_peak()
    held_at_peak_start = probe.held_at_start
    held_after = probe.held()
    left_behind = None
    if held_before is not None and held_after is not None:
        left_behind = held_after - held_before
    return Measurement(probe.device, peak, held_at_peak_start, left_behind, lower_bound)


def _failures(
    checks: ItemChecks, measurement: Measurement, search: SuspectSearch | None
) -> list[str]:
    failures = []
    if checks.memory is not None:
        if measurement.peak is None:
            _cannot_check(MEMORY_MARKER, measurement.device, "its peak memory")
        failure = memory_failure(checks.memory, measurement)
        if failure is not None:
            failures.append(failure)
    if checks.leaks is not None:
        if measurement.left_behind is None:
            _cannot_check(LEAKS_MARKER, measurement.device, "the memory it holds")
        if (
            search is not None
            and measurement.left_behind is not None
            and measurement.left_behind > checks.leaks.tolerance
        ):
            failure = leak_failure(checks.leaks, measurement, surviving_tensors(search))
            if failure is not None:
                failures.append(failure)
    return failures


def _cannot_check(marker: str, device: str, what: str) -> None:
    # Not a failure (the test did nothing wrong), but never silent either.
    message = f"{marker} could not be checked: memscope cannot read {what} on {device} here"
    logger.warning(message)
    warnings.warn(pytest.PytestWarning(message), stacklevel=2)


# The --memscope table -------------------------------------------------------------------


class _MemscopeTable:
    """Collects every test's row from the reports (an xdist worker's too) and lists them."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == _PROPERTY and isinstance(value, dict):
                self.rows.append(value)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        # sorted() is stable: tests with equal figures stay in the order they ran.
        rows = sorted(
            self.rows,
            key=lambda row: (
                row["peak"] is None,
                -(row["peak"] or 0),
                -(row["left_behind"] or 0),
            ),
        )
        shown = rows if self.top == 0 else rows[: self.top]
        title = "memscope: peak device memory, largest first"
        if len(shown) < len(rows):
            title += f" (top {len(shown)} of {len(rows)}; --memscope-top 0 lists all)"
        terminalreporter.write_sep("=", title)
        if not rows:
            terminalreporter.write_line("no test was measured")
            return
        terminalreporter.write_line(f"{'peak':>12} {'left behind':>12}  {'device':<12} test")
        for row in shown:
            terminalreporter.write_line(
                f"{format_bytes(row['peak']):>12} {format_bytes(row['left_behind']):>12}  "
                f"{row['device']:<12} {row['nodeid']}"
            )
        terminalreporter.write_line(
            "peak: the allocator's peak during the test (host memory: how far the process's "
            "peak resident memory rose); left behind: held after the test, after gc.collect() "
            "and emptying the cache, less what was held before it"
        )


# Fixtures -------------------------------------------------------------------------------


_DEFAULT_FAKE_TOTAL: int = inspect.signature(FakeDevice).parameters["total"].default


def _fake_total(request: pytest.FixtureRequest) -> int:
    """A fake device's total: the test's ``fake_device_total`` marker's, else FakeDevice's."""
    node = request.node
    total = _checks(node).fake_total if isinstance(node, pytest.Item) else None
    return _DEFAULT_FAKE_TOTAL if total is None else total


@pytest.fixture
def fake_cuda(request: pytest.FixtureRequest) -> Iterator[FakeDevice]:
    """A fake CUDA device, :class:`memscope.testing.FakeDevice`, active for the test.

    Its total memory is 16 GiB, or what ``@pytest.mark.fake_device_total("8 GiB")`` says.
    The markers' own queries are recorded among its calls too.
    """
    with FakeDevice("cuda", total=_fake_total(request)) as fake:
        yield fake


@pytest.fixture
def fake_mps(request: pytest.FixtureRequest) -> Iterator[FakeDevice]:
    """A fake MPS device, :class:`memscope.testing.FakeDevice`, active for the test.

    Its total memory (Metal's recommended working set) is 16 GiB, or what
    ``@pytest.mark.fake_device_total("8 GiB")`` says.
    """
    with FakeDevice("mps", total=_fake_total(request)) as fake:
        yield fake


@pytest.fixture
def fake_device_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., FakeDevice]]:
    """Makes fake devices, active until the test ends: ``make("xpu", total="8 GiB")``.

    The function takes ``device_type`` (default ``"cuda"``), ``total`` (bytes or a size;
    default the ``fake_device_total`` marker's, else 16 GiB) and ``device_count``; the
    devices it makes are left in reverse order when the test ends.
    """
    default = _fake_total(request)
    with contextlib.ExitStack() as stack:

        def make(
            device_type: str = "cuda", *, total: int | str | None = None, device_count: int = 1
        ) -> FakeDevice:
            size = default if total is None else parse_bytes(total, "total")
            fake = FakeDevice(device_type, device_count=device_count, total=size)
            return stack.enter_context(fake)

        yield make


@pytest.fixture
def no_accelerator() -> Iterator[NoAccelerator]:
    """A CPU-only machine for the test: torch reports no CUDA, MPS or other accelerator."""
    with NoAccelerator() as hidden:
        yield hidden
