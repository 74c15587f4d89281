"""Bit-packed masks: 8 pixels per byte, the layout of ``numpy.packbits``.

A :class:`PackedMasks` holds the ``N`` masks of one image. Each mask is flattened row-major
(``H·W`` pixels) and packed most-significant bit first, exactly what
``numpy.packbits(masks.reshape(N, -1), axis=1)`` returns; the last byte of a mask is padded
with zero bits. ``downsample_masks`` reads this layout directly (8× less memory traffic than
bool masks); nothing is unpacked on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._validation import check_int, check_tensor, fail
from .ops.phi_torch import unpack_bits


def packed_row_bytes(height: int, width: int) -> int:
    """Bytes per packed mask of ``height × width`` pixels."""
    return (height * width + 7) // 8


@dataclass(frozen=True)
class PackedMasks:
    """The bit-packed masks of one image.

    Attributes:
        bits: ``uint8`` tensor ``(N, ceil(H·W / 8))``, row-major flattened masks packed MSB
            first (``numpy.packbits`` order), on any device.
        height: mask height ``H`` in pixels.
        width: mask width ``W`` in pixels.
    """

    bits: torch.Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        check_tensor("PackedMasks.bits", self.bits)
        for name in ("height", "width"):
            value = getattr(self, name)
            check_int(f"PackedMasks.{name}", value, minimum=1)
        if self.bits.dtype != torch.uint8:
            fail("PackedMasks.bits", "dtype uint8", self.bits, error=TypeError)
        expected = packed_row_bytes(self.height, self.width)
        if self.bits.dim() != 2 or self.bits.shape[1] != expected:
            fail(
                "PackedMasks.bits",
                f"shape (N, {expected}) for {self.height}x{self.width} masks",
                self.bits,
            )

    @property
    def num_masks(self) -> int:
        return self.bits.shape[0]

    @property
    def device(self) -> torch.device:
        return self.bits.device

    @property
    def shape(self) -> tuple[int, int, int]:
        """The unpacked shape ``(N, H, W)``."""
        return (self.num_masks, self.height, self.width)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedMasks":
        return PackedMasks(self.bits.to(device, non_blocking=non_blocking), self.height, self.width)

    @classmethod
    def from_dense(cls, masks: torch.Tensor | np.ndarray) -> "PackedMasks":
        """Pack a ``(N, H, W)`` bool/0-1 mask stack (tensor or array) on the CPU."""
        array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if array.ndim != 3:
            fail("masks", "a (N, H, W) mask stack", f"array of shape {array.shape}")
        if array.dtype != np.bool_:
            if array.size and not np.isin(array, (0, 1)).all():
                fail("masks", "values in {0, 1}", f"array of dtype {array.dtype} with other values")
            array = array.astype(np.bool_)
        n, h, w = array.shape
        if h < 1 or w < 1:
            fail("masks", "masks with H >= 1 and W >= 1", f"array of shape {array.shape}")
        bits = np.packbits(array.reshape(n, h * w), axis=1)
        return cls(torch.from_numpy(bits.reshape(n, packed_row_bytes(h, w))), h, w)

    def unpack(self) -> torch.Tensor:
        """The masks as a bool tensor ``(N, H, W)`` on the same device."""
        return unpack_bits(self.bits, self.height, self.width)
