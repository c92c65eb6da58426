"""Container memory: the whole cgroup as the kernel counts it, from copies of its files
(cgroup v1, v2, nested limits, a limit changed at run time, page cache not counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memscope import MemoryManager
from memscope.container import ContainerMemory, ContainerMemoryMonitor
from memscope.exceptions import HostMemoryUnavailableError
from memscope.host import HostMemoryMonitor
from memscope.testing import FakeHost, GiB, MiB


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def v2_tree(tmp_path: Path, *, current: int, inactive: int, limit: str, parent_limit: str = "max"):  # type: ignore[no-untyped-def]
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", "0::/kubepods/pod1/job\n")
    job = cgroup / "kubepods" / "pod1" / "job"
    write(job / "memory.current", f"{current}\n")
    write(
        job / "memory.stat",
        f"anon {current - inactive}\nfile {inactive}\ninactive_file {inactive}\n",
    )
    write(job / "memory.max", f"{limit}\n")
    pod = job.parent
    write(pod / "memory.current", f"{current}\n")
    write(pod / "memory.stat", f"inactive_file {inactive}\n")
    write(pod / "memory.max", f"{parent_limit}\n")
    return proc, cgroup, job, pod


def test_v2_working_set_leaves_out_reclaimable_page_cache(tmp_path: Path) -> None:
    """cgroup v2: memory.current less inactive_file, against memory.max."""
    proc, cgroup, _, _ = v2_tree(tmp_path, current=3 * GiB, inactive=GiB, limit=str(4 * GiB))
    reading = ContainerMemory(cgroup, proc).read()
    assert reading.used == 2 * GiB
    assert reading.limit is not None
    assert reading.limit.size == 4 * GiB
    assert "memory.max" in reading.limit.source


def test_v1_uses_usage_in_bytes_and_total_inactive_file(tmp_path: Path) -> None:
    """cgroup v1: memory.usage_in_bytes less total_inactive_file, against limit_in_bytes."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", "5:memory:/docker/abc\n0::/\n")
    group = cgroup / "memory" / "docker" / "abc"
    write(group / "memory.usage_in_bytes", f"{5 * GiB}\n")
    write(
        group / "memory.stat", f"cache {2 * GiB}\ninactive_file 1\ntotal_inactive_file {2 * GiB}\n"
    )
    write(group / "memory.limit_in_bytes", f"{6 * GiB}\n")
    memory = ContainerMemory(cgroup, proc)
    reading = memory.read()
    assert memory.version == 1
    assert reading.used == 3 * GiB
    assert reading.limit is not None
    assert reading.limit.size == 6 * GiB


def test_nested_limits_the_group_nearest_its_limit_counts(tmp_path: Path) -> None:
    """A pod's tighter limit (by share) binds although the job's own limit is larger."""
    proc, cgroup, _, pod = v2_tree(
        tmp_path, current=3 * GiB, inactive=0, limit=str(8 * GiB), parent_limit=str(6 * GiB)
    )
    # The pod holds a sibling's memory too: 5 GiB of its 6.
    write(pod / "memory.current", f"{5 * GiB}\n")
    reading = ContainerMemory(cgroup, proc).read()
    assert reading.used == 5 * GiB
    assert reading.limit is not None
    assert reading.limit.size == 6 * GiB
    assert str(pod) in reading.limit.source


def test_a_limit_changed_at_run_time_is_seen_at_the_next_reading(tmp_path: Path) -> None:
    """The limit file is re-read at each reading: a raised limit and new usage are seen."""
    proc, cgroup, job, _ = v2_tree(tmp_path, current=GiB, inactive=0, limit=str(2 * GiB))
    memory = ContainerMemory(cgroup, proc)
    assert memory.read().limit.size == 2 * GiB  # type: ignore[union-attr]
    write(job / "memory.max", f"{4 * GiB}\n")
    write(job / "memory.current", f"{3 * GiB}\n")
    reading = memory.read()
    assert reading.limit is not None
    assert reading.limit.size == 4 * GiB
    assert reading.used == 3 * GiB
    write(job / "memory.max", "max\n")
    assert memory.read().limit is None


def test_monitor_in_container_mode_follows_the_cgroup(tmp_path: Path) -> None:
    """ContainerMemoryMonitor: usage of the container against its limit,
    the limit following a change; the machine's RAM still bounds it."""
    proc, cgroup, job, _ = v2_tree(tmp_path, current=3 * GiB, inactive=GiB, limit=str(4 * GiB))
    write(proc / "self" / "statm", "100 10 0 0 0 10 0\n")
    write(proc / "meminfo", f"MemTotal: {16 * GiB // 1024} kB\n")

    def no_rlimit(which: int) -> tuple[int, int]:
        import resource

        return resource.RLIM_INFINITY, resource.RLIM_INFINITY

    monitor = ContainerMemoryMonitor(
        use_psutil=False, proc_root=proc, cgroup_root=cgroup, getrlimit=no_rlimit
    )
    assert monitor.resident_bytes() == 2 * GiB
    assert monitor.limit.size == 4 * GiB
    write(job / "memory.max", f"{8 * GiB}\n")
    assert monitor.resident_bytes() == 2 * GiB
    assert monitor.limit.size == 8 * GiB
    write(job / "memory.max", f"{64 * GiB}\n")
    monitor.resident_bytes()
    assert (monitor.limit.size, monitor.limit.source) == (16 * GiB, "physical memory")
    assert monitor.usage(monitor.resident_bytes()) == 2 / 16


def test_without_cgroup_accounting_container_mode_is_a_clear_error(tmp_path: Path) -> None:
    """No memory.current nor memory.usage_in_bytes: HostMemoryUnavailableError naming both."""
    write(tmp_path / "proc" / "self" / "cgroup", "0::/\n")
    with pytest.raises(HostMemoryUnavailableError, match=r"memory\.current"):
        ContainerMemory(tmp_path / "cgroup", tmp_path / "proc")


def test_page_cache_larger_than_usage_reads_zero(tmp_path: Path) -> None:
    """A stat file ahead of memory.current never gives a negative working set."""
    proc, cgroup, job, _ = v2_tree(tmp_path, current=100 * MiB, inactive=0, limit="max")
    write(job / "memory.stat", f"inactive_file {200 * MiB}\n")
    assert ContainerMemory(cgroup, proc).read().used == 0


# MemoryManager(host="container") -------------------------------------------------------------


def container_files(host: FakeHost, *, usage: int, inactive: int) -> Path:
    """Write the accounting files FakeHost leaves out into its group; returns the group."""
    v2 = host.cgroup_version == 2
    group = (host.cgroup_root if v2 else host.cgroup_root / "memory") / FakeHost.group.strip("/")
    write(group / ("memory.current" if v2 else "memory.usage_in_bytes"), f"{usage}\n")
    name = "inactive_file" if v2 else "total_inactive_file"
    write(group / "memory.stat", f"anon {usage - inactive}\n{name} {inactive}\n")
    return group


@pytest.mark.parametrize("version", [1, 2])
def test_a_manager_watching_the_container_measures_it_whole(version: int) -> None:
    """host="container": usage is the container's working set over its limit (v1 and v2),
    and a limit raised while the job runs is seen at the next check."""
    with FakeHost(
        resident=GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB, cgroup_version=version
    ) as host:
        group = container_files(host, usage=3 * GiB, inactive=GiB)
        manager = MemoryManager("cpu", host="container")
        assert manager.check_memory_usage() == 0.5
        limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        write(group / limit_file, f"{8 * GiB}\n")
        snapshot = manager.snapshot()
    assert (snapshot.host_resident, snapshot.host_limit) == (2 * GiB, 8 * GiB)
    assert snapshot.usage == 0.25
    assert isinstance(manager.host_monitor, ContainerMemoryMonitor)
    assert repr(manager).endswith("host='container')")


def test_host_true_still_reads_the_process_alone() -> None:
    """host=True keeps measuring the process's own resident memory, not the container's."""
    with FakeHost(resident=GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB) as host:
        container_files(host, usage=3 * GiB, inactive=0)
        manager = MemoryManager("cpu", host=True)
        assert manager.check_memory_usage() == 0.25
    assert type(manager.host_monitor) is HostMemoryMonitor
