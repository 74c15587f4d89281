"""``VarlenBatch``: variable-length sequences packed into one buffer, flash-attn style."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_tensor, fail

# Codes of ``VarlenBatch.source_index`` for rows that are not a patch-feature row.
BOM_ROW = -1  # the begin-of-mask token
GLOBAL_ROW = -2  # the global row of an image (mean of its patch rows)
MASK_MEAN_ROW = -3  # the mean of one mask's rows (``averaging=True``)
PAD_ROW = -4  # unused tail rows of a buffer sized by ``max_tokens``


@dataclass
class VarlenBatch:
    """``B`` sequences of ``C``-wide rows packed back to back (no padding between them).

    Attributes:
        values: ``(T_buf, C)``; sequence ``b`` is ``values[cu_seqlens[b]:cu_seqlens[b+1]]``.
            Rows past ``cu_seqlens[-1]`` exist only when the buffer was sized by a caller's
            ``max_tokens`` bound; they are zero.
        cu_seqlens: ``(B + 1,)`` int32, contiguous, on the values' device, starting at 0.
        max_seqlen: the longest sequence (a Python int; an upper bound when the buffer was
            sized without a host sync).
        source_index: ``(T_buf,)`` int64: the flat patch row ``b·V + v`` each row was copied
            from, or a negative code (:data:`BOM_ROW`, :data:`GLOBAL_ROW`,
            :data:`MASK_MEAN_ROW`, :data:`PAD_ROW`). None for batches built elsewhere.
    """

    values: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    source_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_tensor("values", self.values)
        check_tensor("cu_seqlens", self.cu_seqlens)
        if self.cu_seqlens.dtype != torch.int32 or self.cu_seqlens.dim() != 1:
            fail("cu_seqlens", "a 1-D int32 tensor", self.cu_seqlens, error=TypeError)
        if self.cu_seqlens.numel() < 1:
            fail("cu_seqlens", "at least one entry (B + 1 >= 1)", self.cu_seqlens)
        if self.cu_seqlens.device != self.values.device:
            fail("cu_seqlens", f"a tensor on {self.values.device} (the values' device)", self.cu_seqlens)
        if self.values.dim() < 1:
            fail("values", "a (T, ...) tensor", self.values)
        if isinstance(self.max_seqlen, bool) or not isinstance(self.max_seqlen, int):
            fail("max_seqlen", "a Python int", self.max_seqlen, error=TypeError)

    @property
    def batch_size(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def lengths(self) -> torch.Tensor:
        """``(B,)`` int64 sequence lengths."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).to(torch.int64)

    @property
    def total_tokens(self) -> int:
        """Rows in use, ``cu_seqlens[-1]`` (a host sync on GPU)."""
        return int(self.cu_seqlens[-1])

    def split(self) -> list[torch.Tensor]:
        """The ``B`` sequences as views ``(L_b, C)``."""
        bounds = self.cu_seqlens.tolist()
        return [self.values[bounds[b] : bounds[b + 1]] for b in range(self.batch_size)]

    def to_padded(self, pad_value: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``(B, L_max, C)``: each sequence right-padded, where ``L_max`` is the longest real
        sequence (the reference's zero-padded block). ``pad_value``: a number, or a row
        ``(C,)`` (differentiable, e.g. the projector's image of a zero row)."""
        lengths = self.lengths
        longest = int(lengths.max()) if self.batch_size else 0
        shape = (self.batch_size, longest) + tuple(self.values.shape[1:])
        if isinstance(pad_value, torch.Tensor):
            out = pad_value.to(self.values.dtype).expand(shape).clone()
        else:
            out = self.values.new_full(shape, pad_value)
        if longest == 0:
            return out
        position = torch.arange(longest, device=self.values.device)
        valid = position[None, :] < lengths[:, None]
        rows = self.cu_seqlens[:-1].to(torch.int64)[:, None] + position[None, :]
        out[valid] = self.values[rows[valid]]
        return out

    def map_values(self, values: torch.Tensor) -> "VarlenBatch":
        """The same layout with new ``values`` (e.g. projected rows), ``(T_buf, C')``."""
        if values.shape[0] != self.values.shape[0]:
            fail("values", f"{self.values.shape[0]} rows (the batch's buffer)", values)
        return VarlenBatch(values, self.cu_seqlens, self.max_seqlen, self.source_index)
