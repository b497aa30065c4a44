#!/usr/bin/env bash
# The testbed's expensive state kept outside the work tree (issue 41): a session's work tree is laid anew,
# which takes the run folders ($RUNS/testbed/<step>, ignored files) with it, and retraining what they held
# costs hours of the two cores: the airbench original (about 45 min), each step's Retrain (about 35 min)
# and every finished method (rows only). Weights stay out of the repository, so a fresh machine (a new
# $HOME) still trains them again. So:
#   save     copies, from every step's run folder, the finished originals and Retrains (.keras, about 8 MB
#            each, with their history and accuracy sidecars) and every finished method's rows
#            (paradigms/*.json, a few kB) into $TESTBED_STATE/<step>/ (default ~/.cache/prunelora_keras/testbed-state) (each file once: a model
#            shared by hard link between steps is saved under the first step that holds it)
#   restore  puts them back where they came from (missing files only); testbed.sh does this before a step,
#            so a step on a fresh machine reuses them instead of training again
# Not kept: a training's epoch-end state (*.state.npz, about 3x a model) and the evaluation caches (they are
# recomputed in minutes).
#   RUNS=runs bash benchmarks/testbed_state.sh save
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs}/testbed
state=${TESTBED_STATE:-$HOME/.cache/prunelora_keras/testbed-state}
case "${1:-}" in
  save)
    declare -A seen=()
    for f in "$state"/*/*/*; do [ -f "$f" ] && seen[$(basename "$f")]=1; done
    for d in "$runs"/*/; do
      step=$(basename "$d")
      for f in "$d"checkpoints/original-*.keras "$d"checkpoints/original-*.history.json "$d"checkpoints/original-*.acc-*.json \
               "$d"checkpoints/retrain-*.keras "$d"checkpoints/retrain-*.history.json "$d"checkpoints/retrain-*.acc-*.json \
               "$d"paradigms/*.json; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        [ -n "${seen[$name]:-}" ] && continue
        sub=$(basename "$(dirname "$f")")
        mkdir -p "$state/$step/$sub"
        cp -p "$f" "$state/$step/$sub/$name"
        seen[$name]=1
        echo "saved $state/$step/$sub/$name"
      done
    done
    ;;
  restore)
    for f in "$state"/*/*/*; do
      [ -f "$f" ] || continue
      rel=${f#"$state"/}
      if [ ! -e "$runs/$rel" ]; then
        mkdir -p "$(dirname "$runs/$rel")"
        cp -p "$f" "$runs/$rel"
        echo "restored $runs/$rel"
      fi
    done
    ;;
  *) echo "usage: RUNS=runs bash benchmarks/testbed_state.sh save|restore" >&2; exit 2 ;;
esac
