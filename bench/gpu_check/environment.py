"""Section ``environment``: what ran where — versions, the device, attention backends, tools."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .core import REPO, Context, SectionResult

PACKAGES = ("torch", "triton", "transformers", "numpy", "pytest", "hypothesis", "flash-attn", "pytest-xdist")
SANITIZER_PLACES = ("/usr/local/cuda/bin/compute-sanitizer", "/opt/nvidia/compute-sanitizer/compute-sanitizer")


def sanitizer_binary() -> str | None:
    """Path of ``compute-sanitizer`` (on ``PATH`` or in the usual CUDA places), or None."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    return next((p for p in SANITIZER_PLACES if Path(p).is_file()), None)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown (no git checkout)"
    return out.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")


def device_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False}
    props = torch.cuda.get_device_properties(0)
    return {
        "cuda": True,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_GiB": round(props.total_memory / 2**30, 1),
        "l2_MiB": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        "torch_cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def attention_info(device: str) -> dict:
    import torch

    from ogkernels import attention as A

    q = torch.empty(1, 8, 128, dtype=torch.bfloat16, device=device)
    return {
        "flash_attn": A.flash_attn_available(),
        "torch_varlen": A.torch_varlen_available(),
        "usable_bf16_headdim128": list(A.usable_backends(q)),
        "auto_bf16_headdim128": A.attention_backend(q),
    }


def run(ctx: Context) -> SectionResult:
    result = SectionResult("environment")
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": _commit(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": device_info(),
        "mode": "smoke (CPU, Triton interpreter)" if ctx.smoke else "gpu",
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "OGKERNELS_BACKEND", "OGKERNELS_FORCE_TRITON") if k in os.environ},
        "compute_sanitizer": sanitizer_binary(),
        "attention": attention_info(ctx.device),
    }
    ctx.environment.update(info)
    result.data = info
    result.check("device", ctx.cuda or ctx.smoke, f"running on {ctx.device}")
    return result
