#!/usr/bin/env bash
# Mutation testing of the core (cosmic-ray), on demand — not part of CI.
#
#   scripts/mutation.sh [MODULE ...]      default: every module of scripts/mutation.py
#
# Installs cosmic-ray 8.7.0 under .mutation/lib (pip --target, not into the venv), copies the
# working tree to .mutation/work (mutants are written there, never into your tree), and per
# module: cosmic-ray init → a deterministic sample (scripts/mutation.py) → exec, with that
# module's fast targeted tests as the test command. Sessions: .mutation/sessions/*.sqlite;
# the summary with every survivor's diff: .mutation/report.json. Environment: PYTHON (default
# the project venv or python3), MUTATION_SAMPLE=N overrides every module's sample size,
# MUTATION_SEED=S draws another sample.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3 )}"
STATE="$ROOT/.mutation"
LIB="$STATE/lib"
WORK="$STATE/work"
SESSIONS="$STATE/sessions"

if [ ! -d "$LIB/cosmic_ray" ]; then
    "$PYTHON" -m pip install -q --target "$LIB" "cosmic-ray==8.7.0"
fi
cosmic() { PYTHONPATH="$LIB" "$PYTHON" -m cosmic_ray.cli "$@"; }
driver() { PYTHONPATH="$LIB" "$PYTHON" "$ROOT/scripts/mutation.py" "$@"; }

rm -rf "$WORK"
mkdir -p "$WORK" "$SESSIONS"
# the tracked and untracked-but-not-ignored files, as they are now
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK" 2>/dev/null || true)

if [ "$#" -gt 0 ]; then
    modules=("$@")
else
    mapfile -t modules < <(driver plan | "$PYTHON" -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
fi

cd "$WORK"
sessions=()
for module in "${modules[@]}"; do
    name="$(echo "$module" | tr '/.' '__')"
    cfg="$SESSIONS/$name.toml"
    db="$SESSIONS/$name.sqlite"
    driver config "$module" "$PYTHON" > "$cfg"
    size="${MUTATION_SAMPLE:-$(driver plan | "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['$module']['sample'])")}"
    rm -f "$db"
    cosmic init "$cfg" "$db"
    echo "$module: $(driver sample "$db" "$size")"
    start=$(date +%s)
    cosmic exec "$cfg" "$db"
    echo "$module: $(( $(date +%s) - start )) s"
    sessions+=("$db")
done
driver report "${sessions[@]}" > "$STATE/report.json"  # in the copy: the sources the mutants came from
cd "$ROOT"
"$PYTHON" - "$STATE/report.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
for module, m in data["modules"].items():
    print(f"{module}: {m['killed']} killed, {m['survived']} survived, {m['incompetent']} incompetent of {m['run']} run ({m['mutants']} mutants)")
print(f"score: {data['killed']}/{data['run']} = {data['score']:.1%}" if data["run"] else "no mutant run")
EOF
