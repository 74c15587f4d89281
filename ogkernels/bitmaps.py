"""``MaskBitmaps``: one image's masks already downsampled by Phi_alpha, with what they came from.

A mask store can keep these beside the masks (kilobytes per image instead of megabytes), and
``og_tokens`` / ``OGFusion`` / the token counts take them in place of raw masks. They carry
the downsampling parameters they were made with, so a mismatch with the options in use is an
error, not a silent wrong answer, and each raw mask's emptiness, which the reference's batch
gate reads (a non-empty mask can downsample to an empty bitmap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_choice, check_tensor, fail
from .ops.frames import FRAMES
from .options import MODES, check_alpha


@dataclass(frozen=True)
class MaskBitmaps:
    """Phi_alpha bitmaps of the ``N`` masks of one image.

    Attributes:
        bits: ``(N, V)`` bool, ``V = gh·gw``: ``downsample_masks(masks, grid, alpha=…,
            mode=…, frame=…)`` of the image's masks.
        nonempty: ``(N,)`` bool, on the device of ``bits``: the raw mask had a set pixel.
        grid: ``(gh, gw)`` (``(1, V)`` for ``mode="flat"``).
        alpha, mode, frame: the downsampling parameters.
    """

    bits: torch.Tensor
    nonempty: torch.Tensor
    grid: tuple[int, int]
    alpha: float
    mode: str
    frame: str

    def __post_init__(self) -> None:
        check_tensor("MaskBitmaps.bits", self.bits)
        check_tensor("MaskBitmaps.nonempty", self.nonempty)
        if self.bits.dtype != torch.bool:
            fail("MaskBitmaps.bits", "a (N, V) bool tensor", self.bits, error=TypeError)
        if self.bits.dim() != 2:
            fail("MaskBitmaps.bits", "a (N, V) bool tensor", self.bits)
        if not isinstance(self.grid, (tuple, list)):
            fail("MaskBitmaps.grid", "a pair of ints (gh, gw)", self.grid, error=TypeError)
        grid = tuple(self.grid)
        if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            fail("MaskBitmaps.grid", "a pair of ints (gh, gw) >= 1", self.grid)
        if grid[0] * grid[1] != self.bits.shape[1]:
            fail("MaskBitmaps.bits", f"V = gh·gw = {grid[0] * grid[1]} columns for grid {grid}", self.bits)
        object.__setattr__(self, "grid", grid)
        if self.nonempty.dtype != torch.bool:
            fail("MaskBitmaps.nonempty", f"a ({self.bits.shape[0]},) bool tensor", self.nonempty, error=TypeError)
        if tuple(self.nonempty.shape) != (self.bits.shape[0],):
            fail("MaskBitmaps.nonempty", f"a ({self.bits.shape[0]},) bool tensor", self.nonempty)
        if self.nonempty.device != self.bits.device:
            fail("MaskBitmaps.nonempty", f"a tensor on {self.bits.device} (the device of bits)", self.nonempty)
        self._check_parameters()

    def _check_parameters(self) -> None:
        object.__setattr__(self, "alpha", check_alpha(self.alpha, "MaskBitmaps.alpha"))
        check_choice("MaskBitmaps.mode", self.mode, MODES)
        check_choice("MaskBitmaps.frame", self.frame, FRAMES)
        if self.mode == "flat" and self.frame != "none":
            fail("MaskBitmaps.frame", "'none' with mode='flat' (frames apply to mode='patch')", self.frame)

    @property
    def num_masks(self) -> int:
        return self.bits.shape[0]

    @property
    def device(self) -> torch.device:
        return self.bits.device

    def parameters(self) -> tuple[tuple[int, int], float, str, str]:
        """``(grid, alpha, mode, frame)``: what the bitmaps were made with."""
        return self.grid, self.alpha, self.mode, self.frame

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MaskBitmaps":
        return MaskBitmaps(
            self.bits.to(device, non_blocking=non_blocking),
            self.nonempty.to(device, non_blocking=non_blocking),
            self.grid,
            self.alpha,
            self.mode,
            self.frame,
        )
