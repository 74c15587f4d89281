"""The README's Python snippets run on a CPU as written.

Each listed section's ```` ```python ```` blocks run in order in one namespace, in a scratch
working directory; blocks fenced ```` ```python gpu ```` are the GPU variants and are skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ["Using it", "Train → save → reload → evaluate with and without masks"]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def snippets(title: str) -> tuple[list[str], int]:
    """The CPU blocks of a section and how many GPU blocks it has."""
    cpu, gpu = [], 0
    for language, tags, code in FENCE.findall(section(README.read_text(encoding="utf-8"), title)):
        if language != "python":
            continue
        if "gpu" in tags.split():
            gpu += 1
        else:
            cpu.append(code)
    return cpu, gpu


@pytest.mark.parametrize("title", [SECTIONS[0], pytest.param(SECTIONS[1], marks=pytest.mark.slow)])  # ≈10 s: trains
def test_section_runs_on_cpu(title, tmp_path, monkeypatch):
    cpu, gpu = snippets(title)
    assert cpu and gpu, "each section shows a CPU snippet and its GPU variant beside it"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(cpu):
        exec(compile(code, f"README.md [{title}] block {i}", "exec"), namespace)


def test_fences_are_found():
    # the parser sees every python block of the listed sections (a guard for the test above)
    text = README.read_text(encoding="utf-8")
    for title in SECTIONS:
        body = section(text, title)
        cpu, gpu = snippets(title)
        assert len(cpu) + gpu == body.count("```python"), title
    assert os.path.isfile(README)
