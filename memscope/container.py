"""The whole container's memory, counted the way the kernel counts it against its limit.

A process's resident memory misses what its DataLoader workers and other children hold, yet
the kernel's OOM killer counts the whole cgroup. :class:`ContainerMemory` reads the cgroup's
usage (``memory.current`` in cgroup v2, ``memory.usage_in_bytes`` in v1) less the page cache
the kernel can reclaim without swapping (``inactive_file`` of ``memory.stat``), the working
set container runtimes report, against the cgroup's limit. Limits nest: every group from the
process's up to the root is read, and the one nearest its limit is the one that counts. The
files are kept open and re-read at each reading (one ``os.pread`` each), so a limit changed
while the job runs is seen at the next reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memscope._kept_open import KeptOpenFile
from memscope.exceptions import HostMemoryUnavailableError
from memscope.host import (
    CGROUP_ROOT,
    PROC_ROOT,
    HostMemoryLimit,
    HostMemoryMonitor,
    cgroup_membership,
    group_and_ancestors,
    limit_in,
)

__all__ = ["ContainerMemory", "ContainerMemoryMonitor", "ContainerReading"]


@dataclass(frozen=True, slots=True)
class ContainerReading:
    """One reading: the working set of the group nearest its limit, and that limit."""

    used: int
    limit: HostMemoryLimit | None


class _Level:
    """One cgroup directory's usage, page cache and limit files."""

    def __init__(self, directory: Path, usage: str, limit: str, inactive: tuple[str, ...]):
        self.directory = directory
        self._usage = KeptOpenFile(directory / usage, 64)
        self._limit = KeptOpenFile(directory / limit, 64)
        self._stat = KeptOpenFile(directory / "memory.stat", 16384)
        self._limit_name = limit
        self._inactive = tuple(name.encode() for name in inactive)

    def used(self) -> int:
        usage = int(self._usage.read())
        try:
            stat = self._stat.read()
        except OSError:
            stat = b""
        found: dict[bytes, int] = {}
        for line in stat.splitlines():
            name, _, value = line.partition(b" ")
            if name in self._inactive:
                found[name] = int(value)
        # The first of the names that the file has: v1's hierarchical total before its own.
        reclaimable = next((found[name] for name in self._inactive if name in found), 0)
        return max(usage - reclaimable, 0)

    def limit(self) -> HostMemoryLimit | None:
        try:
            text = self._limit.read()
        except OSError:
            return None
        size = limit_in(text, self.directory / self._limit_name)
        if size is None:
            return None
        return HostMemoryLimit(size, f"cgroup {self._limit_name} in {self.directory}")


class ContainerMemory:
    """Reads the memory of this process's cgroup (its container) and the limit it is held to.

    Args:
        cgroup_root: where the cgroup file systems are mounted (``/sys/fs/cgroup``).
        proc_root: where ``/proc`` is, for the process's ``self/cgroup`` membership.

    Raises:
        HostMemoryUnavailableError: the process's cgroup keeps no memory accounting that
            memscope can read (no ``memory.current`` nor ``memory.usage_in_bytes``).
    """

    def __init__(self, cgroup_root: Path | None = None, proc_root: Path | None = None) -> None:
        cgroup_root = CGROUP_ROOT if cgroup_root is None else cgroup_root
        proc_root = PROC_ROOT if proc_root is None else proc_root
        v2_group, v1_group = cgroup_membership(proc_root / "self" / "cgroup")
        self.levels = self._levels(cgroup_root, v2_group, "memory.current", "memory.max", 2)
        self.version = 2
        if not self.levels:
            self.levels = self._levels(
                cgroup_root / "memory",
                v1_group,
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                1,
            )
            self.version = 1
        if not self.levels:
            raise HostMemoryUnavailableError(
                f"container memory needs cgroup memory accounting: no memory.current (v2) nor "
                f"memory.usage_in_bytes (v1) for this process's group under {cgroup_root}"
            )

    @staticmethod
    def _levels(base: Path, group: str, usage: str, limit: str, version: int) -> list[_Level]:
        # v1's memory.stat has total_inactive_file (the group and its children); v2's
        # inactive_file already counts the children.
        inactive = ("inactive_file",) if version == 2 else ("total_inactive_file", "inactive_file")
        levels = []
        for directory in group_and_ancestors(base, group):
            if (directory / usage).is_file():
                levels.append(_Level(directory, usage, limit, inactive))
        return levels

    def read(self) -> ContainerReading:
        """The working set of the group nearest its limit (by share), and that limit.

        Without any limit it is the process's own group's working set, with no limit.
        """
        own = None
        nearest: tuple[float, int, HostMemoryLimit] | None = None
        for level in self.levels:
            used = level.used()
            if own is None:
                own = used
            limit = level.limit()
            if limit is None:
                continue
            share = used / limit.size
            if nearest is None or share > nearest[0]:
                nearest = (share, used, limit)
        if nearest is None:
            return ContainerReading(own or 0, None)
        return ContainerReading(nearest[1], nearest[2])


class ContainerMemoryMonitor(HostMemoryMonitor):
    """A :class:`~memscope.host.HostMemoryMonitor` that measures the whole container.

    :meth:`resident_bytes` is the working set of the container's group nearest its limit
    (children such as DataLoader workers included, reclaimable page cache not), and
    :attr:`limit` that group's limit as of that reading, or the machine's RAM or resource
    limit where that is tighter. The cgroup limits are re-read at every reading.

    Takes the arguments of :class:`~memscope.host.HostMemoryMonitor`; raises
    :class:`~memscope.HostMemoryUnavailableError` where the cgroup keeps no accounting.
    ``MemoryManager(host="container")`` watches the host through one.
    """

    container: ContainerMemory
    """What reads the container's cgroup files."""

    def _started(self, cgroup_root: Path, proc_root: Path) -> None:
        self.container = ContainerMemory(cgroup_root, proc_root)
        self.reader = f"cgroup v{self.container.version} {self.container.levels[0].directory}"
        self.resident_bytes()

    def resident_bytes(self) -> int:
        reading = self.container.read()
        fixed = self._limits_besides_cgroup
        if reading.limit is not None and reading.limit.size < fixed.size:
            self._limit = reading.limit
        else:
            self._limit = fixed
        return reading.used
