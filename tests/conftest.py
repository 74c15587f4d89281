"""Shared test set-up.

Without a GPU the Triton kernels run under the interpreter: ``TRITON_INTERPRET=1`` must be
set before triton is first imported, so it is set here for the whole session. Tests that
want the Triton path use the ``triton_path`` fixture (``OGKERNELS_FORCE_TRITON=1``).
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

SHARED_DATA = pathlib.Path(
    os.environ.get("OGKERNELS_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still run in CI)")
    config.addinivalue_line("markers", "triton: runs the Triton kernels (interpreter on CPU)")


@pytest.fixture
def triton_path(monkeypatch):
    """Run the ops through their Triton kernels (the interpreter when there is no GPU)."""
    monkeypatch.setenv("OGKERNELS_FORCE_TRITON", "1")
    yield


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set OGKERNELS_SHARED_DATA)")
    return SHARED_DATA


SAV_FILE = "sav_000001_auto.json"  # SA-V (Meta), CC BY 4.0


@pytest.fixture(scope="session")
def sav_frames(shared_data: pathlib.Path):
    """The first 6 frames of SA-V ``sav_000001`` (Segment Anything Video, Meta, CC BY 4.0):
    per frame ``bool (9, 848, 480)`` masklets and their COCO RLEs."""
    path = shared_data / SAV_FILE
    if not path.is_file():
        pytest.skip(f"{path} not found (set OGKERNELS_SHARED_DATA to the folder holding {SAV_FILE})")
    from ogkernels.tools.synthetic import sav_masklets

    return sav_masklets(path, slice(0, 6))
