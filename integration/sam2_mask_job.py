"""``python -m integration.sam2_mask_job``: the SAM 2 mask job, kept for checkouts and scripts.

The job lives in :mod:`ogkernels.jobs.sam2_masks` (installed as ``ogkernels-sam2-masks``,
runnable from any directory); this module only forwards to it.
"""

from __future__ import annotations

import sys

from ogkernels.jobs.sam2_masks import DEFAULT_CONFIG, build_parser, build_sam2_generator, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
