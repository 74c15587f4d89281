"""The installed main job ``ogkernels.jobs.train_llava`` (``ogkernels-train``): it runs from any
directory, leaves metrics, a plot and a reloadable model, and ``--token-budget`` batches stay
within the budget."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ogkernels.integrations.hf_llava import OGLlavaForConditionalGeneration  # noqa: E402
from ogkernels.integrations.llava_collator import OGLlavaCollator  # noqa: E402
from ogkernels.jobs import train_llava as job  # noqa: E402
from ogkernels.jobs.llava_data import CharTokenizer, SyntheticCaptions, packed_lengths  # noqa: E402
from ogkernels.jobs.train_metrics import METRIC_KEYS, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "56", "--synthetic-samples", "48"]  # V = 16 patches, a short dataset
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _check_metrics(path: Path, modes: set[str]) -> list[dict]:
    records = read_metrics(path)
    assert records and {r["mode"] for r in records} == modes
    for record in records:
        assert set(record) == set(METRIC_KEYS), sorted(set(record) ^ set(METRIC_KEYS))
        for key in ("loss", "tokens_per_s", "samples_per_s", "time_s", "padding_fraction"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), (key, record)
        assert record["samples"] >= 1 and record["tokens"] >= record["samples"]
        assert record["llm_rows"] == record["tokens"] + record["padding_rows"]
        assert record["peak_memory_bytes"] is None  # CPU
    return records


def test_job_runs_from_another_directory_and_leaves_its_outputs(tmp_path):
    """``python -m ogkernels.jobs.train_llava`` from a scratch directory (no checkout on the
    path but the package): the default output folder holds metrics of both paths (--compare),
    the plot and a model that reloads with bit-identical logits (--verify-save)."""
    command = [sys.executable, "-m", "ogkernels.jobs.train_llava", *TINY, "--steps", "2", "--batch-size", "4",
               "--compare", "--verify-save"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    (out,) = (tmp_path / "runs").iterdir()  # runs/train_llava-<timestamp>
    assert re.fullmatch(r"train_llava-\d{8}-\d{6}", out.name), out.name
    records = _check_metrics(out / "metrics.jsonl", {"packed", "reference"})
    packed = [r for r in records if r["mode"] == "packed"]
    reference = [r for r in records if r["mode"] == "reference"]
    assert [r["step"] for r in packed] == [r["step"] for r in reference] == [1, 2]
    # the same batches on both paths: the same real tokens; only the reference pads
    assert [r["tokens"] for r in packed] == [r["tokens"] for r in reference]
    assert all(r["padding_rows"] == 0 for r in packed)
    assert all(r["padding_rows"] > 0 and r["llm_rows"] == r["tokens_ref"] for r in reference)
    assert (out / "metrics.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "OGLlavaForConditionalGeneration bit-identical, AutoModelForImageTextToText bit-identical" in output
    assert "samples/s" in output and "packed vs reference padded" in output


def test_saved_model_reloads_bit_identical(tmp_path):
    """``train`` + ``save_model`` (what ``--output-dir`` does), then an independent reload:
    logits equal bit for bit; ``verify_saved`` catches a changed checkpoint."""
    args = job.parse_args([*TINY, "--steps", "2", "--batch-size", "4", "--output-dir", str(tmp_path)])
    result = job.train(args)
    model = job.save_model(result, tmp_path)
    reloaded = OGLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.og_options == model.config.og_options
    collate = OGLlavaCollator.from_model(reloaded, tokenizer=CharTokenizer())
    batch = collate([result.dataset[i] for i in range(3)])
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)
    assert job.verify_saved(model, result, tmp_path) == {
        "OGLlavaForConditionalGeneration": True,
        "AutoModelForImageTextToText": True,
    }
    with torch.no_grad():
        model.model.multi_modal_projector.mm_bom_mask_token.add_(1e-3)  # in memory only: the saved one differs now
    assert not any(job.verify_saved(model, result, tmp_path).values())


def test_token_budget_batches_never_exceed_the_budget(tmp_path):
    """``--token-budget N`` with LoRA: every step's packed row holds at most N tokens (read
    from metrics.jsonl), no padding, batches of varying sample counts; the LoRA run saves
    the merged model and its adapter, both reloadable."""
    budget = 300
    summary = job.main([*TINY, "--steps", "5", "--token-budget", str(budget), "--lora", "2", "--verify-save",
                        "--output-dir", str(tmp_path)])  # fmt: skip
    records = _check_metrics(tmp_path / "metrics.jsonl", {"packed"})
    assert all(r["token_budget"] == budget and 0 < r["tokens"] <= budget for r in records)
    assert all(r["padding_rows"] == 0 for r in records)
    assert len({r["samples"] for r in records}) > 1 or records[0]["samples"] > 1  # batches by tokens, not a fixed size
    assert summary["max_step_tokens"] <= budget and summary["verified"] == {
        "OGLlavaForConditionalGeneration": True,
        "AutoModelForImageTextToText": True,
    }
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["lora_alpha"] == 4 and adapter["modules_to_save"] == ["multi_modal_projector"]


def test_packed_lengths_equal_the_collated_batch():
    """The lengths the sampler groups by are the lengths the collator packs (with and
    without masks, text-only samples too)."""
    collate = OGLlavaCollator(127, grid=16, tokenizer=CharTokenizer(), max_length=2048, truncation="drop_text_tail")
    data = SyntheticCaptions(6, image_size=56, text_only_fraction=0.3, seed=3)
    samples = [data[i] for i in range(len(data))]
    assert any("masks" not in s for s in samples) and sum("masks" in s for s in samples) >= 3
    assert packed_lengths(samples, collate) == collate(samples)["cu_seq_lens_q"].diff().tolist()
    # an image without masks in a masked batch: counted alone, an upper bound of what it packs to
    first = next(i for i, s in enumerate(samples) if "masks" in s)
    samples[first] = dict(samples[first], masks=None)
    lengths, packed = packed_lengths(samples, collate), collate(samples)["cu_seq_lens_q"].diff().tolist()
    assert all(a == b for i, (a, b) in enumerate(zip(lengths, packed)) if i != first)
    assert lengths[first] >= packed[first]


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    assert job.cli(["--data", str(tmp_path / "missing.json"), "--model", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ogkernels-train: error: --data:") and "\n" not in err
    assert job.cli(["--token-budget", "0"]) == 2
    assert "--token-budget" in capsys.readouterr().err


def test_console_script_declared():
    """``setup.py`` declares ``ogkernels-train`` → ``ogkernels.jobs.train_llava:cli``; when this
    checkout is the installed one, the installed metadata has it too."""
    match = re.search(r'"ogkernels-train=([\w.]+):(\w+)"', (ROOT / "setup.py").read_text(encoding="utf-8"))
    assert match, "setup.py: no ogkernels-train console script"
    module, function = match.groups()
    assert callable(getattr(importlib.import_module(module), function))
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("ogkernels")
    except PackageNotFoundError:
        pytest.skip("ogkernels is not installed (pip install -e .)")
    source = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if source.rstrip("/") != ROOT.as_uri():
        pytest.skip(f"the installed ogkernels is another checkout ({source or 'not editable'})")
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts.get("ogkernels-train") == f"{module}:{function}", "the metadata predates it: pip install -e ."
    script = Path(sys.executable).with_name("ogkernels-train")
    result = subprocess.run([str(script), "--help"], cwd="/", env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--token-budget" in result.stdout, result.stderr[-2000:]
