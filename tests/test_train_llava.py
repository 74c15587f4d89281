"""``python -m integration.train_llava`` (the shim of :mod:`ogkernels.jobs.train_llava`): the
README's main job, its baseline, and a 2-process DDP run. The installed job: test_train_job.py."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from integration.train_llava import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_default_run_learns_and_reports_savings(capsys, tmp_path):
    summary = main(["--output-dir", str(tmp_path)])  # the README command: tiny model, synthetic data, 60 steps
    out = capsys.readouterr().out
    assert summary["last_loss"] < 0.5 * summary["first_loss"], summary
    # packing saves tokens; attention (quadratic) saves more than tokens
    assert 0 < summary["attention_flops_ratio"] < summary["token_ratio"] < 1, summary
    assert summary["projector_rows_ratio"] < 1 and summary["tokens_per_s"] > 0
    assert "tok/s" in out and "saved" in out and "attention FLOPs" in out


def test_baseline_reference_path_trains(tmp_path):
    summary = main(["--steps", "3", "--baseline", "--image-size", "56", "--batch-size", "4", "--output-dir", str(tmp_path)])
    assert math.isfinite(summary["last_loss"])
    assert 3.0 < summary["first_loss"] < 6.0  # ≈ ln(128) at random init


def test_varlen_attention_implementation_trains(tmp_path):
    common = ["--steps", "4", "--image-size", "56", "--no-save", "--output-dir", str(tmp_path)]
    summary = main([*common, "--attn-implementation", "ogkernels_varlen"])
    reference = main([*common, "--attn-implementation", "sdpa"])
    # same seed, same data, same math: the two attention paths train identically (float32)
    assert summary["first_loss"] == pytest.approx(reference["first_loss"], rel=1e-5)
    assert summary["last_loss"] == pytest.approx(reference["last_loss"], rel=1e-3)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "integration.train_llava",
        "--steps", "3", "--batch-size", "2", "--image-size", "56", "--log-every", "1", "--output-dir", str(tmp_path),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "world=2" in output and "step    3/3" in output
    # the ranks print concurrently: lines may interleave without a newline between them
    checksums = re.findall(r"\[rank (\d)\] trainable parameter checksum (-?\d\.\d{10}e[+-]\d{2})", output)
    assert sorted(r for r, _ in checksums) == ["0", "1"], output[-2000:]
    # DDP averaged the gradients: both ranks hold the same weights after different data
    assert checksums[0][1] == checksums[1][1], checksums
