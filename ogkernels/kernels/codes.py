"""The contract between the Triton kernels, their launchers and the PyTorch paths.

Plain ints (no Triton import), so the PyTorch paths produce exactly what the kernels
produce; each kernel file wraps the ones it uses as ``tl.constexpr``.
"""

# Tables of the placement gather (``gather_rows``), in this order; NO_TABLE gives a zero row.
PATCH_TABLE = 0  # the features' patch rows (B·V, F)
GLOBAL_TABLE = 1  # one global row per image (B, F)
BOM_TABLE = 2  # the begin-of-mask row (1, F)
MASK_MEAN_TABLE = 3  # one mean row per candidate mask (averaging)
NO_TABLE = -1

# States of a candidate mask, written by the token plan.
DROPPED = 0
KEPT = 1
KEPT_ALL_TOKENS = 2  # a lone empty mask that selects every token (the reference's cleaning)

# ``VarlenBatch.source_index`` of rows that are not a patch row (patch rows: ``b·V + v``).
BOM_ROW = -1
GLOBAL_ROW = -2
MASK_MEAN_ROW = -3
PAD_ROW = -4  # unused tail rows of a buffer sized by a bound

# ``global_view`` as the kernels see it.
GLOBAL_NONE = 0
GLOBAL_MEAN = 1
GLOBAL_FULL = 2
GLOBAL_VIEW_CODES = {"none": GLOBAL_NONE, "mean": GLOBAL_MEAN, "full": GLOBAL_FULL}
