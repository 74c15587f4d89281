"""pytest plugin of the check's test runs (``-p bench.gpu_check.pytest_plugin``).

* registers the hypothesis profile ``gpu`` when ``tests/conftest.py`` has not: the suite's
  ``ogkernels`` profile with ``max_examples`` = ``OGKERNELS_GPU_CHECK_EXAMPLES`` (default 200;
  tests that set their own ``max_examples`` keep it);
* skips the tests that have not started when the check's deadline
  (``OGKERNELS_GPU_CHECK_DEADLINE``, epoch seconds) has passed, so a run cut short still ends
  cleanly with its junit report.
"""

from __future__ import annotations

import os
import time

import pytest

PROFILE = "gpu"
DEFAULT_EXAMPLES = 200


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    try:
        settings.get_profile(PROFILE)
    except InvalidArgument:
        try:
            parent = settings.get_profile("ogkernels")
        except InvalidArgument:
            parent = settings.default
        examples = int(os.environ.get("OGKERNELS_GPU_CHECK_EXAMPLES", DEFAULT_EXAMPLES))
        settings.register_profile(PROFILE, parent=parent, max_examples=examples)


def pytest_runtest_setup(item):
    deadline = os.environ.get("OGKERNELS_GPU_CHECK_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("gpu_check: the section's time budget ran out before this test")
