"""Modeled GPU time per op from a cost record (``bench.cost_report``): MODELED, not measured.

Each op gets ``roofline_seconds = max(bytes / HBM bandwidth, FLOPs / peak)`` on every GPU of
``ogkernels.tools.costmodel.GPUS`` (datasheet figures), and each implementation a host-side
``overhead_seconds`` floor from its kernel launches and host syncs at assumed per-event
latencies (``costmodel.ASSUMED_LAUNCH_S`` / ``ASSUMED_SYNC_S``).

Ops (bf16 features, D = 4096):

* ours — ``Φ`` (bool masks, and bit-packed), the token plan (its two kernels' design bytes), the
  global mean, ``gather_rows`` of the features (``og_tokens``), the projector on our rows,
  with project-then-gather the copy of its input rows and the gather of projected rows,
  causal attention of the packed batch;
* reference — the embedder's device-side aten traffic (its Φ runs on the host), the projector
  on ``B·L_max`` rows, causal attention of the padded batch;
* totals — ``og_tokens`` (Φ + plan + mean + gather) and the connector (embedder + projector
  [+ projected gather]).
"""

from __future__ import annotations

from ogkernels.tools import costmodel as cm


def _op(name: str, who: str, bytes_moved: int, flops: int = 0, dtype: str = "bf16") -> dict:
    times = {gpu: cm.roofline_seconds(bytes_moved, flops, spec, dtype) for gpu, spec in cm.GPUS.items()}
    return {"op": name, "impl": who, "bytes": bytes_moved, "flops": flops, "dtype": dtype, "seconds": times}


def _sum(name: str, who: str, parts: list[dict]) -> dict:
    """A total: the sum of its parts' modeled times (ops run one after another)."""
    total = _op(name, who, sum(p["bytes"] for p in parts), sum(p["flops"] for p in parts))
    total["seconds"] = {gpu: sum(p["seconds"][gpu] for p in parts) for gpu in cm.GPUS}
    return total


def modeled_ops(record: dict) -> list[dict]:
    """Modeled per-op rows of one cost record (see the module docstring)."""
    cfg, design = record["config"], record["og_tokens"]["ours_cuda_design_bytes"]
    batch, v, width = cfg["B"], cfg["V"], cfg["F"]
    phi = _op("Φ (bool masks)", "ours", record["phi"]["min_bytes_bool"])
    phi_packed = _op("Φ (bit-packed masks)", "ours", record["phi"]["min_bytes_packed"])
    plan = _op("token plan (2 kernels)", "ours", design["plan"])
    mean = _op("global mean", "ours", design["mean"], batch * v * width, "fp32")
    gather = _op("gather_rows T×F", "ours", design["gather"])
    og = _sum("og_tokens total", "ours", [phi, plan, mean, gather])
    minimum = _op("og_tokens minimum", "bound", record["og_tokens"]["min_bytes"])
    proj = record["projector"]
    projector = _op(f"projector {proj['ours']['rows']} rows", "ours", proj["ours"]["bytes"], proj["ours"]["flops"])
    rows = [phi, phi_packed, plan, mean, gather, og, minimum, projector]
    if proj["ours"]["project_first"]:
        concat = _op("concat patch/global/BOM rows", "ours", proj["ours"]["concat_bytes"])
        projected_gather = _op("gather_rows T×D (projected)", "ours", proj["ours"]["gather_bytes"])
        rows += [concat, projected_gather]
        connector = _sum("connector total", "ours", [phi, plan, mean, concat, projector, projected_gather])
    else:
        connector = _sum("connector total", "ours", [og, projector])
    attention = _op("LLM causal attention (packed)", "ours", 0, record["llm"]["attention_flops"])
    ref_embed = _op("embedder aten ops (Φ on host)", "reference", record["og_tokens"]["reference_device"]["bytes"])
    ref_projector = _op(
        f"projector {proj['reference']['rows']} rows", "reference", proj["reference"]["bytes"], proj["reference"]["flops"]
    )
    ref_connector = _sum("connector total", "reference", [ref_embed, ref_projector])
    ref_attention = _op("LLM causal attention (padded)", "reference", 0, record["llm"]["attention_flops_ref"])
    return rows + [connector, attention, ref_embed, ref_projector, ref_connector, ref_attention]


def overhead_floors(record: dict, triton_counts: list[dict]) -> dict:
    """Host-side floors (seconds, assumed latencies) of one batch's embedder: ours on CUDA
    (aten ops + Triton launches of ``og_tokens`` as counted under the interpreter, and its
    estimated CUDA syncs, ``bench.triton_counts``), and the reference (its device-side aten
    ops, and the §10 sync estimate ``2B + 1 + 4M``)."""
    ours = next(r for r in triton_counts if r["case"] == "og_tokens")
    ref = record["og_tokens"]["reference_device"]
    ref_syncs = record["og_tokens"]["reference_syncs_spec"][0]
    launches = ours["ops"] + ours["triton_launches"]
    return {
        "ours": {"launches": launches, "syncs": ours["cuda_syncs"],
                 "seconds": cm.overhead_seconds(launches, ours["cuda_syncs"])},
        "reference": {"launches": ref["ops"], "syncs": ref_syncs, "seconds": cm.overhead_seconds(ref["ops"], ref_syncs)},
    }  # fmt: skip
