"""Section ``tuning``: a short sweep of the Φ and gather launch settings, and the best one.

Each setting is applied through ``ogkernels.ops.launch.overrides`` (the launchers' one place
for tile sizes and warps), checked bit for bit against the default launch, timed at the
middle configuration (B = 16, V = 576, F = 1024, bf16 on a GPU), and, outside the
interpreter, compiled ahead of time for this device's architecture for its registers and
spills (``ogkernels.tools.audit``). The fastest exact setting is printed so it can be
committed in ``ogkernels/ops/launch.py``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .core import Context, SectionResult, SectionSkipped, measure
from .workload import make_batch, middle, patch_gather_indices

# Φ_α today: 161–167 registers (19 % occupancy) at its default tiles on sm_80 / sm_90
# (its default at the middle configuration: BLOCK_C=16, BLOCK_W=64, 4 warps); smaller tiles
# trade registers for bytes in flight
PHI_SETTINGS = (
    dict(BLOCK_C=8, BLOCK_W=64),
    dict(BLOCK_C=16, BLOCK_W=32),
    dict(BLOCK_C=32, BLOCK_W=16),
    dict(BLOCK_C=16, BLOCK_W=64, num_warps=8),
    dict(BLOCK_C=16, BLOCK_W=32, num_warps=2),
)
# gather_rows bf16 F=1024 (default: BLOCK_R=4, BLOCK_C=1024, 4 warps)
GATHER_SETTINGS = (
    dict(BLOCK_R=2),
    dict(BLOCK_R=8),
    dict(BLOCK_R=16, BLOCK_C=256),
    dict(BLOCK_R=8, num_warps=8),
)
SMOKE_SETTINGS = {"phi_bins": (dict(BLOCK_C=2, BLOCK_W=8),), "gather_rows": (dict(BLOCK_R=2),)}
AUDIT_CONFIGS = {"phi_bins": "phi flat 480x640 V=576", "gather_rows": "gather_rows bf16 F=1024"}


def _launch_module():
    try:
        from ogkernels.ops import launch
    except ImportError:
        raise SectionSkipped("needs ogkernels.ops.launch (the launch-settings helper) in this checkout") from None
    return launch


def registers(kernel: str, settings: dict, arch: int | None) -> dict:
    """Registers and spill bytes of ``kernel`` launched with ``settings``, compiled for
    ``sm_<arch>`` (the audit compiles the launcher's own launch; ptxas -v). ``{}`` without an
    architecture (the interpreter compiles nothing)."""
    if arch is None:
        return {}
    from ogkernels.tools.audit import audit_config, kernel_configs

    config = next(c for c in kernel_configs() if c.name == AUDIT_CONFIGS[kernel])
    with _launch_module().overrides(kernel, **settings):
        audit = audit_config(config, arch)
    return {"registers": audit.registers, "spill_bytes": audit.spill_store_bytes + audit.spill_load_bytes}


def device_arch(ctx: Context) -> int | None:
    if not ctx.cuda:
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def sweep(
    kernel: str, call: Callable[[], torch.Tensor], default: dict, settings: tuple[dict, ...], ctx: Context
) -> list[dict]:
    """Time ``call`` at the default launch and at each setting (bit-exact against the default)."""
    launch = _launch_module()
    arch = device_arch(ctx)
    expected = call()
    rows = [{"kernel": kernel, "settings": "default", **_measured(call, ctx), **registers(kernel, {}, arch)}]
    for setting in settings:
        if ctx.time_left() < 3:
            rows.append({"kernel": kernel, "settings": setting, "note": "skipped: no time left"})
            continue
        row: dict[str, Any] = {"kernel": kernel, "settings": setting}
        try:
            with launch.overrides(kernel, **setting):
                row["exact"] = bool(torch.equal(call(), expected))
                row.update(_measured(call, ctx))
            row.update(registers(kernel, setting, arch))
        except Exception as error:  # a setting that does not compile or launch is a row, not a crash
            row["note"] = f"error: {type(error).__name__}: {str(error)[:200]}"
        rows.append(row)
    return rows


def _measured(call: Callable[[], torch.Tensor], ctx: Context) -> dict:
    return {"ms": measure(call, ctx.device, runs=2, warmup_ms=10, rep_ms=60) * 1e3}


def best(rows: list[dict]) -> dict | None:
    """The fastest exact setting, with its speedup over the default."""
    default = next(r for r in rows if r["settings"] == "default")
    exact = [r for r in rows if r["settings"] == "default" or (r.get("exact") and "ms" in r)]
    winner = min(exact, key=lambda r: r["ms"])
    return {"kernel": default["kernel"], "settings": winner["settings"], "ms": winner["ms"],
            "speedup_vs_default": default["ms"] / winner["ms"]}  # fmt: skip


def run(ctx: Context) -> SectionResult:
    from ogkernels import downsample_masks, og_tokens
    from ogkernels.ops.gather_rows import gather_rows

    launch = _launch_module()
    result = SectionResult("tuning")
    batch = make_batch(middle(ctx.smoke), ctx.device)
    cfg = batch.config
    table_index, row_index = patch_gather_indices(og_tokens(batch.features, batch.masks, batch.bom))
    flat = batch.features.reshape(-1, cfg.width)
    first = batch.masks[0]
    bin_pixels = -(-first.shape[1] * first.shape[2] // cfg.tokens) + 1  # flat mode: a (1, V) grid
    plans = (
        ("phi_bins", lambda: downsample_masks(batch.masks, cfg.tokens), launch.phi_bins(bin_pixels, cfg.tokens, False), PHI_SETTINGS),
        ("gather_rows", lambda: gather_rows([flat], table_index, row_index),
         launch.gather_rows(cfg.width, batch.features.element_size()), GATHER_SETTINGS),
    )  # fmt: skip
    result.data["sweeps"], result.data["best"] = [], []
    for kernel, call, default, settings in plans:
        rows = sweep(kernel, call, default, SMOKE_SETTINGS[kernel] if ctx.smoke else settings, ctx)
        result.data["sweeps"] += rows
        wrong = [r["settings"] for r in rows if r.get("exact") is False]
        result.check(f"{kernel}: every setting exact", not wrong, "wrong output at " + str(wrong) if wrong else f"{len(rows)} settings")
        winner = best(rows)
        result.data["best"].append({**winner, "default": default})
    return result
