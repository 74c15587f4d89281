"""Installed command-line jobs (console scripts; they run from any directory).

* :mod:`ogkernels.jobs.sam2_masks` (``ogkernels-sam2-masks``): SAM 2 automatic masks for a
  whole dataset, into a mask store.
* :mod:`ogkernels.jobs.train_llava` (``ogkernels-train``): the main job, a LLaVA trained with
  OG-Fusion on packed batches (:mod:`~ogkernels.jobs.llava_data`,
  :mod:`~ogkernels.jobs.llava_model`, :mod:`~ogkernels.jobs.train_metrics` beside it).
"""
