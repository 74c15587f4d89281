"""SAM2 masks on disk: a compact, sharded, bit-packed mask store and its tools.

* :class:`MaskStoreWriter` / :class:`MaskStore`: write and read the store (format in
  :mod:`ogkernels.masks.format`); the reader returns :class:`ogkernels.PackedMasks` ready for
  :func:`ogkernels.downsample_masks`, single or batched (optionally to a device from pinned
  memory), plus the SAM2 metadata (:class:`MaskMetadata`).
* :func:`import_reference_layout`: convert the reference's one-``.npy``-per-mask folders.
* :func:`run_mask_job`: the resumable, sharded mask-generation loop behind
  ``python -m integration.sam2_mask_job``.
* :class:`BitmapParams`, :func:`downsample_store`, :meth:`MaskStore.load_bitmaps`: the Phi
  bitmaps kept beside the masks (:mod:`~ogkernels.masks.bitmap_store`);
  :func:`token_count_table`: every image's OG token count from them, cached in the store.
* ``python -m ogkernels.masks {import,info,verify,downsample}``: the command line.

Untrusted input: keys follow one grammar (:mod:`~ogkernels.masks.keys`), only regular files
are opened and dataset paths stay inside their root (:mod:`~ogkernels.masks.files`), every
shard header is checked on open (:mod:`~ogkernels.masks.shard_index`), and concurrent jobs
are coordinated by locks (:mod:`~ogkernels.masks.locks`).
"""

from .bitmap_store import BitmapParams
from .counts import TokenCountTable, token_count_table
from .downsample_job import DownsampleReport, downsample_store
from .errors import MaskFileError, MaskStoreError, MaskStoreVersionError
from .format import FORMAT_VERSION
from .keys import check_key, key_problem
from .locks import StoreLock, job_lock_name
from .importer import (
    ImportReport,
    ReferenceImage,
    import_reference_layout,
    read_reference_masks,
    scan_reference_layout,
)
from .job import (
    JobReport,
    MaskGenerator,
    list_image_folder,
    list_llava_json,
    resolve_shard,
    run_mask_job,
    select_shard,
)
from .metadata import MaskMetadata
from .order import reference_order
from .reader import ImageInfo, MaskStore
from .report import MaskFailure
from .rle import decode_rle, encode_rle
from .sam2_output import masks_from_sam2
from .writer import MaskStoreWriter

__all__ = [
    "FORMAT_VERSION",
    "BitmapParams",
    "DownsampleReport",
    "TokenCountTable",
    "downsample_store",
    "token_count_table",
    "ImageInfo",
    "ImportReport",
    "JobReport",
    "MaskFailure",
    "MaskFileError",
    "MaskGenerator",
    "MaskMetadata",
    "MaskStore",
    "MaskStoreError",
    "MaskStoreVersionError",
    "MaskStoreWriter",
    "ReferenceImage",
    "StoreLock",
    "check_key",
    "decode_rle",
    "encode_rle",
    "import_reference_layout",
    "job_lock_name",
    "key_problem",
    "list_image_folder",
    "list_llava_json",
    "masks_from_sam2",
    "read_reference_masks",
    "reference_order",
    "resolve_shard",
    "run_mask_job",
    "scan_reference_layout",
    "select_shard",
]
