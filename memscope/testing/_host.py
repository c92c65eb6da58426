"""FakeHost: fake host memory figures, as a small /proc and cgroup tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import memscope.host
from memscope.testing._records import GiB


class FakeHost:
    """Fake host memory figures for the host monitors made while it is active.

    It writes a small ``/proc`` and cgroup tree into a temporary directory and points
    :class:`memscope.HostMemoryMonitor`'s defaults at it (psutil is bypassed, resource limits
    come from ``rlimit_as`` / ``rlimit_rss``), so the monitor's own parsing and arithmetic
    run on figures you choose::

        from memscope import MemoryManager
        from memscope.testing import FakeHost, GiB

        def test_cpu_job_collects_near_the_container_limit():
            with FakeHost(resident=3 * GiB, physical_memory=64 * GiB, cgroup_limit=4 * GiB):
                manager = MemoryManager("cpu", host=True)
                assert manager.check_memory_usage() == 0.75

    Args:
        resident: the process's resident memory in bytes (rounded down to whole pages).
        physical_memory: the machine's RAM in bytes.
        cgroup_limit: the memory limit of the process's cgroup, ``None`` for no limit.
        cgroup_version: ``2`` writes ``memory.max``, ``1`` ``memory.limit_in_bytes``.
        rlimit_as: the soft ``RLIMIT_AS`` in bytes, ``None`` for no limit.
        rlimit_rss: the soft ``RLIMIT_RSS`` in bytes, ``None`` for no limit.

    Monitors read the limit once, when made: a limit changed with :meth:`set_cgroup_limit`
    reaches only managers made afterwards. Like :class:`FakeDevice`, it patches module
    attributes for the whole process.
    """

    group = "/memscope-fake.slice/job"
    """The cgroup the faked process belongs to (its parent has no limit)."""

    def __init__(
        self,
        *,
        resident: int = GiB,
        physical_memory: int = 16 * GiB,
        cgroup_limit: int | None = None,
        cgroup_version: int = 2,
        rlimit_as: int | None = None,
        rlimit_rss: int | None = None,
    ) -> None:
        if cgroup_version not in (1, 2):
            raise ValueError(f"cgroup_version must be 1 or 2, got {cgroup_version!r}")
        self.physical_memory = physical_memory
        self.cgroup_version = cgroup_version
        self.rlimit_as = rlimit_as
        self.rlimit_rss = rlimit_rss
        self.page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.directory = Path(tempfile.mkdtemp(prefix="memscope-fake-host-"))
        self.proc_root = self.directory / "proc"
        self.cgroup_root = self.directory / "cgroup"
        (self.proc_root / "self").mkdir(parents=True)
        self._write_proc_files()
        self.set_resident(resident)
        self.set_cgroup_limit(cgroup_limit)
        self._saved: list[tuple[str, object]] = []

    def set_resident(self, resident: int) -> None:
        """Make the process's resident memory ``resident`` bytes (whole pages)."""
        pages = resident // self.page_size
        (self.proc_root / "self" / "statm").write_text(f"{pages * 3} {pages} 0 0 0 {pages} 0\n")

    def set_cgroup_limit(self, limit: int | None) -> None:
        """Set the cgroup's limit (``None``: no limit) for monitors made from now on."""
        if self.cgroup_version == 2:
            membership = f"0::{self.group}\n"
            base, file_name = self.cgroup_root, "memory.max"
            unlimited = "max"
        else:
            membership = f"5:memory:{self.group}\n0::/\n"
            base, file_name = self.cgroup_root / "memory", "memory.limit_in_bytes"
            unlimited = "9223372036854771712"
        (self.proc_root / "self" / "cgroup").write_text(membership)
        group_directory = base / self.group.strip("/")
        group_directory.mkdir(parents=True, exist_ok=True)
        (group_directory / file_name).write_text(f"{unlimited if limit is None else limit}\n")
        (group_directory.parent / file_name).write_text(f"{unlimited}\n")

    def _write_proc_files(self) -> None:
        (self.proc_root / "meminfo").write_text(
            f"MemTotal:       {self.physical_memory // 1024} kB\nMemFree:        0 kB\n"
        )

    def _getrlimit(self, which: int) -> tuple[int, int]:
        import resource

        limits = {
            getattr(resource, "RLIMIT_AS", None): self.rlimit_as,
            getattr(resource, "RLIMIT_RSS", None): self.rlimit_rss,
        }
        limit = limits.get(which)
        return (resource.RLIM_INFINITY if limit is None else limit, resource.RLIM_INFINITY)

    def __enter__(self) -> FakeHost:
        replacements: dict[str, object] = {
            "PROC_ROOT": self.proc_root,
            "CGROUP_ROOT": self.cgroup_root,
            "_default_getrlimit": self._getrlimit,
            "_import_psutil": lambda: None,
            # Fake figures change between items that take no time: read them at every item.
            "REUSE_READING_FOR": 0.0,
        }
        for name, replacement in replacements.items():
            self._saved.append((name, getattr(memscope.host, name)))
            setattr(memscope.host, name, replacement)
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._saved:
            name, original = self._saved.pop()
            setattr(memscope.host, name, original)
        shutil.rmtree(self.directory, ignore_errors=True)
