#!/usr/bin/env bash
# Same seed, same metrics: the quick preset with every method that existed before a refactor, run
# on an old commit (a git worktree) and on the working tree, compared row by row (timings aside).
# Usage: bash benchmarks/registry_identity.sh OLD_COMMIT [vit|resnet50]   (about 3-6 min on 2 cores)
#   PARADIGMS=retrain,lora ...  the methods (default: all eleven); EXTRA="--eval-models 4" more flags for both runs
#   PROCS=2  each side as a 2-process job on this machine (jax.distributed over 127.0.0.1; process 0 writes)
set -euo pipefail
OLD=${1:?old commit}; M=${2:-vit}
ROOT=$(cd "$(dirname "$0")/.." && pwd); PY=${PYTHON:-python}
P=${PARADIGMS:-retrain,finetune,pruned,lora,pruned_lora,ga,rl,l1_sparse,salun,neggrad_plus,scrub}
TMP=$(mktemp -d); trap 'git -C "$ROOT" worktree remove --force "$TMP/old" >/dev/null 2>&1 || true' EXIT
git -C "$ROOT" worktree add "$TMP/old" "$OLD" >/dev/null
side() {  # side DIR OUT LOG: one run of the command in DIR (PROCS processes)
  local args=(-m prunelora_keras.run --model "$M" --preset quick --paradigms $P ${EXTRA:-} --out "$2")
  if [ "${PROCS:-1}" = 1 ]; then (cd "$1" && $PY "${args[@]}" > "$3" 2>&1); return; fi
  local port=$((20000 + RANDOM % 20000)) pids=()
  for ((i = 1; i < PROCS; i++)); do
    (cd "$1" && $PY "${args[@]}" --coordinator "127.0.0.1:$port" --num-processes "$PROCS" --process-id $i > "$3.$i" 2>&1) &
    pids+=($!)
  done
  (cd "$1" && $PY "${args[@]}" --coordinator "127.0.0.1:$port" --num-processes "$PROCS" --process-id 0 > "$3" 2>&1)
  for p in "${pids[@]}"; do wait "$p"; done
}
side "$TMP/old" "$TMP/a" "$TMP/a.log"
side "$ROOT" "$TMP/b" "$TMP/b.log"
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
