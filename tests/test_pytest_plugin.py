"""memscope's pytest plugin, run on test suites of its own through pytest's ``pytester``."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import memscope.pytest_plugin
from memscope.estimation import host_peak
from memscope.testing import FakeDevice

pytest_plugins = ["pytester"]

# --strict-markers proves the plugin registers every marker it reads.
STRICT = ("--strict-markers", "-p", "no:cacheprovider")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(*STRICT, *args)


def test_pytest_loads_the_plugin_through_its_entry_point(pytester: pytest.Pytester) -> None:
    """pytest finds the plugin as ``memscope`` (the pytest11 entry point) with no -p option."""
    config = pytester.parseconfigure()
    assert config.pluginmanager.get_plugin("memscope") is memscope.pytest_plugin


def test_loading_the_plugin_imports_nothing_beyond_memscope() -> None:
    """Importing the plugin after pytest and memscope's core (which imports torch) imports
    only memscope's own modules."""
    code = (
        "import sys, pytest, memscope.manager, memscope.leaks\n"
        "before = set(sys.modules)\n"
        "import memscope.pytest_plugin\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    added = eval(result.stdout)
    assert added, "the plugin module itself is new"
    assert [name for name in added if not name.startswith("memscope.")] == []


def test_an_unmarked_suite_touches_no_device(pytester: pytest.Pytester) -> None:
    """Without markers or --memscope the plugin makes no torch call on the device."""
    pytester.makepyfile(
        """
        def test_one():
            assert 1 + 1 == 2

        def test_two():
            pass
        """
    )
    with FakeDevice("cuda") as fake:
        result = _run(pytester)
    result.assert_outcomes(passed=2)
    assert fake.calls == []
    assert "memscope: peak device memory" not in result.stdout.str()


LEAKS = """
import pytest
import torch

from memscope.testing import MiB

HELD = []


@pytest.mark.limit_device_leaks("1 MiB")
def test_leaks(fake_cuda):
    fake_cuda.set_memory(allocated=fake_cuda.memory[0].allocated + 3 * MiB)
    HELD.append(torch.zeros(256))


@pytest.mark.limit_device_leaks("1 MiB")
def test_leaks_exactly_the_tolerance(fake_cuda):
    fake_cuda.set_memory(allocated=fake_cuda.memory[0].allocated + MiB)


@pytest.mark.limit_device_leaks("1 MiB")
def test_clean(fake_cuda):
    fake_cuda.set_memory(allocated=5 * MiB)
    fake_cuda.set_memory(allocated=0)
"""


def test_a_leaking_test_fails_with_the_bytes_and_what_holds_them(
    pytester: pytest.Pytester,
) -> None:
    """3 MiB left on the fake card fails a 1 MiB tolerance, naming the list holding a tensor;
    a clean test and one at exactly the tolerance pass."""
    pytester.makepyfile(test_plugin_leaks=LEAKS)
    result = _run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    assert _failed_names(result) == ["test_leaks"]
    result.stdout.fnmatch_lines(
        [
            "*limit_device_leaks: 3.0 MiB (3,145,728 bytes) of cuda:0 memory still held after "
            "the test (after gc.collect() and emptying the cache), over the tolerance of "
            "1.0 MiB (1,048,576 bytes)",
            "*tensors the test made that are still alive:",
            "*list `HELD` in module test_plugin_leaks holds 1 tensor of 256 float32 on cpu, "
            "1.0 KiB",
        ]
    )


def _failed_names(result: pytest.RunResult) -> list[str]:
    """The tests the short summary lists as failed, in the order they ran."""
    return [
        line.split()[1].rpartition("::")[2]
        for line in result.stdout.lines
        if line.startswith("FAILED ")
    ]


WARMUPS = """
import pytest

from memscope.testing import MiB

RUNS = []
CACHES = set()


def step(fake, name):
    RUNS.append(name)
    # A cache made on the first call only, as a lazily built lookup table is.
    if name not in CACHES:
        CACHES.add(name)
        fake.set_memory(allocated=fake.memory[0].allocated + 2 * MiB)


@pytest.mark.limit_device_leaks("0 B", warmups=2)
def test_warm(fake_cuda):
    step(fake_cuda, "warm")


@pytest.mark.limit_device_leaks("0 B")
def test_cold(fake_cuda):
    step(fake_cuda, "cold")


def test_runs():
    assert RUNS == ["warm", "warm", "warm", "cold"]
"""


def test_a_cache_made_during_the_warm_ups_does_not_count(pytester: pytest.Pytester) -> None:
    """With warmups=2 the body runs 3 times and a first-call cache passes; without, it fails."""
    pytester.makepyfile(test_plugin_warmups=WARMUPS)
    result = _run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    assert _failed_names(result) == ["test_cold"]
    result.stdout.fnmatch_lines(["*limit_device_leaks: 2.0 MiB (2,097,152 bytes) of cuda:0*"])


PEAKS = """
import pytest

from memscope.testing import GiB


@pytest.fixture
def busy_before(fake_cuda):
    # Memory the test's setup peaked at and still holds 1 GiB of.
    fake_cuda.set_memory(allocated=7 * GiB)
    fake_cuda.set_memory(allocated=1 * GiB)
    return fake_cuda


@pytest.mark.fake_device_total("8 GiB")
@pytest.mark.limit_device_memory("6 GiB")
def test_over(busy_before):
    assert busy_before.memory[0].total == 8 * GiB
    busy_before.set_memory(allocated=7 * GiB)
    busy_before.set_memory(allocated=1 * GiB)


@pytest.mark.limit_device_memory("6 GiB")
def test_setup_peak_does_not_count(busy_before):
    assert busy_before.count("torch.cuda.reset_peak_memory_stats") == 1
    busy_before.set_memory(allocated=6 * GiB)
    busy_before.set_memory(allocated=1 * GiB)


@pytest.mark.limit_device_memory("6 GiB")
def test_mps_lower_bound(fake_mps):
    fake_mps.set_memory(allocated=7 * GiB)
"""


def test_a_peak_over_the_limit_fails_with_peak_limit_and_device(
    pytester: pytest.Pytester,
) -> None:
    """A 7 GiB peak fails a 6 GiB limit on cuda:0; a peak before the test does not count; MPS
    is checked against what is allocated at the end, said to be a lower bound."""
    pytester.makepyfile(test_plugin_peaks=PEAKS)
    result = _run(pytester)
    result.assert_outcomes(passed=1, failed=2)
    assert _failed_names(result) == ["test_over", "test_mps_lower_bound"]
    result.stdout.fnmatch_lines(
        [
            "*limit_device_memory: peak device memory 7.0 GiB (7,516,192,768 bytes) allocated "
            "on cuda:0, over the limit of 6.0 GiB (6,442,450,944 bytes); 1.0 GiB of it was "
            "allocated before the test",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*limit_device_memory: peak device memory at least 7.0 GiB (7,516,192,768 bytes) "
            "allocated on mps, over the limit of 6.0 GiB (6,442,450,944 bytes) (mps keeps no "
            "peak statistics: this is what was allocated at the end of the test)",
        ]
    )


@pytest.mark.skipif(not host_peak.usable(), reason="this system cannot reset the peak RSS")
def test_on_the_cpu_the_limit_is_on_host_memory(pytester: pytest.Pytester) -> None:
    """Without an accelerator, 64 MiB written on the heap fails a 16 MiB limit as host memory."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.limit_device_memory("16 MiB")
        def test_big():
            block = b"x" * (64 * 1024 * 1024)
            assert len(block) == 64 * 1024 * 1024
        """
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*limit_device_memory: the process's peak resident memory (host memory) rose by "
            "6?.? MiB*, over the limit of 16.0 MiB (16,777,216 bytes)"
        ]
    )


BAD_MARKERS = {
    "test_plugin_unit": (
        "@pytest.mark.limit_device_memory('6 GX')",
        "limit '6 GX' has an unknown unit",
    ),
    "test_plugin_missing": ("@pytest.mark.limit_device_memory()", "missing a required argument"),
    "test_plugin_keyword": (
        "@pytest.mark.limit_device_memory('6 GiB', devise='cuda')",
        "got an unexpected keyword argument 'devise'",
    ),
    "test_plugin_float": ("@pytest.mark.limit_device_leaks(1.5)", "tolerance must be a byte count"),
    "test_plugin_warmups": (
        "@pytest.mark.limit_device_leaks('1 MiB', warmups=-1)",
        "warmups must be an int >= 0, got -1",
    ),
    "test_plugin_warmups_bool": (
        "@pytest.mark.limit_device_leaks('1 MiB', warmups=True)",
        "warmups must be an int, got True",
    ),
    "test_plugin_device": (
        "@pytest.mark.limit_device_memory('1 GiB', device='gpu0')",
        "device 'gpu0' is not a device torch knows",
    ),
    "test_plugin_total": (
        "@pytest.mark.fake_device_total('0 B')",
        "total must be more than 0 bytes",
    ),
}


def test_bad_marker_arguments_are_collection_errors(pytester: pytest.Pytester) -> None:
    """Each bad argument makes its module a collection error naming the marker and the value."""
    for module, (marker, _) in BAD_MARKERS.items():
        pytester.makepyfile(**{module: f"import pytest\n\n{marker}\ndef test_it():\n    pass\n"})
    pytester.makepyfile(
        test_plugin_two_devices="""
        import pytest

        @pytest.mark.limit_device_memory("1 GiB", device="cuda")
        @pytest.mark.limit_device_leaks("1 MiB", device="cpu")
        def test_it():
            pass
        """
    )
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=len(BAD_MARKERS) + 1)
    output = result.stdout.str()
    for module, (marker, reason) in BAD_MARKERS.items():
        assert f"{module}.py::test_it: {marker}: {reason}" in output, module
    assert (
        "@pytest.mark.limit_device_memory('1 GiB', device='cuda') and "
        "@pytest.mark.limit_device_leaks('1 MiB', device='cpu') measure different devices"
    ) in output


TABLE = """
import pytest

from memscope.testing import GiB, MiB


def peak_at(fake, size, left=0):
    fake.set_memory(allocated=size)
    fake.set_memory(allocated=left)


def test_one(fake_cuda):
    peak_at(fake_cuda, 1 * GiB)


def test_three(fake_cuda):
    peak_at(fake_cuda, 3 * GiB, left=5 * MiB)


def test_two(fake_cuda):
    peak_at(fake_cuda, 2 * GiB)
"""


def _table(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "memscope: peak device memory" in line)
    return lines[start : start + 5]


def test_the_memscope_table_lists_tests_largest_peak_first(pytester: pytest.Pytester) -> None:
    """--memscope lists each test's peak and what it left behind, largest peak first."""
    pytester.makepyfile(test_plugin_table=TABLE)
    result = _run(pytester, "--memscope")
    result.assert_outcomes(passed=3)
    table = _table(result)
    assert "memscope: peak device memory, largest first" in table[0]
    assert table[1].split() == ["peak", "left", "behind", "device", "test"]
    assert table[2].split() == [
        "3.0",
        "GiB",
        "5.0",
        "MiB",
        "cuda:0",
        "test_plugin_table.py::test_three",
    ]
    assert table[3].split() == ["2.0", "GiB", "0", "B", "cuda:0", "test_plugin_table.py::test_two"]
    assert table[4].split() == ["1.0", "GiB", "0", "B", "cuda:0", "test_plugin_table.py::test_one"]


def test_memscope_top_cuts_the_table(pytester: pytest.Pytester) -> None:
    """--memscope-top 2 keeps the two largest and says how many there were."""
    pytester.makepyfile(test_plugin_table=TABLE)
    result = _run(pytester, "--memscope", "--memscope-top", "2")
    table = _table(result)
    assert "(top 2 of 3; --memscope-top 0 lists all)" in table[0]
    assert [line.split()[-1] for line in table[2:4]] == [
        "test_plugin_table.py::test_three",
        "test_plugin_table.py::test_two",
    ]
    assert "test_plugin_table.py::test_one" not in result.stdout.str()


def test_a_negative_memscope_top_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """--memscope-top -1 stops the run with a message naming the option and the value."""
    result = _run(pytester, "--memscope", "--memscope-top", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memscope-top must be 0 (all tests) or more, got -1*"])


def test_the_table_works_under_xdist(pytester: pytest.Pytester) -> None:
    """Under -n 2 each worker measures its tests and the controller lists them all, in order."""
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (pip install pytest-xdist)")
    pytester.makepyfile(test_plugin_table=TABLE)
    result = pytester.runpytest_subprocess(*STRICT, "-n", "2", "--memscope")
    result.assert_outcomes(passed=3)
    assert [line.split()[-1] for line in _table(result)[2:]] == [
        "test_plugin_table.py::test_three",
        "test_plugin_table.py::test_two",
        "test_plugin_table.py::test_one",
    ]


FIXTURES = """
import pytest
import torch

from memscope import MemoryManager
from memscope.testing import GiB, MiB

IS_AVAILABLE = torch.cuda.is_available


@pytest.mark.fake_device_total("8 GiB")
def test_factory(fake_device_factory):
    xpu = fake_device_factory("xpu", total="2 GiB", device_count=2)
    cuda = fake_device_factory()
    assert MemoryManager("xpu:1").snapshot().total == 2 * GiB
    assert xpu.device_count == 2
    assert cuda.memory[0].total == 8 * GiB


@pytest.fixture
def xpu(fake_device_factory):
    # Made in a fixture: the device must be there when the measured test starts.
    return fake_device_factory("xpu")


@pytest.mark.limit_device_leaks("0 B", device="xpu")
def test_leak_on_a_factory_device(xpu):
    xpu.set_memory(allocated=xpu.memory[0].allocated + MiB)


@pytest.mark.limit_device_leaks("0 B")
def test_a_failing_cache_clear_does_not_fail_the_test(fake_cuda):
    fake_cuda.fail("torch.cuda.empty_cache", RuntimeError("driver says no"))


@pytest.mark.limit_device_leaks("0 B")
def test_its_own_failure_is_what_is_reported(fake_cuda):
    fake_cuda.set_memory(allocated=5 * MiB)
    raise ValueError("the test's own failure")


def test_no_accelerator(no_accelerator):
    assert MemoryManager().resolved_device.type == "cpu"


def test_fakes_are_gone_after_their_tests():
    assert torch.cuda.is_available is IS_AVAILABLE
    assert not torch.accelerator.is_available()
"""


def test_fixtures_give_fake_devices_and_leave_nothing_behind(pytester: pytest.Pytester) -> None:
    """fake_device_factory makes sized fakes a marker can measure; no_accelerator hides all;
    torch is as it was once their tests end; a failing cache clear or the test's own error is
    never turned into a memscope failure."""
    pytester.makepyfile(test_plugin_fixtures=FIXTURES)
    result = _run(pytester)
    result.assert_outcomes(passed=4, failed=2)
    assert _failed_names(result) == [
        "test_leak_on_a_factory_device",
        "test_its_own_failure_is_what_is_reported",
    ]
    result.stdout.fnmatch_lines(["*1.0 MiB (1,048,576 bytes) of xpu:0 memory still held*"])
    result.stdout.fnmatch_lines(["E*ValueError: the test's own failure"])
    # Once, for the leak; the test's own failure is reported as itself. (The short summary,
    # whose form differs between pytest versions, is left out of the count.)
    reported = [line for line in result.stdout.lines if not line.startswith("FAILED ")]
    assert sum("limit_device_leaks:" in line for line in reported) == 1


DOCS_PAGE = Path(__file__).parent.parent / "docs" / "pytest.md"


def test_the_documented_example_runs_as_the_page_says(pytester: pytest.Pytester) -> None:
    """docs/pytest.md's complete example passes two tests and shows the third's failure."""
    example = re.search(
        r"```python\n(# test_inference.py\n.*?)^```",
        DOCS_PAGE.read_text(),
        flags=re.DOTALL | re.MULTILINE,
    )
    assert example is not None
    pytester.makepyfile(test_plugin_inference=example.group(1))
    result = _run(pytester, "-rx")
    result.assert_outcomes(passed=2, xfailed=1)
    pytester.makepyfile(test_plugin_inference=example.group(1).replace("@pytest.mark.xfail", "# "))
    result = _run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    shown = re.search(
        r"without the `xfail` marker it fails with:\n\n```text\n(.*?)\n```", DOCS_PAGE.read_text()
    )
    assert shown is not None
    assert shown.group(1) in result.stdout.str()


@pytest.mark.gpu
def test_the_markers_on_a_real_card(pytester: pytest.Pytester, accelerator: str) -> None:
    """On a real card: a leaking test fails with its bytes, a clean one passes, a warm-up cache
    does not count, and a peak over the limit fails."""
    pytester.makepyfile(
        test_plugin_real=textwrap.dedent(
            f"""
            import pytest
            import torch

            DEVICE = {accelerator!r}
            MiB = 1024 * 1024
            HELD = []
            CACHE = []


            @pytest.mark.limit_device_leaks("1 MiB")
            def test_leaks():
                HELD.append(torch.empty(4 * MiB, dtype=torch.uint8, device=DEVICE))


            @pytest.mark.limit_device_leaks("1 MiB")
            def test_clean():
                block = torch.empty(64 * MiB, dtype=torch.uint8, device=DEVICE)
                del block


            @pytest.mark.limit_device_leaks("1 MiB", warmups=1)
            def test_warm_cache():
                if not CACHE:
                    CACHE.append(torch.empty(8 * MiB, dtype=torch.uint8, device=DEVICE))


            @pytest.mark.limit_device_memory("16 MiB")
            def test_peak():
                block = torch.empty(64 * MiB, dtype=torch.uint8, device=DEVICE)
                del block
            """
        )
    )
    result = _run(pytester, "--memscope")
    result.assert_outcomes(passed=2, failed=2)
    assert _failed_names(result) == ["test_leaks", "test_peak"]
    result.stdout.fnmatch_lines(["*limit_device_leaks: 4.0 MiB (4,194,304 bytes) of *"])
    result.stdout.fnmatch_lines(
        ["*list `HELD` in module test_plugin_real holds 1 tensor of 4194304 *"]
    )
    result.stdout.fnmatch_lines(["*limit_device_memory: peak device memory 64.0 MiB*"])


class _Report:
    """What the table reads of a test report."""

    def __init__(self, when: str, row: dict[str, object]) -> None:
        self.when = when
        self.user_properties = [("other", 1), ("memscope", row)]


class _Terminal:
    """Records what the table writes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_sep(self, sep: str, title: str) -> None:
        self.lines.append(title)

    def write_line(self, line: str) -> None:
        self.lines.append(line)


@given(
    st.lists(
        st.tuples(st.none() | st.integers(0, 2**40), st.none() | st.integers(-(2**30), 2**30)),
        max_size=30,
    ),
    st.integers(0, 40),
)
def test_the_table_lists_each_measured_test_once_largest_first(
    figures: list[tuple[int | None, int | None]], top: int
) -> None:
    """Every call-phase row is listed once (setup and teardown reports add none), sorted by
    peak then what was left behind, unknown peaks last, ties in run order; top cuts it."""
    table = memscope.pytest_plugin._MemscopeTable(top)
    rows = []
    for index, (peak, left) in enumerate(figures):
        row = {
            "nodeid": f"t.py::test_{index}",
            "device": "cuda:0",
            "peak": peak,
            "left_behind": left,
        }
        rows.append(row)
        table.pytest_runtest_logreport(_Report("setup", row))  # type: ignore[arg-type]
        table.pytest_runtest_logreport(_Report("call", row))  # type: ignore[arg-type]
    terminal = _Terminal()
    table.pytest_terminal_summary(terminal)  # type: ignore[arg-type]
    if not rows:
        assert terminal.lines[1] == "no test was measured"
        return
    listed = [line.split()[-1] for line in terminal.lines[2:-1]]
    expected = sorted(
        rows, key=lambda row: (row["peak"] is None, -(row["peak"] or 0), -(row["left_behind"] or 0))
    )
    wanted = [row["nodeid"] for row in expected]
    assert listed == (wanted if top == 0 else wanted[:top])
    assert len(set(listed)) == len(listed)
