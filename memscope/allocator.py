"""CUDA's caching allocator, configured from memscope: the remedies for fragmentation.

PyTorch reads its allocator's settings from ``PYTORCH_CUDA_ALLOC_CONF`` (and, since 2.9,
``PYTORCH_ALLOC_CONF``) once, when CUDA starts; later changes to the environment do
nothing. :func:`configure_allocator` applies settings the way that still works: through
the environment before CUDA starts, through torch's runtime setter after, and refuses
what neither can do::

    import memscope

    memscope.configure_allocator(expandable_segments=True)  # before the first CUDA tensor
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, MutableMapping

from memscope._validation import check_fraction, check_int
from memscope.backends import registered_backends
from memscope.backends.cuda import ASYNC_ALLOCATOR, CudaBackend
from memscope.exceptions import (
    AllocatorSettingsError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)

__all__ = ["ALLOCATOR_VARIABLES", "configure_allocator"]

logger = logging.getLogger("memscope")

ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
"""The environment variables torch reads its CUDA allocator's settings from, the one CUDA
prefers first. Both may be set, and torch's generic and CUDA-specific configurations read
them in different orders, so memscope merges its settings into every one that is set."""

_BACKENDS = ("native", ASYNC_ALLOCATOR)


def configure_allocator(
    *,
    expandable_segments: bool | None = None,
    max_split_size_mb: int | None = None,
    garbage_collection_threshold: float | None = None,
    backend: str | None = None,
) -> str:
    """Apply settings to CUDA's caching allocator; returns the settings as torch got them.

    Args:
        expandable_segments: grow segments in place instead of allocating new ones, the
            remedy for memory reserved but free in fragments.
        max_split_size_mb: never split cached blocks larger than this (an int > 20).
        garbage_collection_threshold: reclaim cached blocks once this fraction of the
            device's memory is reserved (0 < t < 1).
        backend: ``"native"`` or ``"cudaMallocAsync"`` (CUDA's own allocator); fixed when
            CUDA starts.

    Before CUDA starts (``torch.cuda.is_initialized()`` is false) the settings are merged
    into the environment: into ``PYTORCH_CUDA_ALLOC_CONF`` and ``PYTORCH_ALLOC_CONF``
    wherever they are set (keys given here replace the same keys, other settings stay), or
    into a new ``PYTORCH_CUDA_ALLOC_CONF``. Child processes inherit them. After it, they go
    to torch's runtime setter, where the installed torch has one.

    Raises:
        InvalidArgumentTypeError, InvalidArgumentError: a setting of the wrong type or out
            of range, or no setting at all.
        AllocatorSettingsError: CUDA has started and the setting cannot change now: the
            ``backend`` (always fixed by then), or any setting where torch has no runtime
            setter, or one torch refused. The message names the setting.
    """
    settings = _checked_settings(
        expandable_segments, max_split_size_mb, garbage_collection_threshold, backend
    )
    cuda = _cuda_backend_class()
    if not cuda.initialized():
        return _apply_through_environment(settings, os.environ)
    return _apply_at_run_time(cuda, settings)


def _checked_settings(
    expandable_segments: object,
    max_split_size_mb: object,
    garbage_collection_threshold: object,
    backend: object,
) -> dict[str, str]:
    settings: dict[str, str] = {}
    if expandable_segments is not None:
        if not isinstance(expandable_segments, bool):
            raise InvalidArgumentTypeError(
                f"expandable_segments must be True, False or None, got "
                f"{expandable_segments!r} of type {type(expandable_segments).__name__}"
            )
        settings["expandable_segments"] = str(expandable_segments)
    if max_split_size_mb is not None:
        # torch refuses 20 MB or less: its large-block size.
        megabytes = check_int(max_split_size_mb, "max_split_size_mb", minimum=21)
        settings["max_split_size_mb"] = str(megabytes)
    if garbage_collection_threshold is not None:
        name = "garbage_collection_threshold"
        threshold = check_fraction(garbage_collection_threshold, name)
        if threshold == 1.0:  # torch wants it below 1
            raise InvalidArgumentError(f"{name} must be below 1, got {threshold!r}")
        settings[name] = repr(threshold)
    if backend is not None:
        if backend not in _BACKENDS:
            raise InvalidArgumentError(
                f"backend must be one of {', '.join(map(repr, _BACKENDS))} or None, got {backend!r}"
            )
        settings["backend"] = str(backend)
    if not settings:
        raise InvalidArgumentError(
            "configure_allocator needs at least one setting (expandable_segments, "
            "max_split_size_mb, garbage_collection_threshold or backend)"
        )
    return settings


def _cuda_backend_class() -> type[CudaBackend]:
    # The registered one, so that memscope.testing's FakeDevice stands in for torch.
    for backend in registered_backends():
        if issubclass(backend, CudaBackend):
            return backend
    return CudaBackend


def _apply_through_environment(
    settings: dict[str, str], environment: MutableMapping[str, str]
) -> str:
    names = [name for name in ALLOCATOR_VARIABLES if environment.get(name)]
    for name in reversed(names or ALLOCATOR_VARIABLES[:1]):
        merged = _merge_settings(environment.get(name, ""), settings)
        environment[name] = merged
        logger.info("CUDA allocator settings in the environment: %s=%s", name, merged)
    # What CUDA reads: the first variable it prefers, which the loop wrote last.
    return merged


def _apply_at_run_time(cuda: type[CudaBackend], settings: dict[str, str]) -> str:
    backend = settings.pop("backend", None)
    if backend is not None:
        running = cuda(None).allocator_backend()
        if backend != running:
            raise AllocatorSettingsError(
                f"backend={backend!r} cannot be applied: CUDA has started with the "
                f"{running or 'native'} allocator, which is fixed for the process; call "
                "configure_allocator before the first CUDA call, or set "
                f"PYTORCH_CUDA_ALLOC_CONF=backend:{backend} before starting Python"
            )
        if not settings:
            return f"backend:{backend}"
    text = _joined(settings)
    try:
        applied = cuda.set_allocator_settings(text)
    except Exception as error:
        raise AllocatorSettingsError(
            f"torch refused the allocator settings {text!r} at run time: {error}"
        ) from error
    if not applied:
        raise AllocatorSettingsError(
            f"{', '.join(settings)} cannot be applied: CUDA has started, and this torch has no "
            "runtime allocator setter; call configure_allocator before the first CUDA call, or "
            f"set PYTORCH_CUDA_ALLOC_CONF={text} before starting Python"
        )
    logger.info("CUDA allocator settings applied at run time: %s", text)
    return text


def _merge_settings(existing: str, settings: dict[str, str]) -> str:
    """``existing`` (``key:value,...``) with ``settings`` in place of the same keys and
    after the others; a list value such as ``roundup_power2_divisions:[256:1,>:2]`` stays
    one setting."""
    merged: dict[str, str] = {}
    for item in _items(existing):
        key, _, value = item.partition(":")
        merged[key.strip()] = value.strip()
    merged.update(settings)
    return _joined(merged)


def _joined(settings: dict[str, str]) -> str:
    return ",".join(f"{key}:{value}" for key, value in settings.items())


def _items(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for position, character in enumerate(text):
        if character == "[":
            depth += 1
        elif character == "]":
            depth = max(depth - 1, 0)
        elif character == "," and depth == 0:
            if text[start:position].strip():
                yield text[start:position]
            start = position + 1
    if text[start:].strip():
        yield text[start:]
