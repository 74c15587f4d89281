"""The report's figure (PNG, matplotlib's Agg backend): CPU speedups (measured) and modeled
GPU times and traffic (modeled), four panels."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ogkernels.tools import costmodel as cm

GOAL_SPEEDUP = 10.0


def _short(record: dict) -> str:
    cfg = record["config"]
    return f"{cfg['encoder'].split('-')[0]} B{cfg['B']}"


def _seconds(ops: list[dict], name: str, impl: str, gpu: str) -> float:
    return next(o for o in ops if o["op"].startswith(name) and o["impl"] == impl)["seconds"][gpu]


def _short_group(group: str) -> str:
    """A benchmark group without the parts that repeat in every label."""
    group = re.sub(r"\(\d+ masks\)| F=\d+| fp32| masks|fwd\+bwd", "", group)
    return " ".join(group.split())


def _speedups(ax, timing_rows: list[dict]) -> None:
    rows = [r for r in timing_rows if r["speedup_median"] is not None]
    labels = [f"{_short_group(r['group'])} · {r['path']}" for r in rows]
    values = [r["speedup_median"] for r in rows]
    y = np.arange(len(rows))
    colors = ["tab:green" if v >= GOAL_SPEEDUP else "tab:orange" if v >= 1 else "tab:red" for v in values]
    ax.barh(y, values, color=colors)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(GOAL_SPEEDUP, color="tab:green", ls="--", lw=1, label=f"goal {GOAL_SPEEDUP:.0f}×")
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.1f}×", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("reference median / path median (measured, CPU)")
    ax.set_title("CPU speedup vs reference (measured)")
    ax.legend(fontsize=7, loc="lower right")


def _bars(ax, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str, log: bool = True) -> None:
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, fontsize=7, rotation=20)
    if log:
        ax.set_yscale("log")
    else:
        for container in ax.containers:
            ax.bar_label(container, fmt="%.1f", fontsize=6)
        ax.set_ylim(0, 1.3 * max(max(values) for values in series.values()))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)


def draw(path: Path, timing_rows: list[dict], records: list[dict], modeled: list[list[dict]], floors: list[dict],
         gpu: str = "H100-SXM") -> None:  # fmt: skip
    """Write the four-panel PNG to ``path``."""
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    labels = [_short(r) for r in records]
    if timing_rows:
        _speedups(axes[0, 0], timing_rows)
    else:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no CPU timings in this report", ha="center")
    og = {f"ours {name}": [1e6 * _seconds(ops, "og_tokens total", "ours", name) for ops in modeled] for name in cm.GPUS}
    og[f"bound {gpu}"] = [1e6 * _seconds(ops, "og_tokens minimum", "bound", gpu) for ops in modeled]
    og[f"reference {gpu}"] = [1e6 * _seconds(ops, "embedder", "reference", gpu) for ops in modeled]
    _bars(axes[0, 1], labels, og, "µs (modeled)", "og_tokens: MODELED roofline time (bytes / HBM BW)")
    connector = {
        f"ours roofline {gpu}": [1e6 * _seconds(ops, "connector total", "ours", gpu) for ops in modeled],
        f"reference roofline {gpu}": [1e6 * _seconds(ops, "connector total", "reference", gpu) for ops in modeled],
        "ours embedder launch+sync floor": [1e6 * f["ours"]["seconds"] for f in floors],
        "reference embedder launch+sync floor": [1e6 * f["reference"]["seconds"] for f in floors],
    }
    _bars(axes[1, 0], labels, connector, "µs (modeled)",
          f"connector (D=4096, bf16): MODELED on {gpu}\nfloors: assumed µs per launch / per sync")  # fmt: skip
    traffic = {
        "ours CUDA design": [r["og_tokens"]["ours_cuda_design_bytes"]["total"] / r["og_tokens"]["min_bytes"] for r in records],
        "ours PyTorch (counted)": [r["og_tokens"]["ours_torch"]["bytes"] / r["og_tokens"]["min_bytes"] for r in records],
        "reference (counted, device)": [r["og_tokens"]["reference_device"]["bytes"] / r["og_tokens"]["min_bytes"] for r in records],
    }  # fmt: skip
    _bars(axes[1, 1], labels, traffic, "bytes / minimum",
          "og_tokens traffic vs minimum (masks + features + T·F once)", log=False)  # fmt: skip
    axes[1, 1].axhline(2.0, color="tab:green", ls="--", lw=1, label="2× the minimum")
    axes[1, 1].legend(fontsize=7, loc="upper left", ncols=2)
    fig.suptitle("ogkernels: measured CPU speedups (top left); everything else is MODELED or counted, not GPU-measured")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
