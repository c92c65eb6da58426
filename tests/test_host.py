"""Host memory: reading resident memory and the effective limit, and host=True managers."""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import memscope.host
import memscope.manager
from memscope import BatchReport, MemoryManager, MemscopeError, managed_batch
from memscope.exceptions import (
    HostMemoryUnavailableError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MemoryFiguresUnavailableError,
)
from memscope.host import (
    NO_LIMIT_FROM,
    HostMemoryLimit,
    HostMemoryMonitor,
    cgroup_memory_limit,
    effective_memory_limit,
    physical_memory_from_meminfo,
    resident_bytes_from_status,
    rlimit_memory_limit,
)
from memscope.testing import FakeDevice, FakeHost, GiB, MiB

CGROUP_V1_NO_LIMIT = "9223372036854771712"
LINUX_PROC = Path("/proc/self/statm").exists()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_getrlimit(**soft_limits: int) -> Callable[[int], tuple[int, int]]:
    """A getrlimit answering ``soft_limits`` by name (RLIMIT_AS=...), unlimited otherwise."""
    by_number = {getattr(resource, name): limit for name, limit in soft_limits.items()}

    def getrlimit(which: int) -> tuple[int, int]:
        return by_number.get(which, resource.RLIM_INFINITY), resource.RLIM_INFINITY

    return getrlimit


# Reading /proc -------------------------------------------------------------------------------


def test_statm_resident_is_second_field_in_pages(tmp_path: Path) -> None:
    """statm's second field counts resident pages; a file with fewer fields is an error."""
    statm = write(tmp_path / "self" / "statm", "90000 2500 300 10 0 4000 0\n")
    reader = memscope.host._kept_open_statm_reader(tmp_path)
    assert reader is not None
    assert reader() == 2500 * os.sysconf("SC_PAGE_SIZE")
    statm.write_text("90000\n")
    with pytest.raises(ValueError, match="not a statm file"):
        reader()


def test_status_resident_is_vmrss_in_kibibytes(tmp_path: Path) -> None:
    """status's VmRSS line is in kB, which /proc means as KiB."""
    status = write(tmp_path / "status", "Name:\tpython\nVmPeak:\t 999 kB\nVmRSS:\t  204800 kB\n")
    assert resident_bytes_from_status(status) == 200 * MiB


def test_status_without_vmrss_is_an_error(tmp_path: Path) -> None:
    """A status file without VmRSS (a kernel thread's) cannot give a figure."""
    status = write(tmp_path / "status", "Name:\tkthreadd\n")
    with pytest.raises(ValueError, match="VmRSS"):
        resident_bytes_from_status(status)


def test_meminfo_memtotal_is_physical_memory(tmp_path: Path) -> None:
    """MemTotal in kB is the machine's RAM; a missing file tells nothing."""
    meminfo = write(tmp_path / "meminfo", "MemTotal:       16384000 kB\nMemFree: 1 kB\n")
    assert physical_memory_from_meminfo(meminfo) == 16_384_000 * 1024
    assert physical_memory_from_meminfo(tmp_path / "missing") is None


# cgroups ------------------------------------------------------------------------------------


def test_cgroup_v2_limit_of_the_process_group(tmp_path: Path) -> None:
    """cgroup v2: memory.max of the group named in /proc/self/cgroup."""
    membership = write(tmp_path / "proc" / "cgroup", "0::/user.slice/job.scope\n")
    root = tmp_path / "cgroup"
    write(root / "user.slice" / "job.scope" / "memory.max", f"{4 * GiB}\n")
    write(root / "user.slice" / "memory.max", "max\n")
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == 4 * GiB
    assert "memory.max" in limit.source
    assert "job.scope" in limit.source


def test_cgroup_v2_parent_limit_binds_the_child(tmp_path: Path) -> None:
    """A parent's tighter limit wins over the group's own."""
    membership = write(tmp_path / "proc" / "cgroup", "0::/user.slice/job.scope\n")
    root = tmp_path / "cgroup"
    write(root / "user.slice" / "job.scope" / "memory.max", f"{8 * GiB}\n")
    write(root / "user.slice" / "memory.max", f"{2 * GiB}\n")
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == 2 * GiB


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    """'max' everywhere: no cgroup limit."""
    membership = write(tmp_path / "proc" / "cgroup", "0::/job\n")
    root = tmp_path / "cgroup"
    write(root / "job" / "memory.max", "max\n")
    assert cgroup_memory_limit(root, membership) is None


def test_cgroup_v2_container_root(tmp_path: Path) -> None:
    """In a container with its own cgroup namespace the group is '/', the limit at the root."""
    membership = write(tmp_path / "proc" / "cgroup", "0::/\n")
    root = tmp_path / "cgroup"
    write(root / "memory.max", f"{3 * GiB}\n")
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == 3 * GiB


def test_cgroup_path_outside_the_namespace_reads_the_root(tmp_path: Path) -> None:
    """A group shown as '/../..' is outside the visible tree: only the root counts."""
    membership = write(tmp_path / "proc" / "cgroup", "0::/../../elsewhere\n")
    root = tmp_path / "cgroup"
    write(root / "memory.max", f"{GiB}\n")
    write(tmp_path / "elsewhere" / "memory.max", "1\n")
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == GiB


def test_cgroup_v1_limit_and_no_limit_sentinel(tmp_path: Path) -> None:
    """cgroup v1: memory.limit_in_bytes of the memory group; the huge sentinel means none."""
    membership = write(
        tmp_path / "proc" / "cgroup",
        "9:name=systemd:/\n5:cpu,memory:/process_api/abc\n0::/\n",
    )
    root = tmp_path / "cgroup"
    write(root / "memory" / "process_api" / "abc" / "memory.limit_in_bytes", f"{GiB}\n")
    write(root / "memory" / "process_api" / "memory.limit_in_bytes", CGROUP_V1_NO_LIMIT)
    write(root / "memory" / "memory.limit_in_bytes", CGROUP_V1_NO_LIMIT)
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == GiB
    assert "memory.limit_in_bytes" in limit.source
    assert int(CGROUP_V1_NO_LIMIT) >= NO_LIMIT_FROM


def test_cgroup_v1_container_whose_path_is_not_mounted(tmp_path: Path) -> None:
    """A container sees the host's path for its group but its own group at the mount root."""
    membership = write(tmp_path / "proc" / "cgroup", "4:memory:/docker/0123abcd\n")
    root = tmp_path / "cgroup"
    write(root / "memory" / "memory.limit_in_bytes", f"{512 * MiB}\n")
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == 512 * MiB


def test_no_cgroup_at_all(tmp_path: Path) -> None:
    """No membership file and no cgroup files: no limit."""
    assert cgroup_memory_limit(tmp_path / "cgroup", tmp_path / "no-such-file") is None


def test_unreadable_limit_text_is_ignored(tmp_path: Path) -> None:
    """A limit file that is not a number is skipped, not trusted."""
    membership = write(tmp_path / "proc" / "cgroup", "0::/job\n")
    root = tmp_path / "cgroup"
    write(root / "job" / "memory.max", "lots\n")
    write(root / "memory.max", f"{GiB}\n")
    limit = cgroup_memory_limit(root, membership)
    assert limit is not None
    assert limit.size == GiB


# Resource limits and the effective limit ----------------------------------------------------


def test_rlimit_as_and_rss_take_the_tighter() -> None:
    """The tighter soft limit of RLIMIT_AS and RLIMIT_RSS, named by its source."""
    limit = rlimit_memory_limit(fake_getrlimit(RLIMIT_AS=8 * GiB, RLIMIT_RSS=6 * GiB))
    assert limit == HostMemoryLimit(6 * GiB, "RLIMIT_RSS")
    limit = rlimit_memory_limit(fake_getrlimit(RLIMIT_AS=8 * GiB))
    assert limit == HostMemoryLimit(8 * GiB, "RLIMIT_AS")


def test_unlimited_rlimits_are_no_limit() -> None:
    """RLIM_INFINITY means no limit."""
    assert rlimit_memory_limit(fake_getrlimit()) is None


@pytest.fixture
def lowered_rlimit_rss() -> Iterator[int]:
    """A real soft RLIMIT_RSS on this process (Linux ignores it, so it is harmless)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_RSS)
    limit = 3 * GiB if hard == resource.RLIM_INFINITY else min(3 * GiB, hard)
    resource.setrlimit(resource.RLIMIT_RSS, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_RSS, (soft, hard))


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux")
def test_real_rlimit_is_read(lowered_rlimit_rss: int) -> None:
    """A soft RLIMIT_RSS set on this very process becomes the manager's host limit."""
    manager = MemoryManager("cpu", host=True)
    assert manager.host_monitor is not None
    assert manager.host_monitor.limit.size <= lowered_rlimit_rss
    assert manager.snapshot().host_limit == manager.host_monitor.limit.size


def test_effective_limit_is_the_smallest() -> None:
    """RAM, cgroup and rlimit: the smallest wins; RAM wins ties; nothing known is None."""
    cgroup = HostMemoryLimit(4 * GiB, "cgroup memory.max in /job")
    rlimit = HostMemoryLimit(6 * GiB, "RLIMIT_AS")
    assert effective_memory_limit(64 * GiB, cgroup, rlimit) == cgroup
    assert effective_memory_limit(2 * GiB, cgroup, rlimit) == HostMemoryLimit(
        2 * GiB, "physical memory"
    )
    assert effective_memory_limit(64 * GiB, None, rlimit) == rlimit
    assert effective_memory_limit(4 * GiB, cgroup, None) == HostMemoryLimit(
        4 * GiB, "physical memory"
    )
    assert effective_memory_limit(None, None, None) is None


# The monitor --------------------------------------------------------------------------------


def fake_proc(tmp_path: Path, *, resident_pages: int, memtotal_kib: int) -> Path:
    proc = tmp_path / "proc"
    write(proc / "self" / "statm", f"100000 {resident_pages} 0 0 0 0 0\n")
    write(proc / "meminfo", f"MemTotal: {memtotal_kib} kB\n")
    write(proc / "self" / "cgroup", "0::/job\n")
    return proc


def test_monitor_reads_statm_against_the_cgroup_limit(tmp_path: Path) -> None:
    """Resident pages over the container's limit, not over the machine's RAM."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    proc = fake_proc(tmp_path, resident_pages=1000, memtotal_kib=64 * 1024 * 1024)
    cgroup = tmp_path / "cgroup"
    write(cgroup / "job" / "memory.max", f"{4000 * page_size}\n")
    monitor = HostMemoryMonitor(
        use_psutil=False, proc_root=proc, cgroup_root=cgroup, getrlimit=fake_getrlimit()
    )
    assert monitor.limit.size == 4000 * page_size
    assert monitor.resident_bytes() == 1000 * page_size
    assert monitor.usage(monitor.resident_bytes()) == 0.25
    assert monitor.reader.endswith("statm")


def test_monitor_rereads_resident_but_not_the_limit(tmp_path: Path) -> None:
    """Each check rereads resident memory; the limit is read once, when the monitor is made."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    proc = fake_proc(tmp_path, resident_pages=1000, memtotal_kib=64 * 1024 * 1024)
    cgroup = tmp_path / "cgroup"
    limit_file = write(cgroup / "job" / "memory.max", f"{4000 * page_size}\n")
    monitor = HostMemoryMonitor(
        use_psutil=False, proc_root=proc, cgroup_root=cgroup, getrlimit=fake_getrlimit()
    )
    write(proc / "self" / "statm", "100000 3000 0 0 0 0 0\n")
    limit_file.write_text(f"{1000 * page_size}\n")
    assert monitor.resident_bytes() == 3000 * page_size
    assert monitor.limit.size == 4000 * page_size


def test_monitor_falls_back_to_status(tmp_path: Path) -> None:
    """Without statm, VmRSS of /proc/self/status serves."""
    proc = tmp_path / "proc"
    write(proc / "self" / "status", "VmRSS:\t 1024 kB\n")
    write(proc / "meminfo", "MemTotal: 4096 kB\n")
    monitor = HostMemoryMonitor(
        use_psutil=False, proc_root=proc, cgroup_root=tmp_path, getrlimit=fake_getrlimit()
    )
    assert monitor.resident_bytes() == MiB
    assert monitor.limit == HostMemoryLimit(4 * MiB, "physical memory")


def test_monitor_without_psutil_or_proc_is_a_clear_error(tmp_path: Path) -> None:
    """Neither psutil nor /proc: HostMemoryUnavailableError, naming psutil and the extra."""
    with pytest.raises(HostMemoryUnavailableError, match=r"memscope\[host\]") as raised:
        HostMemoryMonitor(use_psutil=False, proc_root=tmp_path, cgroup_root=tmp_path)
    assert isinstance(raised.value, MemscopeError)
    assert isinstance(raised.value, MemoryFiguresUnavailableError)


def test_manager_without_host_figures_fails_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MemoryManager(host=True) raises when made, not at its first check."""
    unreadable = functools.partial(
        HostMemoryMonitor, use_psutil=False, proc_root=tmp_path, cgroup_root=tmp_path
    )
    monkeypatch.setattr(memscope.manager, "HostMemoryMonitor", unreadable)
    with pytest.raises(HostMemoryUnavailableError, match="psutil"):
        MemoryManager("cpu", host=True)
    assert MemoryManager("cpu").check_memory_usage() == 0.0


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux")
def test_proc_fallback_when_psutil_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psutil the real /proc serves, and agrees with psutil where it is installed
    (which serves only off Linux: on Linux the kept-open statm file does)."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    from_proc = HostMemoryMonitor()
    assert from_proc.reader == "/proc/self/statm"
    monkeypatch.delitem(sys.modules, "psutil")
    pytest.importorskip("psutil")
    assert HostMemoryMonitor().reader == "/proc/self/statm"
    monkeypatch.setattr(memscope.host, "_ON_LINUX", False)
    from_psutil = HostMemoryMonitor()
    assert from_psutil.reader == "psutil"
    assert abs(from_proc.resident_bytes() - from_psutil.resident_bytes()) < 16 * MiB
    assert from_proc.limit.size == from_psutil.limit.size


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux")
@pytest.mark.parametrize("use_psutil", [True, False])
def test_real_resident_memory_follows_a_tensor(use_psutil: bool) -> None:
    """Filling a 64 MiB tensor raises the resident memory read by about that much."""
    monitor = HostMemoryMonitor(use_psutil=use_psutil)
    before = monitor.resident_bytes()
    tensor = torch.ones(16 * MiB)  # 16 Mi float32s: 64 MiB, every page touched
    grown = monitor.resident_bytes() - before
    del tensor
    assert 56 * MiB <= grown <= 96 * MiB


# Managers with host=True --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"), [("yes", ValueError), (1, TypeError), (0, TypeError), (None, TypeError)]
)
def test_host_must_be_a_bool_or_container(value: object, error: type[Exception]) -> None:
    """host is True, False or "container": another string is a ValueError, another type a
    TypeError, each naming the parameter and the value."""
    with pytest.raises(error, match=rf"host must be True, False or 'container', got {value!r}"):
        MemoryManager("cpu", host=value)  # type: ignore[arg-type]


def test_cpu_default_stays_blind() -> None:
    """Without host=True the CPU reports 0.0 and the snapshot carries no host figures."""
    with FakeHost(resident=15 * GiB, physical_memory=16 * GiB):
        manager = MemoryManager("cpu", memory_threshold=0.5)
        assert manager.check_memory_usage() == 0.0
        assert manager.trigger_gc_if_needed() is False
        snapshot = manager.snapshot()
    assert manager.host_monitor is None
    assert snapshot.host_resident is snapshot.host_limit is snapshot.host_usage is None
    assert "host_resident" not in snapshot.to_dict()


@pytest.mark.parametrize("cgroup_version", [1, 2])
def test_cpu_usage_is_resident_over_container_limit(cgroup_version: int) -> None:
    """A 4 GiB container on a 64 GiB machine: 3 GiB resident is 75% used."""
    with FakeHost(
        resident=3 * GiB,
        physical_memory=64 * GiB,
        cgroup_limit=4 * GiB,
        cgroup_version=cgroup_version,
    ):
        manager = MemoryManager("cpu", host=True)
        assert manager.check_memory_usage() == 0.75


def test_rlimit_as_below_the_container_limit_wins() -> None:
    """RLIMIT_AS tighter than the cgroup: usage is measured against it."""
    with FakeHost(resident=GiB, cgroup_limit=8 * GiB, rlimit_as=2 * GiB):
        manager = MemoryManager("cpu", host=True)
        assert manager.check_memory_usage() == 0.5
    assert manager.host_monitor is not None
    assert manager.host_monitor.limit.source == "RLIMIT_AS"


def test_cpu_threshold_gc_fires_on_host_pressure() -> None:
    """Host usage at the threshold collects on the CPU; below it, nothing."""
    with FakeHost(resident=GiB, physical_memory=10 * GiB) as host:
        manager = MemoryManager("cpu", memory_threshold=0.8, host=True)
        assert manager.trigger_gc_if_needed() is False
        host.set_resident(8 * GiB)
        assert manager.trigger_gc_if_needed() is True
    assert manager.stats.gc_runs == 1


def test_limit_is_read_once_at_construction() -> None:
    """A limit changed after the manager was made reaches only new managers."""
    with FakeHost(resident=GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB) as host:
        manager = MemoryManager("cpu", host=True)
        host.set_cgroup_limit(2 * GiB)
        assert manager.check_memory_usage() == 0.25
        assert MemoryManager("cpu", host=True).check_memory_usage() == 0.5


def test_cpu_snapshot_has_host_figures() -> None:
    """The snapshot's host figures, its dict (JSON-safe) and its text."""
    with FakeHost(resident=GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB):
        snapshot = MemoryManager("cpu", host=True).snapshot()
    assert (snapshot.host_resident, snapshot.host_limit) == (GiB, 4 * GiB)
    assert snapshot.host_usage == snapshot.usage == 0.25
    data = json.loads(json.dumps(snapshot.to_dict()))
    assert data["host_resident"] == GiB
    assert data["host_limit"] == 4 * GiB
    assert data["host_usage"] == 0.25
    assert "budget" not in data
    assert str(snapshot) == "cpu: usage 25.0%, host 1.0 GiB resident of 4.0 GiB (25.0%)"


def test_cpu_max_batch_size_uses_host_headroom() -> None:
    """With host=True the CPU has an answer: (limit - resident) // estimate."""
    per_image = 95_551_488
    with FakeHost(resident=GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB):
        manager = MemoryManager("cpu", host=True)
        assert manager.max_batch_size((1024, 1024)) == 3 * GiB // per_image


def test_cpu_max_batch_size_without_host_hints_at_it() -> None:
    """The CPU without host figures still refuses, and says how to get them."""
    with pytest.raises(MemoryFiguresUnavailableError, match="host=True"):
        MemoryManager("cpu").max_batch_size((512, 512))


@pytest.mark.parametrize(
    ("device_usage", "resident", "expected"),
    [(0.3, 9 * GiB, 0.9), (0.95, GiB, 0.95)],
)
def test_gpu_with_host_uses_the_larger_pressure(
    device_usage: float, resident: int, expected: float
) -> None:
    """On a GPU, host=True makes usage the larger of device and host usage."""
    with (
        FakeHost(resident=resident, physical_memory=10 * GiB),
        FakeDevice("cuda", total=8 * GiB) as fake,
    ):
        fake.set_usage(device_usage)
        manager = MemoryManager("cuda", host=True)
        assert manager.check_memory_usage() == pytest.approx(expected)
        snapshot = manager.snapshot()
    assert snapshot.host_usage == pytest.approx(resident / (10 * GiB))
    assert snapshot.used == round(device_usage * 8 * GiB)
    assert "host " in str(snapshot)
    assert "cuda:0:" in str(snapshot)


def test_mps_with_host_sees_unified_memory_pressure() -> None:
    """On MPS, host pressure beyond Metal's own allocation counts with host=True."""
    with (
        FakeHost(resident=14 * GiB, physical_memory=16 * GiB),
        FakeDevice("mps", total=12 * GiB) as fake,
    ):
        fake.set_memory(allocated=2 * GiB, reserved=3 * GiB)
        assert MemoryManager("mps").check_memory_usage() == 0.25
        assert MemoryManager("mps", host=True).check_memory_usage() == 14 / 16


def test_gpu_max_batch_size_with_host_takes_the_tighter() -> None:
    """With host=True on a GPU, the host's headroom can bound the batch."""
    per_image = 95_551_488
    with (
        FakeHost(resident=15 * GiB, physical_memory=16 * GiB),
        FakeDevice("cuda", total=8 * GiB),
    ):
        assert MemoryManager("cuda").max_batch_size((1024, 1024)) == 8 * GiB // per_image
        assert MemoryManager("cuda", host=True).max_batch_size((1024, 1024)) == (GiB // per_image)


def test_failing_host_read_warns_once_and_never_raises(
    memscope_log: pytest.LogCaptureFixture,
) -> None:
    """Resident memory that can no longer be read: one warning, usage from the rest."""
    with FakeHost(resident=9 * GiB, physical_memory=10 * GiB) as host:
        manager = MemoryManager("cpu", host=True)
        (host.proc_root / "self" / "statm").write_text("garbage\n")
        assert manager.check_memory_usage() == 0.0
        assert manager.trigger_gc_if_needed() is False
        assert manager.snapshot().host_resident is None
    warnings = [r for r in memscope_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "resident memory" in warnings[0].getMessage()


def test_repr_shows_host_monitoring() -> None:
    """repr says when the host is watched."""
    with FakeHost():
        manager = MemoryManager("cpu", 0.7, host=True)
    assert repr(manager) == "MemoryManager(device='cpu', memory_threshold=0.7, host=True)"


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux")
def test_real_host_monitoring_on_this_machine() -> None:
    """On a real Linux host the figures are plausible: resident below the limit, usage > 0."""
    snapshot = MemoryManager("cpu", host=True).snapshot()
    assert snapshot.host_resident is not None
    assert snapshot.host_limit is not None
    assert 0 < snapshot.host_resident < snapshot.host_limit
    assert 0.0 < snapshot.usage <= 1.0


# Kept-open reads ------------------------------------------------------------------------------


def test_resident_reads_keep_one_descriptor_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The statm file is opened once; later reads see new figures through the same
    descriptor."""
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: object, *args: int) -> int:
        opened.append(str(path))
        return real_open(path, *args)  # type: ignore[arg-type]

    with FakeHost(resident=GiB) as host:
        monitor = HostMemoryMonitor(use_psutil=False)
        monkeypatch.setattr(os, "open", counting_open)
        first = monitor.resident_bytes()
        host.set_resident(2 * GiB)
        second = monitor.resident_bytes()
        third = monitor.resident_bytes()
    assert (first, second, third) == (GiB, 2 * GiB, 2 * GiB)
    assert opened == []


def test_a_statm_descriptor_closed_under_the_monitor_is_reopened(tmp_path: Path) -> None:
    """A kept-open statm descriptor that something else closed is reopened, and the reading
    is the file's current figure."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    proc = fake_proc(tmp_path, resident_pages=1000, memtotal_kib=64 * 1024 * 1024)
    monitor = HostMemoryMonitor(
        use_psutil=False, proc_root=proc, cgroup_root=tmp_path, getrlimit=fake_getrlimit()
    )
    assert monitor.resident_bytes() == 1000 * page_size
    opened_before = sorted(os.listdir("/proc/self/fd")) if LINUX_PROC else []
    for descriptor in opened_before:
        if os.path.realpath(f"/proc/self/fd/{descriptor}") == str(proc / "self" / "statm"):
            os.close(int(descriptor))
            break
    else:
        pytest.skip("needs /proc/self/fd to find the kept-open descriptor")
    write(proc / "self" / "statm", "100000 2000 0 0 0 0 0\n")
    assert monitor.resident_bytes() == 2000 * page_size


def test_statm_reader_is_used_even_with_psutil_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux the kept-open statm file serves although psutil is installed; off Linux psutil
    does."""
    psutil = pytest.importorskip("psutil")
    if not LINUX_PROC:
        pytest.skip("needs Linux")
    assert HostMemoryMonitor().reader == "/proc/self/statm"
    monkeypatch.setattr(memscope.host, "_ON_LINUX", False)
    monitor = HostMemoryMonitor()
    assert monitor.reader == "psutil"
    assert monitor.limit.size <= psutil.virtual_memory().total


@pytest.mark.skipif(not LINUX_PROC or not hasattr(os, "fork"), reason="needs Linux and fork")
def test_a_forked_child_reads_its_own_resident_memory() -> None:
    """A child process reopens /proc/self/statm: it reads its own resident memory, not its
    parent's through the inherited descriptor."""
    monitor = HostMemoryMonitor(use_psutil=False)
    parent_before = monitor.resident_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.close(read_end)
            child_before = monitor.resident_bytes()
            ballast = b"\x01" * (128 * MiB)  # every page touched
            child_after = monitor.resident_bytes()
            del ballast
            os.write(write_end, f"{child_before} {child_after}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_before, child_after = (int(field) for field in pipe.read().split())
    _, status = os.waitpid(pid, 0)
    assert status == 0
    # Through the parent's descriptor the child would read the parent, which did not grow.
    assert child_after - child_before >= 100 * MiB
    assert monitor.resident_bytes() < parent_before + 64 * MiB


# What a batch's usage is a share of ---------------------------------------------------------


def _cpu_batch_from_1_to_2_gib(host: FakeHost, **options: object) -> BatchReport:
    """Four items on the CPU whose resident memory goes from 1 to 2 GiB, timeline recorded."""
    with managed_batch("cpu", every=1, timeline=True, **options) as batch:  # type: ignore[arg-type]
        for item in batch.track(range(4)):
            host.set_resident(GiB + (item + 1) * GiB // 4)
    return batch.report


def test_a_monitor_lets_per_item_readers_reuse_a_reading_for_a_millisecond() -> None:
    """A host monitor's readings may be repeated for 1 ms by readers after every item; under
    FakeHost, whose figures change between items that take no time, for none."""
    if not LINUX_PROC:
        pytest.skip("needs /proc")
    assert HostMemoryMonitor().reuse_for == 0.001
    with FakeHost(resident=GiB):
        monitor = HostMemoryMonitor()
        assert monitor.reuse_for == 0.0
        with pytest.raises(InvalidArgumentError, match="reuse_for must be a finite number"):
            monitor.reuse_for = -0.5
        with pytest.raises(InvalidArgumentTypeError, match="reuse_for must be a real number"):
            monitor.reuse_for = "1ms"  # type: ignore[assignment]
        assert monitor.reuse_for == 0.0


@pytest.mark.parametrize(
    ("every", "fresh_rows"), [(None, [0]), (2, [0, 1, 3])], ids=["no steps", "every=2"]
)
def test_timeline_rows_repeat_the_host_reading_within_its_reuse_time(
    every: int | None, fresh_rows: list[int]
) -> None:
    """Rows within the monitor's reuse time of the last reading repeat it; a sample the
    batch took since, at a cleanup step, is used at once."""
    with FakeHost(resident=GiB) as host:
        manager = MemoryManager("cpu", host=True)
        assert manager.host_monitor is not None
        manager.host_monitor.reuse_for = 3600.0
        with managed_batch(manager=manager, every=every, timeline=True) as batch:
            for item in batch.track(range(4)):
                host.set_resident(GiB + (item + 1) * 256 * MiB)
    rows = [entry.host_resident for entry in batch.report.timeline]
    expected, latest = [], None
    for row in range(4):
        if row in fresh_rows:
            latest = GiB + (row + 1) * 256 * MiB
        expected.append(latest)
    assert rows == expected


def test_a_cpu_batch_reports_usage_as_the_host_share_of_its_limit(tmp_path: Path) -> None:
    """On a 4 GiB host, 1 GiB -> 2 GiB resident reads usage 25 % -> 50 % "of host limit" in the
    report, every timeline row, the JSON and the CSV; the manager's own check stays 0.0."""
    with FakeHost(resident=GiB, physical_memory=4 * GiB) as host:
        report = _cpu_batch_from_1_to_2_gib(host)
        assert MemoryManager("cpu").check_memory_usage() == 0.0
    assert (report.usage_start, report.usage_end, report.usage_of) == (0.25, 0.5, "host limit")
    assert [entry.usage for entry in report.timeline] == [0.3125, 0.375, 0.4375, 0.5]
    assert "usage 25.0% -> 50.0% of host limit" in report.lines()[1]
    data = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert data["usage_of"] == "host limit"
    assert "usage_of" in data["units"]["usage_start"]
    lines = report.to_csv(tmp_path / "timeline.csv").read_text().splitlines()
    assert lines[0].split(",")[2] == "usage"
    assert lines[0].split(",")[-1] == "usage_of"
    assert [line.split(",")[2] for line in lines[1:]] == [
        "0.312500",
        "0.375000",
        "0.437500",
        "0.500000",
    ]
    assert all(line.endswith(",host limit") for line in lines[1:])


def test_a_cpu_batch_with_a_budget_says_its_usage_is_a_share_of_the_budget() -> None:
    """With a 2 GiB budget on a 4 GiB host the usage is resident over the budget, always the
    larger share under the host's limit, and the report says so."""
    with FakeHost(resident=GiB, physical_memory=4 * GiB) as host:
        report = _cpu_batch_from_1_to_2_gib(host, budget=2 * GiB)
    assert report.usage_of == "budget"
    assert (report.usage_start, report.usage_end) == (0.5, 1.0)
    assert "usage 50.0% -> 100.0% of budget" in str(report)


def test_a_gpu_batch_says_its_usage_is_a_share_of_device_memory() -> None:
    """On a fake GPU the usage is the device's, labelled so; with the host watched too, the
    larger of the two."""
    with FakeDevice("cuda", total=8 * GiB) as fake, FakeHost(physical_memory=64 * GiB):
        fake.set_usage(0.5)
        with managed_batch("cuda", every=1) as batch:
            for _ in batch.track(range(2)):
                pass
        with managed_batch(manager=MemoryManager("cuda", host=True), every=1) as watched:
            for _ in watched.track(range(2)):
                pass
    assert batch.report.usage_of == "device memory"
    assert "usage 50.0% -> 50.0% of device memory" in str(batch.report)
    assert watched.report.usage_of == "the larger of device memory and host limit"


def test_a_cpu_batch_without_host_figures_labels_no_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the host's memory cannot be read, the CPU's usage is a share of nothing: no label,
    and the text shows no usage."""
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr("memscope.host.PROC_ROOT", tmp_path / "no-proc")
    with managed_batch("cpu", every=1) as batch:
        for _ in batch.track(range(2)):
            pass
    assert batch.report.usage_of is None
    assert "usage" not in str(batch.report)
