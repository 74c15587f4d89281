"""The reference's flags for a set of ``OGTokenOptions`` layout fields (tests compare against it)."""

from __future__ import annotations

from ogkernels import reference as R


def flags_for(global_view="mean", no_masktoken=False, image_filling=False, averaging=False, max_masks=None):
    """``ReferenceFlags`` equivalent to these option values (the reference's default limit 20)."""
    return R.ReferenceFlags(
        global_view=global_view != "none",
        averaging_global_view=global_view == "mean",
        no_masktoken=no_masktoken,
        image_filling=image_filling,
        averaging=averaging,
        mask_limiting=max_masks is not None,
        mask_limit=max_masks or 20,
    )
