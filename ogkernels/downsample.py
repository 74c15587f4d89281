"""``downsample_masks``: the Phi_alpha operator (functional API, validation, dispatch)."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ._dispatch import use_triton
from ._validation import check_choice, describe, fail
from .ops.downsample import MaskImage, downsample_torch, downsample_triton
from .ops.frames import FRAMES
from .options import MODES, check_alpha, parse_grid
from .packed_masks import PackedMasks

MaskItem = Union[torch.Tensor, PackedMasks]
MaskInput = Union[MaskItem, Sequence[MaskItem]]
Grid = Union[int, Sequence[int]]

def _as_mask_image(argument: str, item: object) -> MaskImage:
    if isinstance(item, PackedMasks):
        return MaskImage.of(item)
    if not isinstance(item, torch.Tensor):
        fail(argument, "a (N, H, W) mask tensor or a PackedMasks", item, error=TypeError)
    if item.dim() != 3:
        fail(argument, "a (N, H, W) mask tensor (one image's masks)", item)
    if item.shape[1] < 1 or item.shape[2] < 1:
        fail(argument, "masks with H >= 1 and W >= 1", item)
    if item.is_complex():
        fail(argument, "a bool, integer or floating mask tensor", item, error=TypeError)
    if item.dtype not in (torch.bool, torch.uint8):
        if item.numel() and not bool(((item == 0) | (item == 1)).all()):
            fail(argument, "mask values in {0, 1}", describe(item) + " with other values")
        item = item != 0
    elif item.dtype == torch.uint8 and item.numel() and int(item.max()) > 1:
        fail(argument, "uint8 mask values in {0, 1}", describe(item) + f" with max {int(item.max())}")
    return MaskImage.of(item)


def collect_mask_images(masks: MaskInput, argument: str = "masks") -> list[MaskImage]:
    """Validate ``masks`` (one image or a list of images) and return one entry per image."""
    if isinstance(masks, (torch.Tensor, PackedMasks)):
        items, names = [masks], [argument]
    elif isinstance(masks, (list, tuple)):
        items, names = list(masks), [f"{argument}[{i}]" for i in range(len(masks))]
    else:
        fail(argument, "a (N, H, W) tensor, a PackedMasks, or a list of them", masks, error=TypeError)
    images = [_as_mask_image(name, item) for name, item in zip(names, items)]
    if images:
        device = images[0].data.device
        for name, image in zip(names, images):
            if image.data.device != device:
                fail(name, f"masks on {device} (the device of {names[0]})", image.data)
    return images


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
        masks: one image's masks ``(N, H, W)`` (bool, or 0/1 uint8/float), a
            :class:`PackedMasks`, or a list of those (one per image, sizes may differ);
            all on one device. Images are concatenated in order.
        grid: the token count ``V``, or ``(gh, gw)`` with ``V = gh·gw``.
        alpha: threshold (> 0). ``flat``: keep bin ``j`` iff its estimated count
            ``S_j · N / (L_j · V) >= alpha`` (exact rational arithmetic; 0.5 is the reference).
            ``patch``: keep a cell iff it holds ``>= alpha`` mask pixels.
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
    if use_triton(images[0].data.device):
        return downsample_triton(images, shape, alpha, mode, frame)
    return downsample_torch(images, shape, alpha, mode, frame)
