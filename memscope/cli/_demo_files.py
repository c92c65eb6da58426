"""What the demo writes and how it runs: its output folder, its PNGs, its threads and the
C allocator setting that makes its host-memory figures repeat."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from memscope.exceptions import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["check_output_folder", "demo_threads", "fix_mmap_threshold"]

MAX_TORCH_THREADS = 2
"""The tiny network gains little from more threads, and loses much when they contend."""
OUTPUT_FOLDER_PREFIX = "memscope-demo-"


def pillow_installed() -> bool:
    # Imported, not just looked up: a package that is present but cannot load is missing too.
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def save_png(path: Path, pixels: torch.Tensor) -> Path:
    """Write ``pixels``, a ``(height, width, 3)`` uint8 tensor, as an RGB PNG with Pillow."""
    from PIL import Image

    height, width, _channels = pixels.shape
    contiguous = pixels.detach().to("cpu").contiguous()
    # torch without numpy offers no buffer interface, and Pillow wants bytes: they are read
    # straight from the tensor's memory, which `contiguous` keeps alive meanwhile.
    raw = ctypes.string_at(contiguous.data_ptr(), contiguous.numel())
    # The fastest compression: these are throwaway pictures, and encoding at the default
    # level would take longer than colorizing them.
    Image.frombytes("RGB", (width, height), raw).save(path, format="PNG", compress_level=1)
    return path


def check_output_folder(out: object, name: str = "out") -> Path:
    """``out`` as a folder the demo can write into: new, or existing and empty.

    Raises :class:`InvalidArgumentError`, its message starting with ``name``, when the
    folder holds files, is a file, or cannot be created or written (no such parent, a
    read-only or virtual file system). A folder made to find out is removed again.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"{name} must be a path, got {out!r}")
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidArgumentError(
            f"{name} {str(folder)!r} already exists and is not an empty folder; "
            "the demo never overwrites files"
        )
    problem = writing_problem(folder)
    if problem is not None:
        raise InvalidArgumentError(f"{name} {str(folder)!r} {problem}")
    return folder


def writing_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder``, made where missing; ``None`` if they can.

    Trying is the only test that holds everywhere: permission bits say nothing to root, and
    virtual file systems such as ``/proc`` refuse what their bits allow. Whatever the try
    makes is removed again.
    """
    made: list[Path] = []
    try:
        missing = [path for path in (folder, *folder.parents) if not path.exists()]
        for path in reversed(missing):
            try:
                path.mkdir()
            except OSError as error:
                return f"cannot be created: {error.strerror or error}"
            made.append(path)
        probe = folder / ".memscope-demo-probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            return f"cannot be written: {error.strerror or error}"
        return None
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()


_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter for the size from which ``malloc`` maps memory directly."""
DEMO_MMAP_THRESHOLD = 1 << 16
"""Blocks of this size and larger (every feature map and image buffer of the demo, at 96x96
pixels and up) are mapped on their own."""


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at :data:`DEMO_MMAP_THRESHOLD`; whether it was set.

    The demo reads the leak as resident memory. glibc raises its mmap threshold each time a
    mapped block is freed, so after a while the feature maps come from the heap instead,
    where a freed block between two leaked ones stays resident: the same run then read 8 or
    12 MiB per item and sometimes named a leak in the run with cleanup. At 1 MiB, blocks
    just under it (one layer's features at 96x96 pixels, 576 KiB) still came from the heap
    and the growth read 1.13 or 1.69 MiB per item for 1.13 MiB left behind. A fixed 64 KiB
    threshold keeps every such block in a mapping of its own, returned to the system when
    freed, so the figures follow the tensors and repeat from run to run. It applies to the
    whole process (glibc has no per-thread setting) and is a no-op elsewhere than glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, DEMO_MMAP_THRESHOLD))


def remove_output(folder: Path, *, remove_folder: bool) -> None:
    """Remove what an interrupted run wrote into ``folder`` (a new or empty folder before)."""
    if remove_folder:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def new_output_folder(parent: Path) -> Path:
    stem = OUTPUT_FOLDER_PREFIX + time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        folder = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free output folder name {stem}-N in {str(parent)!r}")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads, and give the caller's setting back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_threads() -> int:
    """Torch threads for the demo: half the cores this process may use, one to two.

    The network is tiny: each operation is over before a second thread pays off, and threads
    that wait for each other on a busy machine cost far more than they gain (on two busy
    cores, two threads ran the demo three times slower than one).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call.
        cores = os.cpu_count() or 1
    return max(1, min(MAX_TORCH_THREADS, cores // 2))
