"""torch 2.1, the floor, lacks ``torch.OutOfMemoryError`` (torch 2.5): its absence is detected."""

from __future__ import annotations

import pytest
import torch

from memscope.oom import _detection


def test_without_torch_out_of_memory_error_the_cuda_one_is_recognised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before torch 2.5 only ``torch.cuda.OutOfMemoryError`` exists; the types found are it
    and ``MemoryError``, and an error of it is out of memory."""
    cuda_error = torch.cuda.OutOfMemoryError
    monkeypatch.delattr(torch, "OutOfMemoryError")
    types = _detection._oom_types()
    assert types == (MemoryError, cuda_error)
    monkeypatch.setattr(_detection, "_OOM_TYPES", types)
    assert _detection.is_oom_error(cuda_error("CUDA out of memory. Tried to allocate 2 GiB"))


def test_without_either_error_type_the_messages_still_tell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With neither error type (an out-of-tree build), ``MemoryError`` is the only type and
    an allocator's RuntimeError is still recognised by its message."""
    monkeypatch.delattr(torch, "OutOfMemoryError")
    monkeypatch.delattr(torch.cuda, "OutOfMemoryError")
    types = _detection._oom_types()
    assert types == (MemoryError,)
    monkeypatch.setattr(_detection, "_OOM_TYPES", types)
    assert _detection.is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert _detection.is_oom_error(MemoryError())
    assert not _detection.is_oom_error(RuntimeError("shape mismatch"))
