"""The main job's data, kept importable from a checkout: it lives in :mod:`ogkernels.jobs.llava_data`."""

from ogkernels.jobs.llava_data import (  # noqa: F401
    CharTokenizer,
    LlavaJsonDataset,
    SyntheticCaptions,
    packed_lengths,
    reference_batch,
)
