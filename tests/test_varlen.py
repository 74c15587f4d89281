"""VarlenBatch as a pytree node: wrappers that walk module outputs (FSDP2's backward hooks,
activation checkpointing, torch.compile) must reach the tensors inside it."""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from ogkernels.varlen import VarlenBatch


def batch(requires_grad: bool = False) -> VarlenBatch:
    values = torch.arange(12.0).view(6, 2).requires_grad_(requires_grad)
    return VarlenBatch(values, torch.tensor([0, 2, 5], dtype=torch.int32), 3, torch.arange(6))


def test_leaves_are_the_tensors_and_the_round_trip_is_exact():
    original = batch()
    leaves, spec = pytree.tree_flatten(original)
    assert [leaf is t for leaf, t in zip(leaves, (original.values, original.cu_seqlens, original.source_index))] == [True] * 3
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert isinstance(rebuilt, VarlenBatch) and rebuilt.max_seqlen == 3
    assert rebuilt.values is original.values and rebuilt.cu_seqlens is original.cu_seqlens


def test_tree_map_reaches_values_and_keeps_the_layout():
    doubled = pytree.tree_map_only(torch.Tensor, lambda t: t * 2 if t.is_floating_point() else t, batch())
    assert isinstance(doubled, VarlenBatch)
    assert torch.equal(doubled.values, batch().values * 2)
    assert torch.equal(doubled.cu_seqlens, batch().cu_seqlens) and doubled.max_seqlen == 3


def test_a_hook_registered_through_the_tree_sees_the_gradient():
    # What FSDP2 does to a module's outputs: hook every tensor leaf that needs a gradient.
    source = batch(requires_grad=True)
    output = pytree.tree_map_only(torch.Tensor, lambda t: t * 3 if t.requires_grad else t, source)
    seen = []
    for leaf in pytree.tree_leaves(output):
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            leaf.register_hook(lambda grad: seen.append(grad.clone()))
    output.values.sum().backward()
    assert len(seen) == 1 and torch.equal(seen[0], torch.ones(6, 2))
    assert torch.equal(source.values.grad, torch.full((6, 2), 3.0))


def test_key_paths_name_the_fields():
    paths = [pytree.keystr(path) for path, _ in pytree.tree_flatten_with_path(batch())[0]]
    assert paths == [".values", ".cu_seqlens", ".source_index"]
