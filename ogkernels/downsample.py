"""``downsample_masks``: the Phi_alpha operator (functional API and validation).

The work is the custom op ``ogkernels::phi`` (``ops/phi.py``): one Triton launch per batch on
CUDA, a vectorised PyTorch pass per image elsewhere.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ._validation import check_choice, describe, fail, numpy_hint
from .ops.frames import FRAMES
from .ops.phi import MaskImage
from .options import MODES, check_alpha, parse_grid
from .packed_masks import PackedMasks

MaskItem = Union[torch.Tensor, PackedMasks]
MaskInput = Union[MaskItem, Sequence[MaskItem]]
Grid = Union[int, Sequence[int]]

# Dense masks are read as bytes: any non-zero byte is one pixel.
BYTE_DTYPES = (torch.bool, torch.uint8)


def as_mask_image(argument: str, item: object) -> MaskImage:
    """Validate one image's raw masks: a ``(N, H, W)`` tensor or a :class:`PackedMasks`.

    ``bool``/integer masks: any non-zero value is a mask pixel. Floating masks must hold only
    0 and 1 (checked: one host read) — soft masks are refused rather than rounded."""
    if isinstance(item, PackedMasks):
        if item.bits.device.type == "meta":
            fail(argument, "masks with data (not on the meta device)", f"PackedMasks on {item.bits.device}")
        return MaskImage(item.bits.contiguous(), item.num_masks, item.height, item.width, True)
    if not isinstance(item, torch.Tensor):
        fail(argument, "a (N, H, W) mask tensor or a PackedMasks" + numpy_hint(item), item, error=TypeError)
    if item.dim() != 3:
        fail(argument, "a (N, H, W) mask tensor (one image's masks)", item)
    if item.shape[1] < 1 or item.shape[2] < 1:
        fail(argument, "masks with H >= 1 and W >= 1", item)
    if item.device.type == "meta":
        fail(argument, "masks with data (not on the meta device)", item)
    if item.is_complex():
        fail(argument, "a bool, integer or floating mask tensor", item, error=TypeError)
    if item.dtype.is_floating_point:
        if item.numel() and not bool(((item == 0) | (item == 1)).all()):
            fail(argument, "floating mask values in {0, 1} (soft masks are not supported)", describe(item) + " with other values")
        item = item != 0
    elif item.dtype not in BYTE_DTYPES:
        item = item != 0
    return MaskImage(item.contiguous(), item.shape[0], item.shape[1], item.shape[2], False)


def collect_mask_images(masks: MaskInput, argument: str = "masks") -> list[MaskImage]:
    """Validate ``masks`` (one image or a list of images) and return one entry per image."""
    if isinstance(masks, (torch.Tensor, PackedMasks)):
        items, names = [masks], [argument]
    elif isinstance(masks, (list, tuple)):
        items, names = list(masks), [f"{argument}[{i}]" for i in range(len(masks))]
    else:
        fail(argument, "a (N, H, W) tensor, a PackedMasks, or a list of them" + numpy_hint(masks), masks, error=TypeError)
    devices = [(name, item.device) for name, item in zip(names, items) if isinstance(item, (torch.Tensor, PackedMasks))]
    for name, device in devices[1:]:
        if device != devices[0][1]:
            fail(name, f"masks on {devices[0][1]} (the device of {devices[0][0]})", f"masks on {device}")
    return [as_mask_image(name, item) for name, item in zip(names, items)]


def run_phi(images: list[MaskImage], grid: tuple[int, int], alpha: float, mode: str, frame: str) -> torch.Tensor:
    """The ``ogkernels::phi`` op on validated images: ``(M, gh·gw)`` bool."""
    return torch.ops.ogkernels.phi(
        [image.data for image in images],
        [image.height for image in images],
        [image.width for image in images],
        [image.packed for image in images],
        grid[0],
        grid[1],
        alpha,
        mode,
        frame,
    )


def downsample_masks(
    masks: MaskInput,
    grid: Grid,
    *,
    alpha: float = 0.5,
    mode: str = "flat",
    frame: str = "none",
) -> torch.Tensor:
    """Phi_alpha: downsample SAM2 masks to the vision encoder's token grid.

    Args:
        masks: one image's masks ``(N, H, W)`` (bool or integer: any non-zero value is a mask
            pixel; floating: 0/1 only), a :class:`PackedMasks`, or a list of those (one per
            image, sizes may differ); all on one device. Images are concatenated in order.
        grid: the token count ``V``, or ``(gh, gw)`` with ``V = gh·gw``.
        alpha: threshold (> 0), read as the decimal it prints as (``0.1`` is 1/10).
            ``flat``: keep bin ``j`` iff its estimated count ``S_j · N / (L_j · V) >= alpha``
            (exact rational arithmetic; 0.5 is the reference). ``patch``: keep a cell iff it
            holds ``>= alpha`` mask pixels.
        mode: ``"flat"``, the reference operator (1-D adaptive bins over the row-major
            flattened mask); ``"patch"``, true 2-D adaptive pooling onto the ``gh × gw`` grid.
        frame: ``patch`` only. ``"none"`` (the mask itself), ``"pad"`` (LLaVA's
            pad-to-square: the mask centred in a ``max(H, W)`` square) or ``"crop"`` (the
            centred ``min(H, W)`` square of a shortest-edge resize + centre crop).

    Returns:
        ``BoolTensor (M, V)`` on the masks' device, ``M`` the total number of masks.
    """
    check_choice("mode", mode, MODES)
    check_choice("frame", frame, FRAMES)
    if mode == "flat" and frame != "none":
        fail("frame", "'none' with mode='flat' (frames apply to mode='patch')", frame)
    alpha = check_alpha(alpha)
    shape = parse_grid(grid, mode)
    images = collect_mask_images(masks)
    if not images:
        return torch.zeros(0, shape[0] * shape[1], dtype=torch.bool)
    return run_phi(images, shape, alpha, mode, frame)
