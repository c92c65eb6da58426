"""Shared fixtures, and the ``gpu`` marker's skip rule."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from memscope.testing import NoAccelerator


def _real_accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_devices: runs without NoAccelerator, so memscope sees the machine's own devices",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _real_accelerator() is not None:
        return
    skip = pytest.mark.skip(reason="needs a real CUDA or MPS device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_only_machine(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests not marked ``gpu`` see a CPU-only machine, so a GPU workstation runs them as CI
    does; the fakes of memscope.testing add the devices a test needs."""
    marked = request.node.get_closest_marker
    if marked("gpu") is not None or marked("real_devices") is not None:
        yield
        return
    with NoAccelerator():
        yield


@pytest.fixture
def accelerator() -> str:
    """The real accelerator's device type, for tests marked ``gpu``."""
    device_type = _real_accelerator()
    assert device_type is not None
    return device_type


@pytest.fixture
def memscope_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture everything the ``memscope`` logger emits, DEBUG included."""
    with caplog.at_level(logging.DEBUG, logger="memscope"):
        yield caplog
