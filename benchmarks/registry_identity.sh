#!/usr/bin/env bash
# Same seed, same metrics: the quick preset with every method that existed before a refactor, run
# on an old commit (a git worktree) and on the working tree, compared row by row (timings aside).
# Usage: bash benchmarks/registry_identity.sh OLD_COMMIT [vit|resnet50]   (about 3-6 min on 2 cores)
#   PARADIGMS=retrain,lora ...  the methods (default: all eleven); EXTRA="--eval-models 4" more flags for both runs
set -euo pipefail
OLD=${1:?old commit}; M=${2:-vit}
ROOT=$(cd "$(dirname "$0")/.." && pwd); PY=${PYTHON:-python}
P=${PARADIGMS:-retrain,finetune,pruned,lora,pruned_lora,ga,rl,l1_sparse,salun,neggrad_plus,scrub}
TMP=$(mktemp -d); trap 'git -C "$ROOT" worktree remove --force "$TMP/old" >/dev/null 2>&1 || true' EXIT
git -C "$ROOT" worktree add "$TMP/old" "$OLD" >/dev/null
(cd "$TMP/old" && $PY -m prunelora_keras.run --model "$M" --preset quick --paradigms $P ${EXTRA:-} --out "$TMP/a" > "$TMP/a.log" 2>&1)
(cd "$ROOT" && $PY -m prunelora_keras.run --model "$M" --preset quick --paradigms $P ${EXTRA:-} --out "$TMP/b" > "$TMP/b.log" 2>&1)
$PY - "$TMP/a/results.json" "$TMP/b/results.json" <<'PYEOF'
import json, math, sys
a, b = (json.load(open(p))["rows"] for p in sys.argv[1:3])
def timing(k):  # seconds (``*_s``, their spread over seeds or classes) and memory: not results
    return k.endswith(("_s", "_s_std")) or k.startswith("peak_mem")
bad = 0
for ra, rb in zip(a, b):
    diffs = [k for k in ra if not timing(k) and ra[k] != rb.get(k)
             and not (isinstance(ra[k], float) and math.isnan(ra[k]) and math.isnan(rb.get(k, 0.0)))]
    bad += bool(diffs)
    print(ra["paradigm"], ra["epochs"], "IDENTICAL" if not diffs else f"DIFF {[(k, ra[k], rb.get(k)) for k in diffs[:6]]}")
print("rows", len(a), len(b), "differing", bad)
sys.exit(1 if bad or len(a) != len(b) else 0)
PYEOF
