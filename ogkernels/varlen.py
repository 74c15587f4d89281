"""``VarlenBatch``: variable-length sequences packed into one buffer, flash-attn style."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ._validation import check_bool, check_int, check_tensor, fail
from .kernels.codes import BOM_ROW, GLOBAL_ROW, MASK_MEAN_ROW, PAD_ROW
from .ops.index import lengths_from_cu_seqlens, max_length

__all__ = ["BOM_ROW", "GLOBAL_ROW", "MASK_MEAN_ROW", "PAD_ROW", "VarlenBatch"]


@dataclass
class VarlenBatch:
    """``B`` sequences of ``C``-wide rows packed back to back (no padding between them).

    Attributes:
        values: ``(T_buf, C)``; sequence ``b`` is ``values[cu_seqlens[b]:cu_seqlens[b+1]]``.
            Rows past ``cu_seqlens[-1]`` exist only when the buffer was sized by a bound
            (``max_tokens``, token caps); they are zero.
        cu_seqlens: ``(B + 1,)`` int32, contiguous, on the values' device, starting at 0,
            non-decreasing, ``cu_seqlens[-1] <= T_buf``.
        max_seqlen: the longest sequence (a Python int; an upper bound when the buffer was
            sized without a host sync).
        source_index: ``(T_buf,)`` int64: the flat patch row ``b·V + v`` each row was copied
            from, or a negative code (:data:`BOM_ROW`, :data:`GLOBAL_ROW`,
            :data:`MASK_MEAN_ROW`, :data:`PAD_ROW`). None for batches built elsewhere.
        validate: ``None`` (default): check types and shapes, and the offsets' values when
            ``cu_seqlens`` is on the CPU (no device sync); ``True``: check the values on any
            device (one host read on a GPU); ``False``: trust the caller (ogkernels' own ops).
    """

    values: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    source_index: torch.Tensor | None = None
    validate: bool | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_bool("validate", self.validate, optional=True)
        check_tensor("values", self.values)
        check_tensor("cu_seqlens", self.cu_seqlens)
        if self.values.dim() < 1:
            fail("values", "a (T, ...) tensor", self.values)
        if self.cu_seqlens.dtype != torch.int32 or self.cu_seqlens.dim() != 1:
            fail("cu_seqlens", "a 1-D int32 tensor", self.cu_seqlens, error=TypeError)
        if self.cu_seqlens.numel() < 1:
            fail("cu_seqlens", "at least one entry (B + 1 >= 1)", self.cu_seqlens)
        if self.cu_seqlens.device != self.values.device:
            fail("cu_seqlens", f"a tensor on {self.values.device} (the values' device)", self.cu_seqlens)
        if isinstance(self.max_seqlen, bool) or not isinstance(self.max_seqlen, (int, torch.SymInt)):
            fail("max_seqlen", "a Python int", self.max_seqlen, error=TypeError)
        if self.source_index is not None:
            check_tensor("source_index", self.source_index)
            # the message is formatted only on failure: formatting a symbolic size under
            # torch.compile would specialise it (a recompile per layout)
            if self.source_index.dtype != torch.int64:
                fail("source_index", self._source_index_expected(), self.source_index, error=TypeError)
            if self.source_index.shape != self.values.shape[:1]:
                fail("source_index", self._source_index_expected(), self.source_index)
            if self.source_index.device != self.values.device:
                fail("source_index", f"a tensor on {self.values.device} (the values' device)", self.source_index)
        if self.validate is True or (self.validate is None and self.cu_seqlens.device.type == "cpu"):
            self._check_offsets()

    def _source_index_expected(self) -> str:
        return f"a ({self.values.shape[0]},) int64 tensor (one code per row)"

    def _check_offsets(self) -> None:
        offsets = self.cu_seqlens.tolist()
        rows = self.values.shape[0]
        if offsets[0] != 0:
            fail("cu_seqlens", "offsets starting at 0", f"cu_seqlens[0] = {offsets[0]}")
        steps = [b for b in range(len(offsets) - 1) if offsets[b + 1] < offsets[b]]
        if steps:
            b = steps[0]
            fail("cu_seqlens", "non-decreasing offsets", f"cu_seqlens[{b + 1}] = {offsets[b + 1]} < cu_seqlens[{b}] = {offsets[b]}")
        if offsets[-1] > rows:
            fail("cu_seqlens", f"a last offset <= {rows} (the rows of values)", f"cu_seqlens[-1] = {offsets[-1]}")
        longest = max((offsets[b + 1] - offsets[b] for b in range(len(offsets) - 1)), default=0)
        if self.max_seqlen < longest:
            fail("max_seqlen", f">= {longest} (the longest sequence)", self.max_seqlen)

    @property
    def batch_size(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def lengths(self) -> torch.Tensor:
        """``(B,)`` int64 sequence lengths."""
        return lengths_from_cu_seqlens(self.cu_seqlens)

    @property
    def total_tokens(self) -> int:
        """Rows in use, ``cu_seqlens[-1]`` (a host sync on GPU)."""
        return int(self.cu_seqlens[-1])

    def split(self) -> list[torch.Tensor]:
        """The ``B`` sequences as views ``(L_b, C)`` (one host read of the offsets)."""
        bounds = self.cu_seqlens.tolist()
        return [self.values[bounds[b] : bounds[b + 1]] for b in range(self.batch_size)]

    def to_padded(self, pad_value: float | torch.Tensor = 0.0, width: int | None = None) -> torch.Tensor:
        """``(B, L, C)``: each sequence right-padded to ``L``: the longest real sequence (the
        reference's zero-padded block; one host read), or ``width`` when given (static shape,
        no host read; must be ``>=`` the longest sequence). ``pad_value``: a number, or a row
        ``(C,)`` (differentiable, e.g. the projector's image of a zero row)."""
        lengths = self.lengths
        self._check_pad_value(pad_value)
        if width is None:
            longest = max_length(self.cu_seqlens)
        else:
            if not isinstance(width, torch.SymInt):
                check_int("width", width, minimum=0)
            longest = width
            if lengths.device.type == "cpu" and not torch.compiler.is_compiling() and self.batch_size:
                if int(lengths.max()) > width:
                    fail("width", f">= {int(lengths.max())} (the longest sequence)", width)
        shape = (self.batch_size, longest) + tuple(self.values.shape[1:])
        if isinstance(pad_value, torch.Tensor):
            out = pad_value.to(self.values.dtype).expand(shape).clone()
        else:
            out = self.values.new_full(shape, pad_value)
        if longest == 0 or self.values.shape[0] == 0:
            return out
        position = torch.arange(longest, device=self.values.device)
        valid = position[None, :] < lengths[:, None]
        rows = self.cu_seqlens[:-1].to(torch.int64)[:, None] + position[None, :]
        rows = torch.where(valid, rows, 0).clamp(max=self.values.shape[0] - 1)
        gathered = self.values.index_select(0, rows.reshape(-1)).view(shape)
        mask = valid.view(valid.shape + (1,) * (self.values.dim() - 1))
        return torch.where(mask, gathered, out)

    def _check_pad_value(self, pad_value: object) -> None:
        if isinstance(pad_value, torch.Tensor):
            if tuple(pad_value.shape) not in ((), tuple(self.values.shape[1:])):
                fail("pad_value", f"a number or a row of shape {tuple(self.values.shape[1:])}", pad_value)
            if pad_value.device != self.values.device:
                fail("pad_value", f"a tensor on {self.values.device} (the values' device)", pad_value)
        elif not isinstance(pad_value, (bool, int, float)):
            fail("pad_value", "a number or a (C,) tensor", pad_value, error=TypeError)

    def map_values(self, values: torch.Tensor) -> "VarlenBatch":
        """The same layout with new ``values`` (e.g. projected rows), ``(T_buf, C')``."""
        check_tensor("values", values)
        if values.dim() < 1 or values.shape[0] != self.values.shape[0]:
            fail("values", f"{self.values.shape[0]} rows (the batch's buffer)", values)
        return VarlenBatch(values, self.cu_seqlens, self.max_seqlen, self.source_index, validate=False)


def _flatten(batch: VarlenBatch) -> tuple[list[torch.Tensor | None], int]:
    return [batch.values, batch.cu_seqlens, batch.source_index], batch.max_seqlen


def _unflatten(children: list[torch.Tensor | None], max_seqlen: int) -> VarlenBatch:
    values, cu_seqlens, source_index = children
    return VarlenBatch(values, cu_seqlens, max_seqlen, source_index, validate=False)


# A pytree node, so that wrappers that walk module outputs (FSDP2's backward hooks, activation
# checkpointing, torch.compile) see the tensors inside a VarlenBatch.
torch.utils._pytree.register_pytree_node(
    VarlenBatch,
    _flatten,
    _unflatten,
    serialized_type_name="ogkernels.varlen.VarlenBatch",
    flatten_with_keys_fn=lambda batch: (
        [(torch.utils._pytree.GetAttrKey(name), getattr(batch, name)) for name in ("values", "cu_seqlens", "source_index")],
        batch.max_seqlen,
    ),
)
