"""Reference OG-LLaVA connector checkpoints: safe loading and key normalisation.

The reference writes ``mm_projector.bin``, ``mm_bom_mask_token.bin`` and
``mm_masks_pos_encoding.bin`` (stage 1, full-model names such as
``model.mm_projector.0.weight`` and ``model.mm_bom_mask_token.mm_bom_mask_token``),
``non_lora_trainables.bin`` (stage 2, the same names behind ``base_model.model.``), and
merged full-model state dicts. Files are read with ``torch.load(weights_only=True)`` or
safetensors — never with pickle's arbitrary-object loading — and only when they are
regular files (a FIFO named ``mm_projector.bin`` is refused, not waited on).

Every problem is a :class:`CheckpointError` (a ``ValueError``) naming the file or the key:
a missing file, a folder without checkpoint files, a non-regular file, an unreadable or
corrupt file, something other than a mapping of names to tensors, and connector tensors of
the wrong kind (complex, integer or boolean weights; a weight that is not 2-D, a bias that
is not 1-D). A ``path`` of the wrong type is a ``TypeError`` naming ``path``.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import torch

from ._validation import fail
from .masks.files import NotRegularFileError, open_regular, open_regular_fd

CONNECTOR_FILES = ("mm_projector.bin", "mm_bom_mask_token.bin", "non_lora_trainables.bin")
_PREFIXES = ("base_model.model.", "model.")
_CONNECTOR = re.compile(r"^(mm_projector\.|mm_bom_mask_token|mm_masks_pos_encoding\.)")
# the ranks of the tensors OGFusion reads (its projector's two linear layers, the BOM)
_NDIM = ((re.compile(r"^mm_projector\.[02]\.weight$"), 2), (re.compile(r"^mm_projector\.[02]\.bias$"), 1),
         (re.compile(r"^mm_bom_mask_token$"), 2))  # fmt: skip
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def _check_connector_tensor(source: str, key: str, name: str, value: torch.Tensor) -> None:
    if value.dtype not in _WEIGHT_DTYPES:
        raise CheckpointError(
            f"{source}: tensor {key!r}: expected a floating dtype (float16, bfloat16, float32, float64), got {value.dtype}"
        )
    for pattern, ndim in _NDIM:
        if pattern.match(name) and value.dim() != ndim:
            raise CheckpointError(f"{source}: tensor {key!r}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")


def connector_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> dict[str, torch.Tensor]:
    """The connector tensors of any reference state dict, under OGFusion's names.

    Keys outside the connector (LLM, vision tower, LoRA) are skipped; the unused
    ``mm_masks_pos_encoding`` table is kept under its name for callers that want it.
    ``source`` names the state dict (e.g. its file) in error messages.

    Raises:
        TypeError: ``state_dict`` is not a mapping.
        CheckpointError: a key that is not a str, a value that is not a tensor, two keys
            naming one connector tensor, or a connector tensor of the wrong kind.
    """
    if not isinstance(state_dict, Mapping):
        fail("state_dict", "a mapping of parameter names to tensors", state_dict, error=TypeError)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: expected str parameter names, got {key!r}")
        name = normalize_key(key)
        if not _CONNECTOR.match(name):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r}: expected a tensor, got {type(value).__name__}")
        _check_connector_tensor(source, key, name, value)
        if name in out:
            raise CheckpointError(f"{source}: two keys map to {name!r} (one is {key!r})")
        out[name] = value
    return out


def load_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch file, loaded without pickle objects."""
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            os.close(open_regular_fd(path))  # a regular file, checked before safetensors opens it
            loaded = load_file(path, device="cpu")
        else:
            with open_regular(path) as handle:
                loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path!r}: file not found") from None
    except (NotRegularFileError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: {exc.strerror or exc}") from exc
    except Exception as error:  # truncated, corrupt, or holds non-tensor objects
        raise CheckpointError(f"checkpoint {path!r}: cannot be read safely ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path!r}: expected a mapping of names to tensors, got {type(loaded).__name__}")
    return dict(loaded)


def _folder_files(path: str) -> list[str]:
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise CheckpointError(f"checkpoint folder {path!r}: cannot be listed ({exc.strerror or exc})") from exc
    files = [os.path.join(path, name) for name in CONNECTOR_FILES if name in names]
    files += [os.path.join(path, name) for name in names if name.endswith(".safetensors")]
    if not files:
        raise CheckpointError(f"checkpoint folder {path!r}: expected one of {', '.join(CONNECTOR_FILES)} or *.safetensors")
    return files  # each is opened as a regular file (or refused) by load_tensor_file


def load_reference_checkpoint(path: str | os.PathLike | list) -> dict[str, torch.Tensor]:
    """Connector tensors from a file, a list of files, or a folder holding the reference's
    ``mm_projector.bin`` / ``mm_bom_mask_token.bin`` / ``non_lora_trainables.bin`` (or a
    ``*.safetensors`` full model)."""
    if isinstance(path, (list, tuple)):
        if not path or not all(isinstance(p, (str, os.PathLike)) for p in path):
            fail("path", "a checkpoint file, folder, or a non-empty list of files", path, error=TypeError if path else ValueError)
        files = [os.fspath(p) for p in path]
    elif isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if isinstance(path, bytes):
            fail("path", "a str or os.PathLike path", path, error=TypeError)
        files = _folder_files(path) if os.path.isdir(path) else [path]
    else:
        fail("path", "a checkpoint file, folder, or a list of files", path, error=TypeError)
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        if isinstance(file, bytes):
            fail("path", "str or os.PathLike paths", file, error=TypeError)
        merged.update(connector_state_dict(load_tensor_file(file), source=f"checkpoint {file!r}"))
    return merged
