"""``packed_causal_lm_loss``: the causal LM loss of a packed row, normalised per token or per sample.

A packed row holds ``B`` samples back to back (``cu_seqlens``). The label of position ``t`` is
predicted by the logits at ``t - 1`` *of the same sample*: the logits at each sample's last
position predict nothing (never the next sample's first token), whatever the labels hold there.
With the labels :func:`ogkernels.packing.plan_packing` and ``OGLlavaCollator`` write (IGNORE on
each sample's first row) ``normalization="token"`` equals what transformers computes on the
packed row today (``ForCausalLMLoss``): the model's own loss.

Normalisations:
    - ``"token"`` (transformers' default): the mean over every supervised token of the batch —
      long answers weigh more;
    - ``"sample"``: the mean over samples of each sample's mean over its supervised tokens
      (samples without a supervised token are left out) — every sample weighs the same, however
      it was packed;
    - ``num_items_in_batch=N`` (with ``"token"``): the sum over supervised tokens divided by
      ``N``, transformers' gradient-accumulation convention (``Trainer`` passes the supervised
      token count of all micro-batches of a step).

Each equals the unpacked computation (one padded ``(B, L)`` batch): ``tests/test_loss.py``.
A batch with no supervised token gives NaN for ``"token"`` and ``"sample"`` (as transformers'
mean does) and 0 with ``num_items_in_batch``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._validation import check_choice, check_tensor, fail

NORMALIZATIONS = ("token", "sample")


def packed_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    normalization: str = "token",
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The causal LM loss of a packed row (module docstring).

    Args:
        logits: ``(1, S, V)`` or ``(S, V)``, any float dtype (computed in float32, as
            transformers does).
        labels: ``(1, S)`` or ``(S,)`` integer token ids, ``ignore_index`` where unsupervised;
            unshifted (the label of a position is that position's token).
        cu_seqlens: ``(B + 1,)`` int32 (or int64) sample offsets, ``0 … S``, non-decreasing
            (e.g. the collator's ``cu_seq_lens_q``). Checked with one host read.
        normalization: ``"token"`` or ``"sample"``.
        num_items_in_batch: None, or the divisor of the summed loss (an int or a scalar
            tensor; only with ``normalization="token"``).
        ignore_index: the label that is not supervised.

    Returns:
        A float32 scalar tensor, differentiable w.r.t. ``logits``.
    """
    flat_logits, flat_labels = _check_inputs(logits, labels)
    check_choice("normalization", normalization, NORMALIZATIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        fail("ignore_index", "an int", ignore_index, error=TypeError)
    if num_items_in_batch is not None:
        if normalization != "token":
            fail("num_items_in_batch", f"None with normalization={normalization!r} (it divides a token sum)", num_items_in_batch)
        _check_num_items(num_items_in_batch)
    cu = _check_cu_seqlens(cu_seqlens, flat_labels.numel(), flat_labels.device)

    targets = shifted_targets(flat_labels, cu, ignore_index)
    source = flat_logits.float()
    if normalization == "sample":
        return _per_sample_mean(source, targets, cu, ignore_index)
    if num_items_in_batch is None:
        return F.cross_entropy(source, targets, ignore_index=ignore_index, reduction="mean")
    total = F.cross_entropy(source, targets, ignore_index=ignore_index, reduction="sum")
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def shifted_targets(labels: torch.Tensor, cu_seqlens: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``(S,)`` what each position predicts: ``labels[t + 1]``, or ``ignore_index`` at each
    sample's last position (``cu_seqlens (B + 1,)`` int64 on ``labels``' device). No host sync."""
    if labels.numel() == 0:
        return labels.clone()
    targets = torch.cat([labels[1:], labels.new_full((1,), ignore_index)])
    # an empty sample's "last row" is the row before it (already a last row), or -1 for a
    # leading one: wrapped to S - 1, the row's last row
    last = torch.remainder(cu_seqlens[1:] - 1, labels.numel())
    return targets.index_fill(0, last, ignore_index)


def _per_sample_mean(source: torch.Tensor, targets: torch.Tensor, cu: torch.Tensor, ignore_index: int) -> torch.Tensor:
    per_token = F.cross_entropy(source, targets, ignore_index=ignore_index, reduction="none")
    supervised = targets != ignore_index
    sample_of = torch.searchsorted(cu[1:], torch.arange(targets.numel(), device=cu.device), right=True)
    counts = torch.zeros(cu.numel() - 1, dtype=torch.int64, device=cu.device).index_add_(0, sample_of, supervised.long())
    weight = supervised.float() / counts.clamp(min=1)[sample_of].float()
    return (per_token * weight).sum() / (counts > 0).sum()


def _check_inputs(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("logits", logits)
    check_tensor("labels", labels)
    if logits.dim() not in (2, 3) or (logits.dim() == 3 and logits.shape[0] != 1):
        fail("logits", "a (1, S, V) or (S, V) tensor", logits)
    if not logits.dtype.is_floating_point:
        fail("logits", "a floating-point tensor", logits, error=TypeError)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        fail("labels", "an integer tensor", labels, error=TypeError)
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        fail("labels", f"shape {tuple(logits.shape[:-1])} (the leading shape of logits)", labels)
    if labels.device != logits.device:
        fail("labels", f"a tensor on {logits.device} (the device of logits)", labels)
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long()


def _check_num_items(value: Any) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            fail("num_items_in_batch", "an int or a one-element tensor", value)
    elif isinstance(value, bool) or not isinstance(value, int):
        fail("num_items_in_batch", "None, an int or a one-element tensor", value, error=TypeError)
    elif value < 1:
        fail("num_items_in_batch", "an int >= 1", value)


def _check_cu_seqlens(cu_seqlens: Any, total: int, device: torch.device) -> torch.Tensor:
    check_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        fail("cu_seqlens", "a (B + 1,) tensor", cu_seqlens)
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        fail("cu_seqlens", "dtype int32 (or int64)", cu_seqlens, error=TypeError)
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    first, last, decreasing = torch.stack([cu[0], cu[-1], (cu.diff() < 0).any().long()]).tolist()
    if first != 0 or last != total or decreasing:
        fail("cu_seqlens", f"non-decreasing offsets from 0 to {total} (the packed length S)", cu_seqlens)
    return cu
