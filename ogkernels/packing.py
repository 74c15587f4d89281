"""``pack_multimodal``: text and image tokens of a batch in one padding-free packed sequence.

``B`` samples, each text token ids with at most one image placeholder, become one ``(1, S, D)``
``inputs_embeds`` buffer: sample after sample, each placeholder replaced by that image's
tokens (e.g. OG-Fusion's varlen output), with the metadata transformers' padding-free path
needs: ``position_ids`` restarting at 0 per sample, ``labels`` (IGNORE on visual rows and on
each sample's first row, as ``DataCollatorWithFlattening`` does), and the ``FlashAttentionKwargs``
``cu_seq_lens_q/k`` (int32) and ``max_length_q/k`` (int).

Two steps, one job each:
- :func:`plan_packing` builds the layout (indices only, no embeddings, no Python loop over
  tokens): a collator can run it on the CPU before the model runs.
- :func:`embed_packed` writes the rows in one fused pass: ``gather_rows`` over the tables
  ``[text embeddings (N_text, D), image tokens (T, D)]`` (one Triton kernel on CUDA).
:func:`pack_multimodal` does both.

Batches under a token budget: :class:`TokenBudgetSampler` (:mod:`ogkernels.batch_sampler`),
re-exported here.

Truncation policy (``max_length`` per sample, like the reference's ``model_max_length``):
- ``truncation="error"`` (default): a sample longer than ``max_length`` raises ``ValueError``
  naming the sample and its length.
- ``truncation="drop_text_tail"``: a sample keeps its first ``max_length`` rows, which drops
  text at its end; if any row of its image would fall past ``max_length`` it raises
  ``ValueError`` naming the sample (an image is never cut or dropped silently — the reference
  truncates after splicing and can cut an image or every supervised token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .ops.host import upload
from ._validation import check_choice, check_int, check_tensor, describe, fail
from .batch_sampler import TokenBudgetSampler
from .options import INT32_MAX
from .varlen import VarlenBatch

IGNORE_INDEX = -100
REFERENCE_IMAGE_TOKEN_ID = -200  # the reference's ``IMAGE_TOKEN_INDEX``
TEXT_TABLE, IMAGE_TABLE = 0, 1
TRUNCATIONS = ("error", "drop_text_tail")

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PackingLayout:
    """Where each row of a packed batch comes from: ``B`` samples, ``S`` rows, no embeddings.

    Attributes:
        text_ids: ``(N_text,)`` int64: the text token ids kept, in packed order (the rows of
            the text table; placeholders removed).
        table_index: ``(S,)`` int64: ``0`` for a text row, ``1`` for an image row.
        row_index: ``(S,)`` int64: the row in the text table or in the image tokens' values
            (image rows of sample ``b`` start at the sum of earlier samples' image lengths).
        position_ids: ``(1, S)`` int64, ``0 … L_b − 1`` within each sample.
        labels: ``(1, S)`` int64 or None: the text labels; ``IGNORE_INDEX`` on image rows and
            on each sample's first row.
        cu_seq_lens: ``(B + 1,)`` int32 sample offsets in the packed sequence.
        max_length: the longest sample ``max L_b`` (Python int).
        image_lengths: ``(B,)`` int64: image rows of each sample (0 without an image).
    """

    text_ids: torch.Tensor
    table_index: torch.Tensor
    row_index: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    cu_seq_lens: torch.Tensor
    max_length: int
    image_lengths: torch.Tensor

    @property
    def num_samples(self) -> int:
        return self.cu_seq_lens.numel() - 1

    @property
    def total_length(self) -> int:
        """``S``, the packed rows."""
        return self.table_index.numel()

    @property
    def sample_lengths(self) -> torch.Tensor:
        """``(B,)`` int64 ``L_b``."""
        return (self.cu_seq_lens[1:] - self.cu_seq_lens[:-1]).long()

    def expanded_ids(self, image_token_id: int) -> torch.Tensor:
        """``(1, S)`` int64 token ids with ``image_token_id`` on every image row (the form
        Hugging Face LLaVA processors produce: one placeholder per visual token)."""
        source = self.text_ids if self.text_ids.numel() else self.text_ids.new_zeros(1)
        text = source.index_select(0, torch.where(self.table_index == TEXT_TABLE, self.row_index, 0))
        return torch.where(self.table_index == IMAGE_TABLE, image_token_id, text)[None]


@dataclass
class PackedBatch:
    """One padding-free multimodal batch, ready for a transformers language model.

    Attributes:
        inputs_embeds: ``(1, S, D)`` in the embeddings' dtype.
        position_ids: ``(1, S)`` int64, restarting at 0 per sample.
        labels: ``(1, S)`` int64 or None (see :class:`PackingLayout`).
        cu_seq_lens_q, cu_seq_lens_k: ``(B + 1,)`` int32 (the same tensor).
        max_length_q, max_length_k: Python ints (the same value).
        layout: the :class:`PackingLayout` the rows were written from.
    """

    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    cu_seq_lens_q: torch.Tensor
    cu_seq_lens_k: torch.Tensor
    max_length_q: int
    max_length_k: int
    layout: PackingLayout

    def flash_attn_kwargs(self) -> dict[str, Any]:
        """``cu_seq_lens_q/k`` and ``max_length_q/k``: transformers' ``FlashAttentionKwargs``."""
        return {
            "cu_seq_lens_q": self.cu_seq_lens_q,
            "cu_seq_lens_k": self.cu_seq_lens_k,
            "max_length_q": self.max_length_q,
            "max_length_k": self.max_length_k,
        }


def plan_packing(
    input_ids: Sequence[torch.Tensor],
    image_lengths: Sequence[int] | torch.Tensor,
    labels: Sequence[torch.Tensor] | None = None,
    *,
    image_token_id: int = REFERENCE_IMAGE_TOKEN_ID,
    max_length: int | None = None,
    truncation: str = "error",
) -> PackingLayout:
    """The layout of a packed batch, from token ids and each sample's image length.

    Args:
        input_ids: ``B`` 1-D integer tensors; each holds at most one ``image_token_id`` where
            its image goes.
        image_lengths: ``(B,)``: the image rows of each sample (0 for a sample without a
            placeholder). E.g. ``og_token_counts(masks, grid)`` scattered to the samples.
        labels: None, or ``B`` integer tensors shaped like ``input_ids`` (IGNORE = -100).
        image_token_id: the placeholder id (the reference's -200, or a model's
            ``config.image_token_id``).
        max_length: None, or the longest a sample may be after expansion.
        truncation: ``"error"`` or ``"drop_text_tail"`` (module docstring).

    Returns:
        :class:`PackingLayout` on the device of ``input_ids``. Vectorised over tokens; reads
        a few per-sample values on the host (one sync on GPU).
    """
    ids, lengths, device = _check_ids("input_ids", input_ids)
    check_choice("truncation", truncation, TRUNCATIONS)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            fail("max_length", "None or an int", max_length, error=TypeError)
        if max_length < 1:
            fail("max_length", "an int >= 1", max_length)
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int):
        fail("image_token_id", "an int", image_token_id, error=TypeError)
    batch = len(lengths)
    image_len = _check_image_lengths(image_lengths, batch, device)
    label_flat = None
    if labels is not None:
        label_flat, label_lengths, _ = _check_ids("labels", labels)
        if len(label_lengths) != batch:
            fail("labels", f"{batch} tensors (one per sample of input_ids)", labels)
        for b in range(batch):
            if label_lengths[b] != lengths[b]:
                fail(f"labels[{b}]", f"{lengths[b]} labels (the length of input_ids[{b}])", labels[b])
        label_flat = label_flat.to(device)

    per_sample = upload(lengths, torch.int64, device)
    sample_of = torch.repeat_interleave(torch.arange(batch, device=device), per_sample)
    is_placeholder = ids == image_token_id
    placeholders = torch.zeros(batch, dtype=torch.int64, device=device).index_add_(
        0, sample_of, is_placeholder.long()
    )
    _check_placeholders(placeholders, image_len, image_token_id)

    # Each input token spans 1 output row, a placeholder spans its image's rows.
    width = torch.where(is_placeholder, image_len[sample_of], 1)
    span_start = torch.cumsum(width, 0) - width
    out_len = torch.zeros(batch, dtype=torch.int64, device=device).index_add_(0, sample_of, width)
    sample_start = torch.cumsum(out_len, 0) - out_len
    span_in_sample = span_start - sample_start[sample_of]

    keep_len = out_len
    if max_length is not None:
        keep_len = _truncate(out_len, span_in_sample, width, is_placeholder, sample_of, max_length, truncation)
    longest, total = torch.stack([keep_len.max(), keep_len.sum()]).tolist() if batch else (0, 0)
    if total > INT32_MAX:  # the int64 total, checked before anything of that size is built
        fail("image_lengths", f"at most {INT32_MAX} packed rows in all (int32 cu_seq_lens)", f"{total} rows")

    owner = torch.repeat_interleave(torch.arange(ids.numel(), device=device), width)
    offset = torch.arange(owner.numel(), device=device) - span_start[owner]
    position = span_in_sample[owner] + offset
    if max_length is not None:
        kept = position < max_length
        owner, offset, position = owner[kept], offset[kept], position[kept]

    is_image_row = is_placeholder[owner]
    owner_sample = sample_of[owner]
    image_start = torch.cumsum(image_len, 0) - image_len
    text_rank = torch.cumsum(~is_image_row, 0) - 1
    row_index = torch.where(is_image_row, image_start[owner_sample] + offset, text_rank)
    table_index = is_image_row.long()
    text_ids = ids[owner[~is_image_row]].long()

    out_labels = None
    if label_flat is not None:
        out_labels = torch.where(is_image_row, IGNORE_INDEX, label_flat[owner].long())
        out_labels = torch.where(position == 0, IGNORE_INDEX, out_labels)[None]

    cu_seq_lens = torch.zeros(batch + 1, dtype=torch.int32, device=device)
    torch.cumsum(keep_len, 0, out=cu_seq_lens[1:])
    return PackingLayout(
        text_ids=text_ids,
        table_index=table_index,
        row_index=row_index,
        position_ids=position[None].long(),
        labels=out_labels,
        cu_seq_lens=cu_seq_lens,
        max_length=longest,
        image_lengths=image_len,
    )


def embed_packed(
    layout: PackingLayout,
    image_tokens: VarlenBatch | torch.Tensor | None,
    embed_tokens: EmbedFn,
) -> PackedBatch:
    """Write a layout's rows: ``embed_tokens`` on all text ids at once, then one
    ``gather_rows`` over ``[text embeddings, image token values]``.

    Args:
        layout: from :func:`plan_packing`.
        image_tokens: the image rows, samples in order: a :class:`VarlenBatch` (its first
            ``cu_seqlens[-1]`` rows are read) or a ``(T, D)`` tensor; None when no sample has an
            image. Cast to the embeddings' dtype.
        embed_tokens: ``(N,) int64 → (N, D)``, e.g. a model's ``get_input_embeddings()``.

    Returns:
        :class:`PackedBatch`; differentiable w.r.t. the embeddings and the image tokens.
    """
    if not callable(embed_tokens):
        fail("embed_tokens", "a callable mapping token ids (N,) to embeddings (N, D)", embed_tokens, error=TypeError)
    values = image_tokens.values if isinstance(image_tokens, VarlenBatch) else image_tokens
    if values is not None:
        check_tensor("image_tokens", values)
        if values.dim() != 2:
            fail("image_tokens", "(T, D) rows", values)
    device = values.device if values is not None else layout.text_ids.device
    text = embed_tokens(layout.text_ids.to(device))
    if not isinstance(text, torch.Tensor) or text.dim() != 2 or text.shape[0] != layout.text_ids.numel():
        fail("embed_tokens", f"a callable returning ({layout.text_ids.numel()}, D) embeddings", text)
    if values is None:
        if int(layout.image_lengths.sum()) != 0:
            fail("image_tokens", f"{int(layout.image_lengths.sum())} image rows for the layout", "None")
        values = text.new_zeros(0, text.shape[1])
    if values.shape[1] != text.shape[1]:
        fail("image_tokens", f"rows of width {text.shape[1]} (the embedding width)", values)
    needed = int(layout.image_lengths.sum())
    if values.shape[0] < needed:
        fail("image_tokens", f"at least {needed} rows (the layout's image rows)", values)
    rows = _gather_rows()(
        [text, values.to(text.dtype)],
        layout.table_index.to(device),
        layout.row_index.to(device),
    )
    cu = layout.cu_seq_lens.to(device)
    return PackedBatch(
        inputs_embeds=rows[None],
        position_ids=layout.position_ids.to(device),
        labels=None if layout.labels is None else layout.labels.to(device),
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=layout.max_length,
        max_length_k=layout.max_length,
        layout=layout,
    )


def pack_multimodal(
    input_ids: Sequence[torch.Tensor],
    image_tokens: VarlenBatch | None,
    embed_tokens: EmbedFn,
    labels: Sequence[torch.Tensor] | None = None,
    *,
    image_token_id: int = REFERENCE_IMAGE_TOKEN_ID,
    max_length: int | None = None,
    truncation: str = "error",
) -> PackedBatch:
    """Pack ``B`` samples' text and image tokens into one ``(1, S, D)`` sequence.

    Args:
        input_ids: ``B`` 1-D integer tensors, each with at most one ``image_token_id``.
        image_tokens: the images' tokens as a :class:`VarlenBatch` ``values (T, D)``: either one
            sequence per sample (a sample without a placeholder must then have length 0) or
            one per sample *with* a placeholder, in order. None when no sample has an image.
        embed_tokens: ``(N,) int64 → (N, D)`` text embedding (called once).
        labels: None or ``B`` label tensors shaped like ``input_ids``.
        image_token_id, max_length, truncation: see :func:`plan_packing` and the module
            docstring (truncation policy).

    Returns:
        :class:`PackedBatch` with ``inputs_embeds (1, S, D)``, ``position_ids``, ``labels``,
        ``cu_seq_lens_q/k``, ``max_length_q/k``.
    """
    _check_ids("input_ids", input_ids)
    counts = torch.stack([(x == image_token_id).sum() for x in input_ids]).tolist() if input_ids else []
    has_image = [n > 0 for n in counts]
    image_lengths = _image_lengths_per_sample(image_tokens, has_image)
    layout = plan_packing(
        input_ids, image_lengths, labels, image_token_id=image_token_id, max_length=max_length, truncation=truncation
    )
    return embed_packed(layout, image_tokens, embed_tokens)


def merge_image_tokens(
    input_ids: torch.Tensor,
    image_tokens: VarlenBatch | torch.Tensor | None,
    embed_tokens: EmbedFn,
    image_token_id: int,
    *,
    image_rows: int | None = None,
) -> torch.Tensor:
    """Embeddings of token ids that already hold one ``image_token_id`` per visual row.

    The Hugging Face form (a processor or :class:`~ogkernels.integrations.hf_llava.OGLlavaCollator`
    expanded each image to its token count): ``input_ids`` of any shape ``(..., S)``; the
    ``k``-th placeholder in row-major order receives image row ``k``. One ``gather_rows`` over
    ``[embeddings of every position, image rows]`` (placeholders embed id 0, unused: no
    data-dependent shape). Returns ``(..., S, D)``.

    ``image_rows``: the number of placeholders when the caller knows it (the collator does):
    then nothing is read back from the device — the image rows are ``values[:image_rows]`` and
    the count is checked on the device (on a CPU tensor: on the host). Without it, two host
    reads (the rows in use, the placeholder count).

    Raises ``ValueError`` when the placeholder count differs from the image rows.
    """
    check_tensor("input_ids", input_ids)
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        fail("input_ids", "an integer tensor", input_ids, error=TypeError)
    flat = input_ids.reshape(-1)
    is_image = flat == image_token_id
    if image_rows is None:
        values = image_tokens.values[: image_tokens.total_tokens] if isinstance(image_tokens, VarlenBatch) else image_tokens
        count = int(is_image.sum())
        available = 0 if values is None else values.shape[0]
        if count != available:
            fail("input_ids", f"{available} image placeholders ({image_token_id}), one per image row", f"{count} placeholders")
    else:
        values = _bounded_image_rows(image_tokens, image_rows)
        _check_placeholders_on_device(is_image, image_rows, image_token_id)
    image_rank = torch.cumsum(is_image, 0) - 1
    text = embed_tokens(torch.where(is_image, 0, flat))  # placeholder ids need not be in the vocabulary (-200)
    if values is None:
        values = text.new_zeros(0, text.shape[1])
    if values.shape[1] != text.shape[1]:
        fail("image_tokens", f"rows of width {text.shape[1]} (the embedding width)", values)
    rows = _gather_rows()(
        [text, values.to(device=text.device, dtype=text.dtype)],
        is_image.long(),
        torch.where(is_image, image_rank, torch.arange(flat.numel(), device=flat.device)),
    )
    return rows.reshape(*input_ids.shape, text.shape[1])


def _bounded_image_rows(image_tokens: VarlenBatch | torch.Tensor | None, image_rows: Any) -> torch.Tensor | None:
    """The first ``image_rows`` rows of the image tokens (a static slice: no host read)."""
    check_int("image_rows", image_rows, minimum=0)
    values = image_tokens.values if isinstance(image_tokens, VarlenBatch) else image_tokens
    available = 0 if values is None else values.shape[0]
    if image_rows > available:
        fail("image_rows", f"<= {available} (the image rows the connector produced)", image_rows)
    if isinstance(image_tokens, VarlenBatch) and image_tokens.cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        used = int(image_tokens.cu_seqlens[-1])
        if used != image_rows:
            fail("image_rows", f"{used} (the image rows in use)", image_rows)
    elif isinstance(image_tokens, VarlenBatch):
        torch._assert_async(image_tokens.cu_seqlens[-1] == image_rows, "image_rows: expected the image rows in use")
    return None if values is None else values[:image_rows]


def _check_placeholders_on_device(is_image: torch.Tensor, image_rows: int, image_token_id: int) -> None:
    if is_image.device.type == "cpu" and not torch.compiler.is_compiling():
        count = int(is_image.sum())
        if count != image_rows:
            fail("input_ids", f"{image_rows} image placeholders ({image_token_id}), one per image row", f"{count} placeholders")
    else:
        torch._assert_async(is_image.sum() == image_rows, "input_ids: expected one image placeholder per image row")


def _gather_rows() -> Callable[..., torch.Tensor]:
    from .ops.gather_rows import gather_rows

    return gather_rows


def _check_ids(argument: str, value: Any) -> tuple[torch.Tensor, list[int], torch.device]:
    """``B`` 1-D integer tensors → (concatenation, lengths, device)."""
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        fail(argument, "a list of 1-D integer tensors (one per sample)", value, error=TypeError)
    lengths = []
    device = value[0].device if value and isinstance(value[0], torch.Tensor) else torch.device("cpu")
    for b, item in enumerate(value):
        name = f"{argument}[{b}]"
        check_tensor(name, item)
        if item.dim() != 1:
            fail(name, "a 1-D tensor", item)
        if item.dtype.is_floating_point or item.dtype.is_complex or item.dtype == torch.bool:
            fail(name, "an integer tensor", item, error=TypeError)
        if item.device.type == "meta":
            fail(name, "a tensor with data (not on the meta device)", item)
        if item.device != device:
            fail(name, f"a tensor on {device} (the device of {argument}[0])", item)
        lengths.append(item.numel())
    if not value:
        return torch.zeros(0, dtype=torch.int64), [], device
    return torch.cat([x.long() for x in value]), lengths, device


def _check_image_lengths(image_lengths: Any, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(image_lengths, torch.Tensor):
        if image_lengths.dim() != 1 or image_lengths.dtype.is_floating_point or image_lengths.dtype == torch.bool:
            fail("image_lengths", "a 1-D integer tensor (B,)", image_lengths, error=TypeError)
        out = image_lengths.to(device=device, dtype=torch.int64)
    elif isinstance(image_lengths, (list, tuple)) and all(
        isinstance(n, int) and not isinstance(n, bool) for n in image_lengths
    ):
        out = upload(list(image_lengths), torch.int64, device)
    else:
        fail("image_lengths", "a sequence of ints or a 1-D integer tensor", image_lengths, error=TypeError)
    if out.numel() != batch:
        fail("image_lengths", f"{batch} entries (one per sample)", image_lengths)
    if batch and int(out.min()) < 0:
        fail("image_lengths", "entries >= 0", image_lengths)
    return out


def _check_placeholders(placeholders: torch.Tensor, image_len: torch.Tensor, image_token_id: int) -> None:
    counts = placeholders.tolist()
    lengths = image_len.tolist()
    for b, (n, length) in enumerate(zip(counts, lengths)):
        if n > 1:
            fail(f"input_ids[{b}]", f"at most one image placeholder ({image_token_id})", f"{n} placeholders")
        if n == 0 and length != 0:
            fail(f"image_lengths[{b}]", f"0 (input_ids[{b}] has no image placeholder {image_token_id})", length)


def _truncate(
    out_len: torch.Tensor,
    span_in_sample: torch.Tensor,
    width: torch.Tensor,
    is_placeholder: torch.Tensor,
    sample_of: torch.Tensor,
    max_length: int,
    truncation: str,
) -> torch.Tensor:
    """Per-sample kept lengths under the truncation policy; raises as documented."""
    too_long = out_len > max_length
    if truncation == "error" and bool(too_long.any()):
        b = int(torch.nonzero(too_long)[0])
        fail(
            f"input_ids[{b}]",
            f"a sample of at most max_length={max_length} rows after image expansion "
            "(or truncation='drop_text_tail')",
            f"{int(out_len[b])} rows",
        )
    image_end = span_in_sample + width
    cut = is_placeholder & (width > 0) & (image_end > max_length)
    if bool(cut.any()):
        i = int(torch.nonzero(cut)[0])
        b = int(sample_of[i])
        fail(
            f"input_ids[{b}]",
            f"its image (rows {int(span_in_sample[i])}…{int(image_end[i]) - 1}) within max_length={max_length}; "
            "truncation never cuts an image",
            f"a sample of {int(out_len[b])} rows",
        )
    return out_len.clamp(max=max_length)


def _image_lengths_per_sample(image_tokens: VarlenBatch | None, has_image: list[bool]) -> list[int]:
    """Map a VarlenBatch's sequences to samples: one per sample, or one per sample with a
    placeholder."""
    batch, with_image = len(has_image), sum(has_image)
    if image_tokens is None:
        if with_image:
            fail("image_tokens", f"a VarlenBatch with {with_image} images (samples with a placeholder)", "None")
        return [0] * batch
    if not isinstance(image_tokens, VarlenBatch):
        fail("image_tokens", "a VarlenBatch or None", image_tokens, error=TypeError)
    lengths = image_tokens.lengths.tolist()
    if len(lengths) == with_image:
        it = iter(lengths)
        return [next(it) if flag else 0 for flag in has_image]
    if len(lengths) == batch:
        for b, (flag, n) in enumerate(zip(has_image, lengths)):
            if not flag and n:
                fail(f"image_tokens (sequence {b})", f"length 0 (input_ids[{b}] has no placeholder)", f"length {n}")
        return lengths
    fail(
        "image_tokens",
        f"{with_image} sequences (samples with a placeholder) or {batch} (one per sample)",
        f"a VarlenBatch of {len(lengths)} sequences ({describe(image_tokens.values)})",
    )
    raise AssertionError  # unreachable: fail raises
