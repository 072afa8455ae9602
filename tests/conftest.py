"""Shared test helpers: free loopback ports, waiting for a server to accept connections, and the
session's FMU builds (fixture ``fmus``)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from test_fmu_helpers import FmuBuilds

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(cond: Callable[[], bool], timeout_s: float = 60.0, poll_s: float = 0.01) -> None:
    """Await until ``cond()`` holds (polling; TimeoutError after timeout_s): readiness, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached within {timeout_s} s")
        await asyncio.sleep(poll_s)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 20.0) -> None:
    """Block until host:port accepts a TCP connection (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s") from None
            time.sleep(0.02)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fmus(tmp_path_factory: pytest.TempPathFactory) -> FmuBuilds:
    """The session's FMU builds (physics, hybrid, variant), test correction and C test host, each made
    on first use in a pytest temporary folder (never dist/)."""
    from test_fmu_helpers import FmuBuilds

    return FmuBuilds(tmp_path_factory.mktemp("fmu_builds"))


@pytest.fixture(scope="module")
def onnx(fmus: FmuBuilds):  # noqa: ANN201
    """The session's test correction (the one the native FMUs compile in) under onnxruntime."""
    from ml_onnx.runtime import OnnxCorrection

    return OnnxCorrection(fmus.correction())


@pytest.fixture(scope="session")
def dist_artifacts() -> Path:
    """dist/ with the product's artifacts (correction.onnx, BatchReactorTwin.fmu) built from the
    current sources: ``build.py``'s own step, a no-op when its content stamps match (as under
    ``python3 build.py test``), a rebuild when they don't. Tests of the product as shipped (the demo
    runs the real FMU) take this fixture instead of trusting whatever an earlier build left."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("project_build", ROOT / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.build_artifacts()
    return ROOT / "dist"
