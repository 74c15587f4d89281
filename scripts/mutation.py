"""Mutation testing of the core with cosmic-ray (on demand, not in CI): see ``scripts/mutation.sh``.

``python scripts/mutation.py plan``            the modules, their test commands and sample sizes (JSON)
``python scripts/mutation.py config MODULE``   a cosmic-ray TOML config for one module (stdout)
``python scripts/mutation.py sample DB K``     keep a deterministic sample of K in-scope mutants of a
                                               session, mark the others skipped
``python scripts/mutation.py report DB...``    killed / survived / score per module, survivors' diffs

Scope: the PyTorch paths. Mutants inside a Triton launcher (a definition named ``*triton*`` or
``*launch*``) are out of scope here: the kernels are tested under the interpreter, too slow
for one test run per mutant on a CPU. Mutants inside a type annotation are equivalent by
construction (every module has ``from __future__ import annotations``: annotations are never
evaluated) and are not sampled. The sample is the ``K`` mutants with the smallest
SHA-256 of ``module|operator|occurrence|line:col`` (prefixed by ``MUTATION_SEED`` when set):
the same source and seed give the same sample.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys

PYTEST = "env PYTHONPATH=. OGKERNELS_BACKEND=torch {python} -m pytest -x -q -p no:randomly -p no:cacheprovider"

#: module → (pytest arguments: the fast, targeted tests that exercise it, sample size)
MODULES: dict[str, tuple[str, int]] = {
    "ogkernels/ops/index.py": ("tests/ops/test_index.py tests/test_packing.py tests/test_bounded_layouts.py -k 'not triton'", 20),
    "ogkernels/ops/phi_torch.py": ("tests/ops/test_phi.py -k 'not triton'", 24),
    "ogkernels/ops/token_plan.py": ("tests/ops/test_token_plan.py tests/test_og_tokens.py tests/test_token_budget.py -k 'not triton'", 24),
    "ogkernels/ops/place_tokens.py": ("tests/ops/test_token_plan.py tests/test_og_tokens.py -k 'not triton'", 20),
    "ogkernels/ops/gather_rows.py": ("tests/ops/test_gather_rows.py tests/test_bad_input_api.py -k 'not triton'", 20),
    "ogkernels/ops/token_budget.py": ("tests/test_token_budget.py", 20),
    "ogkernels/_batch.py": ("tests/test_og_tokens.py tests/test_token_budget.py tests/test_bounded_layouts.py tests/test_bad_input_api.py -k 'not triton'", 28),
    "ogkernels/varlen.py": ("tests/test_bounded_layouts.py tests/test_bad_input_api.py tests/test_og_tokens.py -k 'not triton'", 24),
    "ogkernels/packing.py": ("tests/test_packing.py tests/test_bad_input_api.py -k 'not triton'", 28),
    "ogkernels/options.py": ("tests/test_options.py tests/test_bad_input_api.py -k 'not triton'", 24),
}

OUT_OF_SCOPE = re.compile(r"triton|launch", re.IGNORECASE)


def config(module: str, python: str) -> str:
    tests, _ = MODULES[module]
    command = PYTEST.format(python=python) + " " + tests
    return "\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(module)}",
        "timeout = 120.0",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
    ])  # fmt: skip


@functools.lru_cache(maxsize=None)
def annotation_spans(module: str) -> tuple[tuple[tuple[int, int], tuple[int, int]], ...]:
    """``((line, col), (end_line, end_col))`` of every annotation in ``module``'s source."""
    tree = ast.parse(open(module, encoding="utf-8").read())
    spans = []
    for node in ast.walk(tree):
        notes = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            notes.append(node.returns)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            notes.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            notes.append(node.annotation)
        spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in notes]
    return tuple(spans)


def in_annotation(mutation) -> bool:
    position = tuple(mutation.start_pos)
    return any(start <= position < end for start, end in annotation_spans(str(mutation.module_path)))


def _key(mutation) -> str:
    seed = os.environ.get("MUTATION_SEED", "")  # another seed: another, independent sample
    text = seed + f"{mutation.module_path}|{mutation.operator_name}|{mutation.occurrence}|{mutation.start_pos[0]}:{mutation.start_pos[1]}"
    return hashlib.sha256(text.encode()).hexdigest()


def sample(db_path: str, size: int) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(db_path, WorkDB.Mode.open) as db:
        items = list(db.pending_work_items)
        in_scope = [
            w for w in items
            if not OUT_OF_SCOPE.search(w.mutations[0].definition_name or "") and not in_annotation(w.mutations[0])
        ]  # fmt: skip
        chosen = sorted(in_scope, key=lambda w: _key(w.mutations[0]))[:size]
        keep = {w.job_id for w in chosen}
        skipped = [w.job_id for w in items if w.job_id not in keep]
        if skipped:
            db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not sampled"))
    return {"mutants": len(items), "in_scope": len(in_scope), "sampled": len(keep)}


def report(db_paths: list[str]) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    modules = {}
    for path in db_paths:
        with use_db(path, WorkDB.Mode.open) as db:
            done = [(w, r) for w, r in db.completed_work_items if r.worker_outcome != WorkerOutcome.SKIPPED]
            total = db.num_work_items
        killed = [w for w, r in done if r.test_outcome == TestOutcome.KILLED]
        incompetent = [w for w, r in done if r.test_outcome == TestOutcome.INCOMPETENT]
        survivors = [(w, r) for w, r in done if r.test_outcome == TestOutcome.SURVIVED]
        errors = [w for w, r in done if r.test_outcome is None]
        module = str(done[0][0].mutations[0].module_path) if done else path
        modules[module] = {
            "mutants": total,
            "run": len(done),
            "killed": len(killed),
            "incompetent": len(incompetent),
            "survived": len(survivors),
            "errors": len(errors),
            "survivors": [
                {
                    "job": w.job_id,
                    "operator": w.mutations[0].operator_name,
                    "line": w.mutations[0].start_pos[0],
                    "definition": w.mutations[0].definition_name,
                    "in_annotation": in_annotation(w.mutations[0]),
                    "diff": r.diff,
                }
                for w, r in survivors
            ],
        }
    run = sum(m["run"] - m["incompetent"] - m["errors"] for m in modules.values())
    killed = sum(m["killed"] for m in modules.values())
    return {"modules": modules, "run": run, "killed": killed, "score": killed / run if run else None}


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "plan":
        print(json.dumps({m: {"tests": t, "sample": k} for m, (t, k) in MODULES.items()}, indent=1))
    elif command == "config":
        print(config(args[0], args[1] if len(args) > 1 else sys.executable))
    elif command == "sample":
        print(json.dumps(sample(args[0], int(args[1]))))
    elif command == "report":
        print(json.dumps(report(args), indent=1))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
