"""Reference OG-LLaVA connector checkpoints: safe loading and key normalisation.

The reference writes ``mm_projector.bin``, ``mm_bom_mask_token.bin`` and
``mm_masks_pos_encoding.bin`` (stage 1, full-model names such as
``model.mm_projector.0.weight`` and ``model.mm_bom_mask_token.mm_bom_mask_token``),
``non_lora_trainables.bin`` (stage 2, the same names behind ``base_model.model.``), and
merged full-model state dicts. Files are read with ``torch.load(weights_only=True)`` or
safetensors — never with pickle's arbitrary-object loading.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import torch

CONNECTOR_FILES = ("mm_projector.bin", "mm_bom_mask_token.bin", "non_lora_trainables.bin")
_PREFIXES = ("base_model.model.", "model.")
_CONNECTOR = re.compile(r"^(mm_projector\.|mm_bom_mask_token|mm_masks_pos_encoding\.)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the connector (names the file or the keys)."""


def normalize_key(key: str) -> str:
    """``base_model.model.model.mm_projector.0.weight`` → ``mm_projector.0.weight``;
    ``…mm_bom_mask_token.mm_bom_mask_token`` → ``mm_bom_mask_token``."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix) and not _CONNECTOR.match(key):
                key = key[len(prefix) :]
                changed = True
    if key == "mm_bom_mask_token.mm_bom_mask_token":
        key = "mm_bom_mask_token"
    return key


def connector_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The connector tensors of any reference state dict, under OGFusion's names.

    Keys outside the connector (LLM, vision tower, LoRA) are skipped; the unused
    ``mm_masks_pos_encoding`` table is kept under its name for callers that want it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = normalize_key(key)
        if _CONNECTOR.match(name):
            if name in out:
                raise CheckpointError(f"state_dict: two keys map to {name!r} (one is {key!r})")
            out[name] = value
    return out


def load_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch file, loaded without pickle objects."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint: expected a file, got {path!r} (not found)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # truncated, corrupt, or holds non-tensor objects
        raise CheckpointError(f"checkpoint {path!r}: cannot be read safely ({error})") from error
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path!r}: expected a mapping of names to tensors")
    return dict(loaded)


def load_reference_checkpoint(path: str | os.PathLike | list) -> dict[str, torch.Tensor]:
    """Connector tensors from a file, a list of files, or a folder holding the reference's
    ``mm_projector.bin`` / ``mm_bom_mask_token.bin`` / ``non_lora_trainables.bin`` (or a
    ``*.safetensors`` full model)."""
    if isinstance(path, (list, tuple)):
        files = [os.fspath(p) for p in path]
    elif os.path.isdir(path):
        files = [os.path.join(path, name) for name in CONNECTOR_FILES if os.path.isfile(os.path.join(path, name))]
        files += sorted(
            os.path.join(path, name) for name in os.listdir(path) if name.endswith(".safetensors")
        )
        if not files:
            raise CheckpointError(
                f"checkpoint folder {os.fspath(path)!r}: expected one of {', '.join(CONNECTOR_FILES)} or *.safetensors"
            )
    else:
        files = [os.fspath(path)]
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        merged.update(connector_state_dict(load_tensor_file(file)))
    return merged
