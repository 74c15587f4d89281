"""Buffers sized by a bound, connector layouts crossed with projection orders, and packed HF
attention given both ``cu_seq_lens`` and ``position_ids``.

Each test guards a path the other tests left dark: padding a buffer sized by ``max_tokens`` or
a token cap (``to_padded(width=)``, ``OGFusion(output="padded")`` with a cap), the projection
orders with ``averaging`` and the other layouts, and the HF attention's cross-check.

Tolerances: copies and padding are exact; the projector's outputs are GEMMs over other row
sets than the reference's: fp32 1e-5; attention fp32 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from ogkernels import OGFusion, VarlenBatch, og_tokens
from ogkernels import reference as R
from ogkernels.kernels.codes import PAD_ROW

from .backends import using
from .oracle import flags_for


def padded_to(block: torch.Tensor, width: int, pad: torch.Tensor | float) -> torch.Tensor:
    """``block (B, L, C)`` right-padded to ``width`` rows with ``pad`` (a number or a row)."""
    extra = block.new_zeros(block.shape[0], width - block.shape[1], block.shape[2])
    extra[:] = pad
    return torch.cat([block, extra], dim=1)


def reference_padding(values: torch.Tensor, lengths: list[int], width: int, pad) -> torch.Tensor:
    out = values.new_zeros(len(lengths), width, values.shape[1])
    out[:] = pad
    start = 0
    for b, n in enumerate(lengths):
        out[b, :n] = values[start : start + n]
        start += n
    return out


@pytest.mark.parametrize("pad", [0.0, -3.5, "row"])
def test_to_padded_width_pads_every_sequence_to_the_width(pad):
    g = torch.Generator().manual_seed(0)
    lengths = [3, 0, 5, 1]
    values = torch.randn(sum(lengths) + 4, 6, generator=g)  # 4 buffer rows past the last sequence
    cu = torch.tensor([0, 3, 3, 8, 9], dtype=torch.int32)
    batch = VarlenBatch(values, cu, 5)
    pad_value = torch.randn(6, generator=g) if pad == "row" else pad
    for width in (5, 6, 11):
        got = batch.to_padded(pad_value, width=width)
        assert got.shape == (4, width, 6)
        assert torch.equal(got, reference_padding(values, lengths, width, pad_value))
    assert torch.equal(batch.to_padded(pad_value), reference_padding(values, lengths, 5, pad_value))


def test_to_padded_width_zero_and_map_values():
    empty = VarlenBatch(torch.zeros(2, 3), torch.zeros(3, dtype=torch.int32), 0)  # two empty sequences
    assert empty.to_padded(width=0).shape == (2, 0, 3)
    batch = VarlenBatch(torch.arange(15.0).view(5, 3), torch.tensor([0, 2, 5], dtype=torch.int32), 3)
    mapped = batch.map_values(torch.arange(10.0).view(5, 2))
    assert mapped.cu_seqlens is batch.cu_seqlens and mapped.max_seqlen == 3
    assert torch.equal(mapped.to_padded(), torch.tensor([[[0.0, 1], [2, 3], [0, 0]], [[4, 5], [6, 7], [8, 9]]]))
    assert batch.map_values(torch.zeros(5)).values.shape == (5,)  # one value per row


def masks_and_features(seed: int = 0, v: int = 9, width: int = 8):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(3, 6, 7, generator=g) < 0.4, None, torch.rand(2, 5, 5, generator=g) < 0.2]
    features = torch.randn(3, v, width, generator=g)
    return masks, features


@pytest.mark.parametrize("bound", ["max_tokens", "cap"])
def test_bounded_og_tokens_pad_like_the_exact_batch(backend, device, bound):
    masks, features = masks_and_features()
    bom = torch.randn(1, 8)
    masks = [m if m is None else m.to(device) for m in masks]
    features, bom = features.to(device), bom.to(device)
    with using(backend):
        exact = og_tokens(features, masks, bom)
        total = int(exact.lengths.sum())
        keywords = {"max_tokens": total + 7} if bound == "max_tokens" else {"max_image_tokens": 1000}
        bounded = og_tokens(features, masks, bom, **keywords)
    assert bounded.values.shape[0] > total  # sized by the bound, not by the batch
    assert bounded.lengths.tolist() == exact.lengths.tolist()
    assert bounded.max_seqlen >= exact.max_seqlen
    assert torch.equal(bounded.values[total:], torch.zeros_like(bounded.values[total:]))
    assert (bounded.source_index[total:] == PAD_ROW).all()
    block = exact.to_padded()
    assert torch.equal(bounded.to_padded(), block)
    width = bounded.max_seqlen
    assert torch.equal(bounded.to_padded(width=width), padded_to(block, width, 0.0))


def reference_pair(flags: R.ReferenceFlags | None = None, **options):
    torch.manual_seed(0)
    ref = R.ReferenceOGFusion(8, 12, flags or R.ReferenceFlags())
    ours = OGFusion(8, 12, **options)
    ours.load_reference_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("bound", ["max_tokens", "max_image_tokens", "max_batch_tokens"])
def test_padded_output_with_a_bound_that_does_not_bite_is_the_reference(bound):
    masks, features = masks_and_features(1)
    cap = {"max_image_tokens": 1000, "max_batch_tokens": 3000}.get(bound)
    ref, ours = reference_pair(**({bound: cap} if cap else {}))
    expected, _ = ref(features, masks)
    keywords = {"max_tokens": 500} if bound == "max_tokens" else {}
    out = ours(features, masks, output="padded", **keywords)
    assert out.tokens.shape == expected.shape
    torch.testing.assert_close(out.tokens, expected, rtol=1e-5, atol=1e-5)


def test_padded_output_with_a_biting_cap_is_the_capped_tokens_projected():
    masks, features = masks_and_features(1, v=16)
    cap = 9
    _, ours = reference_pair(max_image_tokens=cap)
    bom = ours.mm_bom_mask_token.detach()
    exact = og_tokens(features, masks, bom).lengths
    tokens = og_tokens(features, masks, bom, max_image_tokens=cap)
    lengths = tokens.lengths.tolist()
    assert (tokens.lengths < exact).any() and 1 < max(lengths) <= cap  # the cap bites, masks remain
    zero = ours.mm_projector(torch.zeros(1, 8))[0]
    with torch.no_grad():
        expected = reference_padding(ours.mm_projector(tokens.values), lengths, max(lengths), zero)
        out = ours(features, masks, output="padded")
    assert out.lengths.tolist() == lengths
    torch.testing.assert_close(out.tokens, expected, rtol=1e-5, atol=1e-5)


LAYOUTS = [
    {"averaging": True},
    {"averaging": True, "global_view": "full"},
    {"averaging": True, "no_masktoken": True, "global_view": "none"},
    {"averaging": True, "image_filling": True},
    {"global_view": "full"},
    {"image_filling": True, "no_masktoken": True},
    {"max_masks": 1},
]




@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("projection", ["auto", "project_first", "gather_first"])
def test_projection_orders_with_layouts_match_the_reference(projection, layout):
    g = torch.Generator().manual_seed(3)
    # overlapping masks: more OG rows than B·(V+1)+1, so "auto" projects first where it may
    masks = [torch.rand(6, 6, 6, generator=g) < 0.6, torch.rand(4, 5, 7, generator=g) < 0.5]
    features = torch.randn(2, 9, 8, generator=g)
    ref, ours = reference_pair(flags_for(**layout), projection=projection, **layout)
    expected, embedding = ref(features, masks)
    for output in ("padded", "varlen"):
        out = ours(features, masks, output=output)
        if output == "padded":
            torch.testing.assert_close(out.tokens, expected, rtol=1e-5, atol=1e-5)
        else:
            assert out.lengths.tolist() == embedding.lengths
            for b, rows in enumerate(out.split()):
                torch.testing.assert_close(rows, expected[b, : embedding.lengths[b]], rtol=1e-5, atol=1e-5)


def test_an_empty_batch_gives_empty_outputs(backend, device):
    # B = 0: no image, no token, offsets [0] — sized without reading an empty max
    features = torch.zeros(0, 9, 4, device=device)
    with using(backend):
        out = og_tokens(features, [])
        bounded = og_tokens(features, [], max_tokens=4)
        fusion = OGFusion(4, 6).to(device)
        projected = fusion(features, [])
        padded = fusion(features, [], output="padded")
    assert out.values.shape == (0, 4) and out.cu_seqlens.tolist() == [0] and out.max_seqlen == 0
    assert bounded.values.shape == (4, 4) and bounded.cu_seqlens.tolist() == [0]
    assert projected.values.shape == (0, 6) and padded.tokens.shape == (0, 0, 6) and padded.lengths.numel() == 0
    assert out.to_padded().shape == (0, 0, 4) and out.split() == []


def test_packed_layout_sample_lengths():
    from ogkernels.packing import plan_packing

    layout = plan_packing([torch.tensor([1, -200, 2]), torch.tensor([3]), torch.tensor([-200])], [4, 0, 2])
    assert layout.sample_lengths.tolist() == [6, 1, 2]
    assert layout.cu_seq_lens.tolist() == [0, 6, 7, 9] and layout.max_length == 6


class _Layer(torch.nn.Module):
    is_causal = True


def test_hf_attention_with_agreeing_cu_seq_lens_and_position_ids():
    from ogkernels.integrations.hf_attention import varlen_attention_forward

    g = torch.Generator().manual_seed(4)
    lens = [3, 1, 4]
    query, key, value = (torch.randn(1, 2, sum(lens), 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    by_cu, _ = varlen_attention_forward(_Layer(), query, key, value, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                        max_length_q=4, max_length_k=4)  # fmt: skip
    both, _ = varlen_attention_forward(_Layer(), query, key, value, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                       max_length_q=4, max_length_k=4, position_ids=positions)  # fmt: skip
    by_positions, _ = varlen_attention_forward(_Layer(), query, key, value, None, position_ids=positions)
    assert torch.equal(both, by_cu)
    assert torch.equal(by_positions, by_cu)
    # each sequence on its own (causal SDPA): the packed rows see only their own sequence
    start = 0
    for n in lens:
        q, k, v = (t[:, :, start : start + n] for t in (query, key, value))
        alone = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        torch.testing.assert_close(by_cu[:, start : start + n], alone, rtol=1e-5, atol=1e-5)
        start += n
    # the check runs once per forward (every layer gets the same tensors), not once per layer,
    # yet tensors changed in place since are checked again
    positions[0, 3:] = torch.arange(5)  # [0, 1, 2, 0, 1, 2, 3, 4]: sequences of 3 and 5
    with pytest.raises(ValueError, match="^cu_seq_lens_q:.*position_ids"):
        varlen_attention_forward(_Layer(), query, key, value, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                 max_length_q=4, max_length_k=4, position_ids=positions)  # fmt: skip
    with pytest.raises(ValueError, match="^cu_seq_lens_q:.*position_ids"):
        shifted = torch.tensor([0, 2, 4, 8], dtype=torch.int32)
        varlen_attention_forward(_Layer(), query, key, value, None, cu_seq_lens_q=shifted, max_length_q=4,
                                 position_ids=positions)  # fmt: skip
