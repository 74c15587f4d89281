"""What the main job measures and leaves behind: the cost of a packed batch against the
reference's padded one, per-step metrics (``metrics.jsonl``), their plot (``metrics.png``) and
the progress bar.

One JSON object per line of ``metrics.jsonl`` (:data:`METRIC_KEYS`):
``mode`` (``"packed"`` or ``"reference"``), ``step`` (optimizer steps done), ``micro``
(micro-batch, from 1), ``loss``, ``samples``, ``tokens`` (the batch's real LLM tokens: text +
OG tokens), ``llm_rows`` (rows the LLM ran: ``tokens`` packed, ``B × S_max`` padded),
``padding_fraction`` (``1 − tokens / llm_rows``), ``padding_rows``, ``tokens_ref`` (the
reference's padded rows for the same samples), ``time_s``, ``tokens_per_s``, ``samples_per_s``
(real tokens and samples per second of step time), ``token_budget`` (None without
``--token-budget``), ``peak_memory_bytes`` (CUDA's peak allocated memory in the step; None on
the CPU).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..budget import batch_budget

METRIC_KEYS = (
    "mode", "step", "micro", "loss", "samples", "tokens", "llm_rows", "padding_rows", "padding_fraction",
    "tokens_ref", "time_s", "tokens_per_s", "samples_per_s", "token_budget", "peak_memory_bytes",
)  # fmt: skip
MODES = ("packed", "reference")


def padding_cost(image_lengths: Sequence[int], text_lengths: Sequence[int], config: Any) -> dict[str, int]:
    """LLM tokens, attention FLOPs and projector rows of a packed batch and of the reference's
    padded batch for the same samples (``image_lengths[b]`` = 0: no image).

    Reference (§6, §9): every image gets ``L_max`` rows (pad rows attended), then the batch is
    padded to its longest sequence (attended too, §9's pad-id quirk): ``B × S_ref`` tokens and
    ``B`` dense ``S_ref``-long sequences. Packed: ``Σ L_b`` tokens, each sample attends itself.
    """
    longest_image = max(image_lengths, default=0)
    ref_image_rows = [longest_image if n > 0 else 0 for n in image_lengths]
    ours = batch_budget(list(image_lengths), config, text_tokens=list(text_lengths))
    ref = batch_budget(ref_image_rows, config, text_tokens=list(text_lengths))
    return {
        "tokens": ours.total_tokens,
        "tokens_ref": ref.padded_tokens,
        "attention_flops": ours.prefill_flops_attention,
        "attention_flops_ref": ref.prefill_flops_attention_padded,
        "projector_rows": sum(image_lengths),
        "projector_rows_ref": sum(ref_image_rows),
        "sum_sq": sum(n * n for n in ours.lengths),
        "sum_sq_ref": len(ours.lengths) * ref.max_length**2,
    }


def batch_cost(batch: dict[str, Any], image_token_id: int, config: Any) -> dict[str, int]:
    """:func:`padding_cost` of a packed batch made by ``OGLlavaCollator``, plus ``samples``."""
    cu = batch["cu_seq_lens_q"].long()
    lengths = cu[1:] - cu[:-1]
    is_image = (batch["input_ids"][0] == image_token_id).long()
    sample = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    image_rows = torch.zeros(lengths.numel(), dtype=torch.long).index_add_(0, sample, is_image)
    cost = padding_cost(image_rows.tolist(), (lengths - image_rows).tolist(), config)
    cost["samples"] = int(lengths.numel())
    return cost


def step_record(
    mode: str, step: int, micro: int, loss: float, cost: dict[str, int], seconds: float,
    token_budget: int | None, peak_memory: int | None,
) -> dict[str, Any]:  # fmt: skip
    """One line of ``metrics.jsonl`` (module docstring) from a step's :func:`batch_cost`."""
    rows = cost["tokens_ref"] if mode == "reference" else cost["tokens"]
    return {
        "mode": mode,
        "step": step,
        "micro": micro,
        "loss": loss if math.isfinite(loss) else None,  # JSON has no NaN
        "samples": cost["samples"],
        "tokens": cost["tokens"],
        "llm_rows": rows,
        "padding_rows": rows - cost["tokens"],
        "padding_fraction": 1.0 - cost["tokens"] / rows if rows else 0.0,
        "tokens_ref": cost["tokens_ref"],
        "time_s": seconds,
        "tokens_per_s": cost["tokens"] / seconds,
        "samples_per_s": cost["samples"] / seconds,
        "token_budget": token_budget,
        "peak_memory_bytes": peak_memory,
    }


class MetricsLog:
    """Appends step records to ``path`` (``metrics.jsonl``), one flushed line each."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def plot_metrics(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """``metrics.png``: loss, real tokens/s and LLM rows per step for each mode in
    ``records`` (packed, and the reference's padded batches when it ran); the rows panel also
    draws the reference's padded rows for the packed run's own batches (counted)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    by_mode: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_mode.setdefault(record["mode"], []).append(record)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    styles = {"packed": dict(color="tab:blue"), "reference": dict(color="tab:red")}
    labels = {"packed": "OG-Fusion packed", "reference": "reference padded"}
    for mode, rows in by_mode.items():
        micro = [r["micro"] for r in rows]
        style = styles.get(mode, {})
        axes[0].plot(micro, [r["loss"] for r in rows], label=labels.get(mode, mode), **style)
        axes[1].plot(micro, [r["tokens_per_s"] for r in rows], label=labels.get(mode, mode), **style)
        axes[2].plot(micro, [r["llm_rows"] for r in rows], label=f"{labels.get(mode, mode)} (ran)", **style)
        if mode == "packed" and "reference" not in by_mode:
            axes[2].plot(micro, [r["tokens_ref"] for r in rows], "--", color="tab:red", label="reference padded (counted)")
    budget = next((r["token_budget"] for rows in by_mode.values() for r in rows if r.get("token_budget")), None)
    if budget:
        axes[2].axhline(budget, color="grey", linestyle=":", label=f"token budget {budget}")
    titles = ("training loss", "real LLM tokens / s (text + OG tokens)", "LLM rows per step")
    for axis, title in zip(axes, titles):
        axis.set_title(title)
        axis.set_xlabel("micro-batch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Progress:
    """A tqdm bar over the steps when ``enabled`` (default: stderr is a TTY), else nothing;
    :meth:`update` shows the latest loss and tokens/s."""

    def __init__(self, total: int, description: str, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, unit="step", dynamic_ncols=True)

    @property
    def active(self) -> bool:
        return self.bar is not None

    def update(self, steps: int, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def peak_memory(device: torch.device) -> int | None:
    """CUDA's peak allocated bytes since the last reset (None off CUDA)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
