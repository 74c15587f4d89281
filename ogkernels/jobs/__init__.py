"""Installed command-line jobs (console scripts; they run from any directory).

* :mod:`ogkernels.jobs.sam2_masks` (``ogkernels-sam2-masks``): SAM 2 automatic masks for a
  whole dataset, into a mask store.
"""
