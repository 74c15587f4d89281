"""``python -m integration.train_llava``: the main job, kept for the README command and scripts.

The job lives in :mod:`ogkernels.jobs.train_llava` (installed as ``ogkernels-train``, runnable
from any directory); this module only forwards to it.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ogkernels.jobs.llava_model import build_tiny_llava, default_attention, num_patches, tiny_llava_config  # noqa: E402,F401
from ogkernels.jobs.train_llava import cli, main, parse_args, train  # noqa: E402,F401
from ogkernels.jobs.train_metrics import batch_cost, padding_cost  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(cli())
