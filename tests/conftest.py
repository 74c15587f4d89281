"""Shared test set-up.

Without a GPU the Triton kernels run under the interpreter: ``TRITON_INTERPRET=1`` must be
set before triton is first imported, so it is set here for the whole session.

Op tests take the ``backend`` fixture (``torch``: the PyTorch path; ``triton``: the kernels —
under the interpreter on the CPU, natively on CUDA) and build their inputs on the ``device``
fixture: ``OGKERNELS_TEST_DEVICE`` (default ``cpu``; ``python -m bench.gpu_check`` runs the
same tests with ``cuda``). ``OGKERNELS_TEST_SCALE`` multiplies the number of hypothesis
examples (the GPU check raises it).
"""

from __future__ import annotations

import os
import pathlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ogkernels",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("ogkernels")

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still run in CI)")
    config.addinivalue_line("markers", "triton: runs the Triton kernels (interpreter on CPU)")


BACKENDS = ("torch", "triton")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Run the ops through one backend (``OGKERNELS_BACKEND``)."""
    monkeypatch.setenv("OGKERNELS_BACKEND", request.param)
    return request.param


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the op tests put their inputs (``OGKERNELS_TEST_DEVICE``, default ``cpu``)."""
    return torch.device(os.environ.get("OGKERNELS_TEST_DEVICE", "cpu"))


@pytest.fixture
def triton_path(monkeypatch):
    """Run the ops through their Triton kernels (the interpreter when there is no GPU)."""
    monkeypatch.setenv("OGKERNELS_FORCE_TRITON", "1")
    yield


@pytest.fixture(scope="session")
def sav_frames():
    """The first 6 frames of SA-V ``sav_000001`` (Segment Anything Video, Meta, CC BY 4.0;
    shipped in ``tests/data``): per frame ``bool (9, 848, 480)`` masklets and their COCO RLEs."""
    pytest.importorskip("pycocotools")  # decodes the RLEs (a bare GPU image may lack it)
    from ogkernels.tools.synthetic import sav_file, sav_masklets

    path = sav_file()
    if not path.is_file():
        pytest.fail(f"{path} is missing (it ships with the repository; OGKERNELS_SHARED_DATA overrides it)")
    return sav_masklets(path, slice(0, 6))
