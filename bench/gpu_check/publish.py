"""Commit-ready GPU evidence from one run: ``python -m bench.gpu_check.publish RUN_DIR``.

Copies ``RUN_DIR/gpu_check.md`` and ``gpu_check.json`` to
``bench/results-gpu/<date>-<gpu>.{md,json}`` and rewrites the block between the
``gpu-evidence`` markers of ``bench/README.md`` with the run's summary and a link, so the
README always shows the latest committed run (and says plainly when there is none).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from .core import REPO
from .report import summary_lines

START, END = "<!-- gpu-evidence:start -->", "<!-- gpu-evidence:end -->"
RESULTS = REPO / "bench" / "results-gpu"
README = REPO / "bench" / "README.md"


def run_name(report: dict) -> str:
    """``<date>-<gpu>``, e.g. ``2026-12-01-nvidia-h200``."""
    device = report.get("environment", {}).get("device", {}).get("name") or "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return f"{report.get('started', 'undated')[:10]}-{slug}"


def evidence_block(report: dict, link: str) -> str:
    """The README block of one run: where it ran, the one-screen summary, the link."""
    failing = [name for name, status in report["statuses"].items() if status in ("failed", "error")]
    verdict = "every section passed or was skipped" if not failing else "failing sections: " + ", ".join(failing)
    lines = [
        START,
        f"Latest GPU run: [{link}]({link}) ({report['mode']}, {report.get('started', '')}; {verdict}).",
        "",
        "```",
        *summary_lines(report),
        "```",
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README: expected a block between {START} and {END}")
    return pattern.sub(lambda _: block, text, count=1)


def publish(run_dir: Path, results: Path = RESULTS, readme: Path = README) -> Path:
    """Copy the run's report into ``results`` and point ``readme``'s evidence block at it."""
    report = json.loads((run_dir / "gpu_check.json").read_text())
    if report.get("mode") != "gpu":
        raise ValueError(f"{run_dir}: expected the report of a GPU run, got mode {report.get('mode')!r}")
    results.mkdir(parents=True, exist_ok=True)
    name = run_name(report)
    target = results / f"{name}.md"
    shutil.copyfile(run_dir / "gpu_check.md", target)
    shutil.copyfile(run_dir / "gpu_check.json", results / f"{name}.json")
    link = Path("results-gpu") / target.name
    readme.write_text(replace_block(readme.read_text(), evidence_block(report, link.as_posix())))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the --out folder of a GPU run")
    target = publish(parser.parse_args(argv).run_dir)
    print(f"wrote {target} and updated {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
