"""``OGFusion``: the drop-in OG-Fusion connector (``nn.Module``).

Same parameters as the reference connector — ``mm_projector`` (``Linear, GELU, Linear``) and
``mm_bom_mask_token (1, vision_dim)`` — so reference checkpoints load by name. Two outputs:
``"varlen"`` (a packed :class:`VarlenBatch`, no padding anywhere) and ``"padded"`` (the
reference's ``(B, L_max, D)`` block, pad rows equal to ``MLP(0)`` as the reference produces
them).

Because the projector is row-wise, ``MLP(gather(X)) == gather(MLP(X))``: when the batch has
more OG tokens than ``B·(V+1)+1`` rows (overlapping masks), the module projects each image's
``V`` patch rows, its global row and the BOM once and gathers projected rows
("project-then-gather"); otherwise it gathers then projects. Gradients through the gather
are deterministic segment sums either way.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from ._batch import ImageMasks, as_mask_list, buffer_size, check_features, plan_batch, token_tables
from ._validation import check_choice, check_int, fail
from .checkpoints import CheckpointError, connector_state_dict, load_reference_checkpoint
from .kernels.codes import NO_TABLE
from .ops.gather_rows import gather_rows
from .ops.index import cu_seqlens_from_lengths
from .ops.place_tokens import placement_indices
from .options import OGTokenOptions
from .varlen import VarlenBatch

DEFAULT_OPTIONS = OGTokenOptions()
PROJECTION_ORDERS = ("auto", "project_first", "gather_first")
OUTPUTS = ("varlen", "padded")


class PaddedTokens(NamedTuple):
    """``output="padded"``: ``tokens (B, L_max, D)`` and each image's real length ``(B,)``."""

    tokens: torch.Tensor
    lengths: torch.Tensor


class OGFusion(nn.Module):
    """Object-guided visual tokens + the ``mlp2x_gelu`` projector.

    Args:
        vision_dim: patch feature width ``F`` (1024 for CLIP ViT-L/14).
        llm_dim: LLM hidden size ``D`` (4096 for Llama-3.1-8B).
        options: an :class:`~ogkernels.OGTokenOptions` (layout, cleaning, downsampling,
            token caps; default: the reference's hard-coded behaviour);
            ``option_overrides``: its fields as keywords, applied on top. A capped connector
            sizes its output without a host sync.
        projection: ``"auto"`` (fewer projected rows wins), ``"project_first"`` or
            ``"gather_first"``.
    """

    def __init__(
        self,
        vision_dim: int = 1024,
        llm_dim: int = 4096,
        options: OGTokenOptions | None = None,
        *,
        projection: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **option_overrides: Any,
    ):
        super().__init__()
        for name, value in (("vision_dim", vision_dim), ("llm_dim", llm_dim)):
            check_int(name, value, minimum=1)
        check_choice("projection", projection, PROJECTION_ORDERS)
        self.options = OGTokenOptions.resolve(options, **option_overrides)
        self.projection = projection
        factory = {"device": device, "dtype": dtype}
        self.mm_projector = nn.Sequential(
            nn.Linear(vision_dim, llm_dim, **factory),
            nn.GELU(),
            nn.Linear(llm_dim, llm_dim, **factory),
        )
        self.mm_bom_mask_token = nn.Parameter(torch.randn(1, vision_dim, **factory))

    @property
    def vision_dim(self) -> int:
        return self.mm_projector[0].in_features

    @property
    def llm_dim(self) -> int:
        return self.mm_projector[2].out_features

    def extra_repr(self) -> str:
        changed = {k: v for k, v in self.options.to_dict().items() if v != getattr(DEFAULT_OPTIONS, k)}
        changed = "".join(f", {k}={v!r}" for k, v in sorted(changed.items()))
        return (
            f"vision_dim={self.vision_dim}, llm_dim={self.llm_dim}{changed}, projection={self.projection!r}"
        )

    @property
    def layout(self):
        return self.options.layout

    @property
    def gate(self) -> bool:
        return self.options.gate

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        image_features: torch.Tensor,
        masks: Sequence[ImageMasks] | None,
        output: str = "varlen",
        *,
        max_tokens: int | None = None,
        mask_scores: Sequence[torch.Tensor | None] | None = None,
    ) -> VarlenBatch | PaddedTokens:
        """Project object-guided tokens.

        Args:
            image_features: ``(B, V, F)`` patch features (``F = vision_dim``).
            masks: ``B`` entries (raw ``(N, H, W)`` masks, :class:`PackedMasks`,
                :class:`MaskBitmaps`, ``(N, V)`` bitmaps or None; on the features' device or
                the CPU), a ``(B, N, H, W)`` tensor, or None for the plain path.
            output: ``"varlen"`` → :class:`VarlenBatch` ``values (T, D)``; ``"padded"`` →
                :class:`PaddedTokens` ``(B, L_max, D)`` with pad rows ``MLP(0)`` (sizing the
                block reads ``L_max`` on the host).
            max_tokens: bound on the total token count: sizes the buffer without a host sync
                (token caps in the options do the same).
            mask_scores: per-image ``(N_i,)`` scores for ``drop_priority="score"``.
        """
        check_choice("output", output, OUTPUTS)
        self._check_features(image_features)
        if masks is None:
            return self._plain(image_features, output)
        masks = as_mask_list(masks)
        check_features(image_features, len(masks), None, "image_features")
        plan, counts = plan_batch(masks, image_features.shape[1], self.options, mask_scores, image_features.device)
        rows, max_seqlen = buffer_size(plan, self.options, counts, max_tokens)
        table_index, row_index, sources = placement_indices(plan, rows)
        bom = self.mm_bom_mask_token.to(image_features.dtype)
        if self._project_first(image_features, rows):
            values = self._project_then_gather(image_features, bom, plan, table_index, row_index)
        else:
            tokens = gather_rows(token_tables(image_features, bom, plan, counts), table_index, row_index)
            values = self.mm_projector(tokens)
            if max_tokens is not None or self.options.budget is not None:
                values = torch.where((table_index == NO_TABLE)[:, None], 0, values)  # unused buffer rows
        batch = VarlenBatch(values, plan.cu_seqlens, max_seqlen, sources, validate=False)
        return self._as_output(batch, output)

    def _check_features(self, features: object) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() != 3:
            fail("image_features", f"a (B, V, {self.vision_dim}) tensor", features, error=TypeError if not isinstance(features, torch.Tensor) else ValueError)
        if features.shape[2] != self.vision_dim:
            fail("image_features", f"a (B, V, {self.vision_dim}) tensor (vision_dim = {self.vision_dim})", features)
        weight = self.mm_projector[0].weight
        if features.device.type != "meta" and features.device != weight.device:
            fail("image_features", f"a tensor on {weight.device} (the connector's device)", features)
        if features.dtype != weight.dtype and not torch.is_autocast_enabled(features.device.type):
            fail("image_features", f"dtype {weight.dtype} (the connector's; or run under autocast)", features, error=TypeError)

    def _project_first(self, features: torch.Tensor, rows: int) -> bool:
        if self.options.averaging or self.projection == "gather_first":
            return False  # MLP(mean of rows) != mean of MLP(rows)
        if self.projection == "project_first":
            return True
        batch, num_tokens, _ = features.shape
        return batch * (num_tokens + 1) + 1 < rows

    def _project_then_gather(self, features, bom, plan, table_index, row_index):
        batch, num_tokens, width = features.shape
        pieces = [features.reshape(batch * num_tokens, width)]
        if self.options.global_view == "mean":
            pieces.append(features.mean(dim=1))
        pieces.append(bom)
        projected = self.mm_projector(torch.cat(pieces, dim=0))
        patch, rest = projected[: batch * num_tokens], projected[batch * num_tokens :]
        if self.options.global_view == "mean":
            global_rows, bom_row = rest[:batch], rest[batch:]
        else:
            global_rows, bom_row = rest.new_zeros(1, rest.shape[1]), rest
        return gather_rows([patch, global_rows, bom_row], table_index, row_index)

    def _plain(self, features: torch.Tensor, output: str) -> VarlenBatch | PaddedTokens:
        """The reference's plain LLaVA path: ``MLP(X)``, ``V`` tokens per image."""
        projected = self.mm_projector(features)
        batch, num_tokens, _ = features.shape
        lengths = torch.full((batch,), num_tokens, dtype=torch.int64, device=features.device)
        if output == "padded":
            return PaddedTokens(projected, lengths)
        rows = torch.arange(batch * num_tokens, device=features.device)
        cu = cu_seqlens_from_lengths(lengths)
        return VarlenBatch(projected.reshape(batch * num_tokens, -1), cu, num_tokens, rows, validate=False)

    def _as_output(self, batch: VarlenBatch, output: str) -> VarlenBatch | PaddedTokens:
        if output == "varlen":
            return batch
        zero_row = self.mm_projector(batch.values.new_zeros(1, self.vision_dim).to(self.mm_bom_mask_token.dtype))
        return PaddedTokens(batch.to_padded(zero_row[0]), batch.lengths)

    # ------------------------------------------------------------------------------------------
    def load_reference_state_dict(self, state_dict, strict: bool = True) -> None:
        """Load a reference connector state dict (any of the reference's key spellings:
        ``model.``/``base_model.model.`` prefixes, ``mm_bom_mask_token.mm_bom_mask_token``).
        Raises :class:`CheckpointError` listing missing and unexpected connector keys."""
        tensors = connector_state_dict(state_dict)
        tensors.pop("mm_masks_pos_encoding.seg_embed.weight", None)  # unused by the forward
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
                raise CheckpointError(f"state_dict[{name!r}]: expected a real floating tensor, got {getattr(value, 'dtype', type(value).__name__)}")
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        mismatched = [
            f"{k}: checkpoint {tuple(tensors[k].shape)} vs module {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(tensors))
            if tuple(tensors[k].shape) != tuple(own[k].shape)
        ]
        if mismatched or (strict and (missing or unexpected)):
            raise CheckpointError(
                "reference checkpoint does not fit OGFusion: "
                f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches {mismatched}"
            )
        with torch.no_grad():
            for name, value in tensors.items():
                if name in own:
                    own[name].copy_(value.to(own[name].dtype))

    @classmethod
    def from_reference_checkpoint(cls, path: str | os.PathLike | list, *, strict: bool = True, **options: Any) -> "OGFusion":
        """Build a connector from reference checkpoint file(s) or a folder; the widths come
        from the weights. ``strict`` (default): every parameter (projector and BOM) must be in
        the checkpoint(s) — e.g. stage 1's ``mm_projector.bin`` *and* ``mm_bom_mask_token.bin``;
        ``strict=False`` leaves missing ones at their initial values. ``options``: the
        constructor's keyword options."""
        tensors = load_reference_checkpoint(path)
        weight = tensors.get("mm_projector.0.weight")
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise CheckpointError(f"checkpoint {path!r}: no 2-D mm_projector.0.weight among {sorted(tensors)}")
        llm_dim, vision_dim = weight.shape
        module = cls(vision_dim, llm_dim, **options)
        module.load_reference_state_dict(tensors, strict=strict)
        return module

    @classmethod
    def from_modules(cls, mm_projector: nn.Sequential, bom: nn.Parameter, **options) -> "OGFusion":
        """A connector that shares an existing projector and BOM parameter (no copies), e.g.
        the reference model's, so training either updates both."""
        if not isinstance(mm_projector, nn.Sequential) or not all(
            isinstance(mm_projector[i], nn.Linear) for i in (0, -1)
        ):
            fail("mm_projector", "an nn.Sequential starting and ending with nn.Linear (Linear, GELU, Linear)", mm_projector, error=TypeError)
        first, last = mm_projector[0], mm_projector[-1]
        if not isinstance(bom, torch.Tensor):
            fail("bom", f"a (1, {first.in_features}) parameter", bom, error=TypeError)
        if tuple(bom.shape) != (1, first.in_features):
            fail("bom", f"a (1, {first.in_features}) parameter", bom)
        module = cls(first.in_features, last.out_features, device="meta", **options)
        module.mm_projector = mm_projector
        module.mm_bom_mask_token = bom
        return module


__all__ = ["OGFusion", "PaddedTokens", "CheckpointError"]
