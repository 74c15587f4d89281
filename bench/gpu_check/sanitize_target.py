"""The program the sanitizer watches: one small ``og_tokens`` + backward, from bool and
bit-packed masks of odd sizes, with and without a bound (every Triton kernel, no cuBLAS:
libraries the sanitizer would have to instrument at load time cost minutes).

``python -m bench.gpu_check.sanitize_target [--device cuda|cpu]`` prints ``target ok`` and
exits 0 when the gradients are finite and the bounded call equals the plain one; the
``sanitizer`` section runs it under ``compute-sanitizer`` (``--smoke`` runs it plainly, so it
cannot rot).
"""

from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> int:
    from ogkernels import PackedMasks, og_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    device = parser.parse_args(argv).device
    g = torch.Generator().manual_seed(0)
    # odd sizes: a last partial 32-bit word, a mask smaller than the grid, an empty image
    masks = [torch.rand(3, 37, 29, generator=g) < 0.3, torch.rand(1, 5, 7, generator=g) < 0.5,
             torch.zeros(2, 11, 13, dtype=torch.bool)]  # fmt: skip
    features = torch.randn(3, 49, 40, generator=g)
    bom = torch.randn(1, 40, generator=g)
    x, b = features.to(device).requires_grad_(True), bom.to(device).requires_grad_(True)
    dense = [m.to(device) for m in masks]
    packed = [PackedMasks.from_dense(m).to(device) for m in masks]
    plain = og_tokens(x, dense, b)
    bounded = og_tokens(x, packed, b, max_tokens=int(plain.cu_seqlens[-1]) + 7)
    (plain.values.sum() + bounded.values.square().sum()).backward()
    used = int(plain.cu_seqlens[-1])
    ok = torch.equal(plain.values, bounded.values[:used]) and bool(torch.isfinite(x.grad).all() & torch.isfinite(b.grad).all())
    if device == "cuda":
        torch.cuda.synchronize()
    print("target ok" if ok else "target WRONG")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
