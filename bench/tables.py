"""The report's tables as Markdown (printed, and pasted into ``bench/README.md``).

Each function takes the report's data (``bench.report``) and returns one table as a string.
Units are in the column headers: ms / µs (time), MB (1e6 bytes), TFLOP (1e12 FLOPs).
"""

from __future__ import annotations

from ogkernels.tools import costmodel as cm


def markdown(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}×"


def batch_name(record: dict) -> str:
    cfg = record["config"]
    return f"{cfg['encoder']} B={cfg['B']} (M={cfg['masks']})"


def timings_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        extra = r["extra"]
        bound = extra.get("roofline_fraction", extra.get("read_once_bound_fraction"))
        moved_mb = extra.get("bytes_MB", extra.get("mask_MB"))  # the bytes that must move
        body.append([
            r["group"], r["path"], f"{r['median_s'] * 1e3:,.1f}", f"{r['mean_s'] * 1e3:,.1f}",
            "—" if r["speedup_median"] is None else f"{r['speedup_median']:.1f}×",
            "—" if r["speedup_mean"] is None else f"{r['speedup_mean']:.1f}×",
            "" if moved_mb is None else f"{moved_mb / 1e3 / r['median_s']:.2f}",
            "" if bound is None else f"{100 * bound:.0f} %",
        ])  # fmt: skip
    headers = [
        "group", "path", "median ms", "mean ms", "speedup (median)", "speedup (mean)", "GB/s of the minimum bytes",
        "of host memcpy bound",
    ]  # fmt: skip
    return markdown(headers, body)


def syncs_table(records: list[dict], triton: list[dict]) -> str:
    ours = next(r for r in triton if r["case"] == "og_tokens")
    capped = next(r for r in triton if r["case"] == "og_tokens max_tokens")
    body = []
    for record in records:
        og = record["og_tokens"]
        low, high = og["reference_syncs_spec"]
        torch_path = og["ours_torch"]
        body.append([
            batch_name(record), og["reference"]["syncs"], f"{low:,}–{high:,}",
            f"{torch_path['syncs']} (+{torch_path['host_uploads']} uploads)",
            f"{ours['syncs']} / {ours['cuda_syncs']} / {capped['cuda_syncs']}",
            f"{og['reference']['ops']:,} ({og['reference_device']['ops']:,} on device)", torch_path["ops"],
            f"{ours['ops']} + {ours['triton_launches']} Triton",
        ])  # fmt: skip
    headers = [
        "batch", "ref syncs (counted, CPU)", "ref syncs (§10, CUDA)", "ours PyTorch syncs (+ host uploads)",
        "ours Triton syncs: counted / CUDA est. / CUDA est. max_tokens",
        "ref aten ops", "ours PyTorch aten ops", "ours Triton path launches",
    ]  # fmt: skip
    return markdown(headers, body)


def bytes_table(records: list[dict]) -> str:
    body = []
    for record in records:
        og, phi = record["og_tokens"], record["phi"]
        minimum, design = og["min_bytes"], og["ours_cuda_design_bytes"]["total"]
        body.append([
            batch_name(record), f"{record['tokens']['T']:,}", _mb(minimum),
            f"{_mb(design)} ({_x(design, minimum)})",
            f"{_mb(og['ours_torch']['bytes'])} ({_x(og['ours_torch']['bytes'], minimum)})",
            f"{_mb(og['reference_device']['bytes'])} ({_x(og['reference_device']['bytes'], minimum)})",
            f"{_mb(phi['min_bytes_bool'])} / {_mb(phi['min_bytes_packed'])}",
            f"{_mb(phi['ours_torch']['bytes'])} ({_x(phi['ours_torch']['bytes'], phi['min_bytes_bool'])})",
            f"{_mb(phi['reference']['bytes'])} ({_x(phi['reference']['bytes'], phi['min_bytes_bool'])})",
        ])  # fmt: skip
    headers = [
        "batch", "T", "og_tokens min MB", "ours CUDA design MB", "ours PyTorch MB (counted)", "ref MB (counted, device)",
        "Φ min MB bool / packed", "Φ ours PyTorch MB", "Φ ref MB (CPU)",
    ]  # fmt: skip
    return markdown(headers, body)


def projector_llm_table(records: list[dict]) -> str:
    body = []
    for record in records:
        proj, llm = record["projector"], record["llm"]
        mode = "project-then-gather" if proj["ours"]["project_first"] else "gather-then-project"
        body.append([
            batch_name(record), f"{proj['reference']['rows']:,}", f"{proj['ours']['rows']:,} ({mode})",
            f"{proj['reference']['flops'] / 1e12:.2f} / {proj['ours']['flops'] / 1e12:.2f}",
            _x(proj["reference"]["flops"], proj["ours"]["flops"]),
            f"{llm['tokens_ref']:,} / {llm['tokens']:,}", f"{100 * (1 - llm['tokens'] / llm['tokens_ref']):.0f} %",
            f"{llm['attention_flops_ref'] / 1e12:.1f} / {llm['attention_flops'] / 1e12:.1f}",
            _x(llm["attention_flops_ref"], llm["attention_flops"]),
        ])  # fmt: skip
    headers = [
        "batch", "ref projector rows (B·L_max)", "ours projector rows", "projector TFLOP ref / ours (D=4096)",
        "ref/ours", "LLM image tokens ref / ours", "saved", "attention TFLOP ref / ours (Llama-3-8B)", "ref/ours",
    ]  # fmt: skip
    return markdown(headers, body)


def _find(ops: list[dict], name: str, impl: str) -> dict:
    return next(o for o in ops if o["op"].startswith(name) and o["impl"] == impl)


def modeled_summary_table(records: list[dict], modeled: list[list[dict]], floors: list[dict], gpu: str) -> str:
    body = []
    for record, ops, floor in zip(records, modeled, floors):
        us = {key: 1e6 * _find(ops, *key)["seconds"][gpu] for key in [
            ("og_tokens total", "ours"), ("og_tokens minimum", "bound"), ("embedder", "reference"),
            ("connector total", "ours"), ("connector total", "reference"),
        ]}  # fmt: skip
        og, low = us[("og_tokens total", "ours")], us[("og_tokens minimum", "bound")]
        ours_c, ref_c = us[("connector total", "ours")], us[("connector total", "reference")]
        body.append([
            batch_name(record), f"{og:,.0f}", f"{low:,.0f}", _x(og, low), f"{us[('embedder', 'reference')]:,.0f}",
            f"{ours_c:,.0f}", f"{ref_c:,.0f}", _x(ref_c, ours_c),
            f"{1e6 * floor['ours']['seconds']:,.0f}", f"{1e6 * floor['reference']['seconds']:,.0f}",
        ])  # fmt: skip
    headers = [
        "batch", "og_tokens ours µs", "og_tokens bound µs", "ours/bound", "ref embedder µs",
        "connector ours µs", "connector ref µs", "ref/ours", "embedder launch+sync floor ours µs", "ref µs",
    ]  # fmt: skip
    return f"modeled on {gpu} (roofline; floors at assumed {cm.ASSUMED_LAUNCH_S * 1e6:.0f} µs/launch, " \
        f"{cm.ASSUMED_SYNC_S * 1e6:.0f} µs/sync)\n\n" + markdown(headers, body)


def modeled_ops_table(ops: list[dict]) -> str:
    body = [
        [o["impl"], o["op"], _mb(o["bytes"]), f"{o['flops'] / 1e12:.3f}", o["dtype"],
         *(f"{1e6 * o['seconds'][gpu]:,.1f}" for gpu in cm.GPUS)]
        for o in ops
    ]  # fmt: skip
    return markdown(["impl", "op", "MB", "TFLOP", "dtype", *(f"{gpu} µs" for gpu in cm.GPUS)], body)


def _sites(uploads: dict[str, int]) -> str:
    """``{"ops/a.py:1": 1, "ops/a.py:7": 2}`` → ``"a.py:1,7×2"``."""
    lines: dict[str, list[str]] = {}
    for site, n in uploads.items():
        path, _, line = site.rpartition(":")
        lines.setdefault(path.rpartition("/")[2], []).append(line + (f"×{n}" if n > 1 else ""))
    return " · ".join(f"{path}:{','.join(numbers)}" for path, numbers in lines.items())


def triton_table(records: list[dict]) -> str:
    body = [
        [r["case"], f"B={r['B']} M={r['M']} V={r['V']} T={r['T']}", r["syncs"],
         ", ".join(f"{k}×{v}" for k, v in r["sync_ops"].items()),
         _sites(r["host_uploads"]), r["cuda_syncs"], r["ops"], r["triton_launches"]]
        for r in records
    ]  # fmt: skip
    headers = [
        "call (Triton path, interpreter)", "batch", "host syncs (counted)", "sync ops", "host-data uploads (site×n)",
        "syncs on CUDA (est.)", "aten ops", "Triton launches",
    ]  # fmt: skip
    return markdown(headers, body)


def audit_table(records: list[dict]) -> str:
    body = [
        [r["name"], f"sm_{r['arch']}", r["registers"], r["spill_store_bytes"] + r["spill_load_bytes"],
         r["shared_bytes"], max(r["load_bits"], default=0), max(r["store_bits"], default=0), f"{100 * r['occupancy']:.0f} %"]
        for r in records
    ]  # fmt: skip
    headers = ["kernel", "arch", "regs", "spill B", "smem B", "widest ld bits", "widest st bits", "occupancy (reg-limited)"]
    return markdown(headers, body)
