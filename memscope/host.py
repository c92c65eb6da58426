"""The host's memory: how much this process holds, and the most it may hold.

A process is stopped by whichever limit it meets first: the machine's RAM, the memory limit of
its cgroup (a container's limit, usually far below the RAM), or its own resource limits. The
figures come from psutil where it is installed and from ``/proc`` on Linux otherwise.

The functions below take the files they read as parameters, so that each source can be read
from a copy of its files; :class:`HostMemoryMonitor` puts them together.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from memscope._kept_open import KeptOpenFile, pread_available
from memscope._validation import check_positive_number
from memscope.exceptions import HostMemoryUnavailableError
from memscope.units import format_bytes

__all__ = ["HostMemoryLimit", "HostMemoryMonitor"]

logger = logging.getLogger("memscope")

PROC_ROOT = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")

REUSE_READING_FOR = 0.001
"""The default of :attr:`HostMemoryMonitor.reuse_for`, in seconds."""

NO_LIMIT_FROM = 2**60
"""Limits at or above this many bytes mean "no limit".

cgroup v1 writes "no limit" as the largest page-aligned 64-bit number (about 2**63), and
other sources use similar sentinels; no machine has an exabyte of RAM.
"""

GetRlimit = Callable[[int], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class HostMemoryLimit:
    """The most memory this process may hold, in bytes, and where that limit comes from."""

    size: int
    source: str

    def __str__(self) -> str:
        return f"{format_bytes(self.size)} ({self.source})"


# Resident memory ----------------------------------------------------------------------------


def resident_bytes_from_status(path: Path) -> int:
    """Resident memory from the ``VmRSS:`` line of a ``/proc/<pid>/status`` file."""
    return status_bytes(path, "VmRSS")


def status_bytes(path: Path, label: str) -> int:
    """The bytes of the ``label:`` line of a ``/proc/<pid>/status`` file (``VmRSS``, the
    peak ``VmHWM``); ``ValueError`` where it has none, ``OSError`` where it cannot be read."""
    for line in path.read_text().splitlines():
        if line.startswith(f"{label}:"):
            return _kibibyte_line_value(line)
    raise ValueError(f"{path} has no {label} line")


# Physical memory ----------------------------------------------------------------------------


def physical_memory_from_meminfo(path: Path) -> int | None:
    """The machine's RAM from the ``MemTotal:`` line of a ``/proc/meminfo`` file."""
    try:
        text = path.read_text()
    except OSError:
        return None
    except ValueError as error:  # UnicodeDecodeError: not the file it should be
        _warn_unreadable(path, error)
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            try:
                return _kibibyte_line_value(line)
            except ValueError as error:
                _warn_unreadable(path, error)
                return None
    return None


def physical_memory_from_sysconf() -> int | None:
    """The machine's RAM as the C library reports it (Linux and macOS)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


# cgroups ------------------------------------------------------------------------------------


def cgroup_memory_limit(
    cgroup_root: Path = CGROUP_ROOT, membership: Path = PROC_ROOT / "self" / "cgroup"
) -> HostMemoryLimit | None:
    """The tightest memory limit of this process's cgroup and its ancestors, or ``None``.

    ``membership`` is the process's ``/proc/self/cgroup``: lines ``0::/path`` name its cgroup
    v2 group, lines ``N:memory:/path`` (the controller list may hold more names) its cgroup v1
    memory group. The limits are ``memory.max`` under ``cgroup_root`` (v2) and
    ``memory.limit_in_bytes`` under ``cgroup_root/memory`` (v1), read in the process's group
    and every group above it, since a parent's limit binds its children too. Inside a
    container the group's path often does not exist in the container's view, where the
    container's own group is mounted at the root; the root is always read. ``max`` and
    sentinels of ``NO_LIMIT_FROM`` bytes or more mean no limit.
    """
    v2_group, v1_group = cgroup_membership(membership)
    limits = [
        *_limits_along(cgroup_root, v2_group, "memory.max"),
        *_limits_along(cgroup_root / "memory", v1_group, "memory.limit_in_bytes"),
    ]
    if not limits:
        return None
    return min(limits, key=lambda limit: limit.size)


def cgroup_membership(membership: Path) -> tuple[str, str]:
    """The process's cgroup v2 group and cgroup v1 memory group ("/" where none is named)."""
    v2_group = v1_group = "/"
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return v2_group, v1_group
    except ValueError as error:
        _warn_unreadable(membership, error)
        return v2_group, v1_group
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2_group = group
        elif "memory" in controllers.split(","):
            v1_group = group
    return v2_group, v1_group


def _limits_along(base: Path, group: str, file_name: str) -> Iterator[HostMemoryLimit]:
    for directory in group_and_ancestors(base, group):
        limit_file = directory / file_name
        size = _read_limit_file(limit_file)
        if size is not None:
            yield HostMemoryLimit(size, f"cgroup {file_name} in {limit_file.parent}")


def group_and_ancestors(base: Path, group: str) -> Iterator[Path]:
    """The directories of ``group`` under ``base`` and of every group above it, nearest first."""
    relative = os.path.normpath(group.strip("/") or ".")
    if relative.startswith(".."):
        # A group outside this cgroup namespace's view: only the root is visible.
        relative = "."
    directory = base / relative
    while directory != base:
        yield directory
        directory = directory.parent
    yield base


def _read_limit_file(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    except ValueError as error:
        _warn_unreadable(path, error)
        return None
    return limit_in(text, path)


def limit_in(text: str | bytes, path: Path) -> int | None:
    """The bytes of a cgroup limit file's text; ``None`` for ``max``, sentinels of
    ``NO_LIMIT_FROM`` or more, and text that is no number (logged at DEBUG)."""
    text = text.strip()
    if text in ("max", b"max"):
        return None
    try:
        size = int(text)
    except ValueError:
        logger.debug("ignoring %s: %r is not a memory limit", path, text)
        return None
    return size if 0 < size < NO_LIMIT_FROM else None


# Resource limits ----------------------------------------------------------------------------


def rlimit_memory_limit(getrlimit: GetRlimit | None = None) -> HostMemoryLimit | None:
    """The tighter of the soft ``RLIMIT_AS`` and ``RLIMIT_RSS`` limits, or ``None``.

    ``getrlimit`` defaults to :func:`resource.getrlimit`; platforms without the ``resource``
    module (Windows) have no such limits.
    """
    try:
        import resource
    except ImportError:
        return None
    read = resource.getrlimit if getrlimit is None else getrlimit
    limits: list[HostMemoryLimit] = []
    for name in ("RLIMIT_AS", "RLIMIT_RSS"):
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            soft, _hard = read(which)
        except (OSError, ValueError) as error:
            logger.warning(
                "ignoring the %s resource limit: reading it failed (%s); the other limits "
                "still apply",
                name,
                error,
            )
            continue
        if soft != resource.RLIM_INFINITY and 0 < soft < NO_LIMIT_FROM:
            limits.append(HostMemoryLimit(soft, name))
    return min(limits, key=lambda limit: limit.size, default=None)


# The effective limit ------------------------------------------------------------------------


def effective_memory_limit(
    physical_memory: int | None,
    cgroup_limit: HostMemoryLimit | None,
    rlimit: HostMemoryLimit | None,
) -> HostMemoryLimit | None:
    """The smallest of the machine's RAM, the cgroup limit and the resource limits.

    Ties go to the physical memory, then the cgroup: the plainer explanation wins.
    """
    candidates: list[HostMemoryLimit] = []
    if physical_memory is not None and physical_memory > 0:
        candidates.append(HostMemoryLimit(physical_memory, "physical memory"))
    candidates.extend(limit for limit in (cgroup_limit, rlimit) if limit is not None)
    return min(candidates, key=lambda limit: limit.size, default=None)


# The monitor --------------------------------------------------------------------------------


class HostMemoryMonitor:
    """Reads this process's resident memory (RSS) against the limit it is held to.

    The limit is worked out once, when the monitor is made: reading the cgroup files on
    every check would make the hot path slow, and limits rarely change while a job runs (a
    job whose limit changes needs a new monitor). Each :meth:`resident_bytes` call is one
    ``os.pread`` of ``/proc/self/statm``, kept open (Linux, and wherever that file exists),
    or asks psutil elsewhere. A forked child reopens the file, so it reads its own figures.

    Args:
        use_psutil: read through psutil when it is installed; ``False`` reads ``/proc``.
        proc_root: where ``/proc`` is; ``PROC_ROOT`` of this module by default.
        cgroup_root: where the cgroup file systems are mounted; ``CGROUP_ROOT`` by default.
        getrlimit: reads resource limits; :func:`resource.getrlimit` by default.
    The defaults are looked up when a monitor is made, which is how
    :class:`memscope.testing.FakeHost` points the monitors a test makes at fake figures.

    Raises:
        HostMemoryUnavailableError: neither psutil nor ``/proc`` can tell the resident
            memory or the machine's RAM.
    """

    def __init__(
        self,
        *,
        use_psutil: bool = True,
        proc_root: Path | None = None,
        cgroup_root: Path | None = None,
        getrlimit: GetRlimit | None = None,
    ) -> None:
        self.reuse_for = REUSE_READING_FOR
        proc_root = PROC_ROOT if proc_root is None else proc_root
        cgroup_root = CGROUP_ROOT if cgroup_root is None else cgroup_root
        getrlimit = _default_getrlimit if getrlimit is None else getrlimit
        psutil = _import_psutil() if use_psutil else None
        self._read_resident: Callable[[], int]
        # On Linux a kept-open /proc/self/statm read with one pread is several times cheaper
        # than psutil, which opens the file on every call; psutil serves everywhere else.
        kept_open = _kept_open_statm_reader(proc_root) if _ON_LINUX or psutil is None else None
        if kept_open is not None:
            self._read_resident, self.reader = kept_open, str(kept_open.path)
        elif psutil is not None:
            self._read_resident = _PsutilResidentReader(psutil)
            self.reader = "psutil"
        else:
            self._read_resident, self.reader = _proc_status_reader(proc_root)
        physical_memory: int | None = None
        if psutil is not None and self.reader == "psutil":
            physical_memory = int(psutil.virtual_memory().total)
        else:
            physical_memory = physical_memory_from_meminfo(proc_root / "meminfo")
            if physical_memory is None and psutil is not None:
                physical_memory = int(psutil.virtual_memory().total)
            if physical_memory is None:
                physical_memory = physical_memory_from_sysconf()
        rlimit = rlimit_memory_limit(getrlimit)
        limit = effective_memory_limit(
            physical_memory,
            cgroup_memory_limit(cgroup_root, proc_root / "self" / "cgroup"),
            rlimit,
        )
        if limit is None:
            raise HostMemoryUnavailableError(
                "host memory monitoring cannot tell this machine's memory size; "
                "install psutil: pip install 'memscope[host]'"
            )
        self._limit = limit
        # What a subclass that re-reads cgroup limits keeps fixed: the RAM and rlimits.
        self._limits_besides_cgroup = effective_memory_limit(physical_memory, None, rlimit) or limit
        self._started(cgroup_root, proc_root)
        logger.debug("host memory limit: %s, memory read by %s", self._limit, self.reader)

    def _started(self, cgroup_root: Path, proc_root: Path) -> None:
        """Where a subclass sets itself up, with the roots this monitor reads."""

    @property
    def limit(self) -> HostMemoryLimit:
        """The limit the process is held to."""
        return self._limit

    @property
    def reuse_for(self) -> float:
        """Seconds for which a reader after every item (a batch's timeline) repeats this
        monitor's latest reading instead of reading anew: a reading is a system call, which
        items faster than a fraction of a millisecond would pay for more than their own work.
        ``REUSE_READING_FOR`` of this module when the monitor is made (1 ms; 0 under
        :class:`memscope.testing.FakeHost`, whose figures change between items that take no
        time); set it to 0 for a reading at every item. A batch reads it when it starts."""
        return self._reuse_for

    @reuse_for.setter
    def reuse_for(self, seconds: float) -> None:
        self._reuse_for = check_positive_number(seconds, "reuse_for", allow_zero=True)

    def __repr__(self) -> str:
        return f"HostMemoryMonitor(limit={self.limit!s}, reader={self.reader!r})"

    def resident_bytes(self) -> int:
        """This process's resident memory now."""
        return self._read_resident()

    def usage(self, resident_bytes: int) -> float:
        """``resident_bytes`` as a fraction of the limit, clamped to [0, 1]."""
        return min(max(resident_bytes / self._limit.size, 0.0), 1.0)


_default_getrlimit: GetRlimit | None = None
"""``None`` means :func:`resource.getrlimit`; :class:`memscope.testing.FakeHost` replaces it."""


def _import_psutil() -> ModuleType | None:
    # psutil ships no type information; importing it by name keeps it an optional extra
    # that mypy need not know about.
    try:
        return importlib.import_module("psutil")
    except ImportError:
        return None


class _PsutilResidentReader:
    def __init__(self, psutil: ModuleType) -> None:
        self._psutil = psutil
        self._pid = os.getpid()
        self._process = psutil.Process(self._pid)

    def __call__(self) -> int:
        # psutil binds a Process to a pid: after a fork, the child must not read its parent.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._process = self._psutil.Process(self._pid)
        return int(self._process.memory_info().rss)


_ON_LINUX = sys.platform.startswith("linux")


class _KeptOpenStatm(KeptOpenFile):
    """Resident memory from a ``statm`` file kept open and read with one ``os.pread``
    (reopened in a forked child, which must not read its parent's file)."""

    def __init__(self, path: Path, page_size: int) -> None:
        super().__init__(path, 256)  # statm is seven numbers on one line
        self.page_size = page_size

    def __call__(self) -> int:
        # A batch's timeline reads this up to a thousand times a second: the read is
        # inlined, and only the first two fields are split off.
        descriptor = self._descriptor
        if descriptor is None:
            data = self.read()
        else:
            try:
                data = os.pread(descriptor, self.size, 0)
            except OSError:
                data = self.read()  # reopens a descriptor closed under us
        fields = data.split(None, 2)
        if len(fields) < 2:
            raise ValueError(f"{self.path} is not a statm file: {data[:40]!r}")
        return int(fields[1]) * self.page_size


def _kept_open_statm_reader(proc_root: Path) -> _KeptOpenStatm | None:
    statm = proc_root / "self" / "statm"
    if not pread_available():
        return None
    try:
        reader = _KeptOpenStatm(statm, os.sysconf("SC_PAGE_SIZE"))
        reader()
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    return reader


def _proc_status_reader(proc_root: Path) -> tuple[Callable[[], int], str]:
    statm = proc_root / "self" / "statm"
    status = proc_root / "self" / "status"
    try:
        resident_bytes_from_status(status)
    except (OSError, ValueError):
        raise HostMemoryUnavailableError(
            f"host memory monitoring needs psutil (pip install 'memscope[host]') or a Linux "
            f"{proc_root} file system; neither {statm} nor {status} could be read"
        ) from None
    return (lambda: resident_bytes_from_status(status)), str(status)


_UNIT_BYTES = {
    "b": 1,
    # /proc writes "kB" but means KiB; the others appear in hand-made or foreign files.
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
}


def _kibibyte_line_value(line: str) -> int:
    """The bytes of a ``Label:  value unit`` line of /proc; ``ValueError`` when malformed."""
    _label, _, rest = line.partition(":")
    fields = rest.split()
    if not fields or len(fields) > 2:
        raise ValueError(f"{line.strip()!r} is not 'label: number unit'")
    unit = fields[1].lower() if len(fields) == 2 else "b"
    if unit not in _UNIT_BYTES:
        raise ValueError(f"{line.strip()!r} has an unknown unit {fields[1]!r}")
    return int(fields[0]) * _UNIT_BYTES[unit]


def _warn_unreadable(path: Path, error: Exception) -> None:
    logger.warning(
        "ignoring %s: it cannot be read as expected (%s); using the next source", path, error
    )
