#!/usr/bin/env bash
# The field's testbed on two CPU cores (issue 41): the `testbed` preset (airbench94 on the full CIFAR-10,
# 50,000 / 10,000 images) forgetting one class or a random 10%, one step after the other (never two
# trainings at once on two cores), into $RUNS/testbed/<step>; logs and results into
# benchmarks/results/testbed-*, wall times into benchmarks/results/testbed-wall.txt. Every step resumes
# where it stopped (finished models and methods are reused, a training continues from its last epoch):
# rerun the same step after an interruption; a step that finished with the same command and code is skipped.
#   class<N>         original, Retrain and the paper's four paradigms at EPOCHS (default 5,10), forgetting class N
#                    (the original is trained once: every step reuses any the run folders hold, curve-15's too)
#   methods-class<N> the baselines (METHODS, default salun,scrub,neggrad_plus,rl,l1_sparse,msg,boundary_shrink,
#                    boundary_expanding,amun) at their defaults for 10 epochs, beside class<N>'s Retrain
#   random           a random 10% of the training set (seed 0): Retrain and the four paradigms at EPOCHS
#                    (default 5,10), from the same original
#   methods-random   the baselines (RANDOM_METHODS, default METHODS without boundary_expanding, a class-wise
#                    method: its shadow class stands for one class) at 10 epochs, beside random's Retrain
#   curve-<E>        the original's recipe at E epochs (the schedule scaled to E): plain and TTA test accuracy
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash benchmarks/testbed.sh class3 class5 class7 random methods-class3 methods-random
# TAG=x names a partial step's results file testbed-<step>-x-results.json: a run with a few METHODS holds only
# their rows and Retrain's, and would otherwise replace the results of the step's earlier partial runs (the
# full step's file holds every row: finished rows are reused).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
runs=${RUNS:-runs}/testbed
res=benchmarks/results
methods=${METHODS:-salun,scrub,neggrad_plus,rl,l1_sparse,msg,boundary_shrink,boundary_expanding,amun}
epochs=${EPOCHS:-5,10}  # the paradigms' epoch counts in class<N> and random (the methods steps: 10)
random_methods=${RANDOM_METHODS:-$(echo ",$methods," | sed 's/,boundary_expanding,/,/; s/^,//; s/,$//')}
mkdir -p "$res" "$runs"
# airbench in oneDNN (XLA's forms take about 2x its time): required, so that a machine without the
# cpu-kernels extra or a compiler stops with the fix rather than training for 2x the hours
export PRUNELORA_CPU_CONV=${PRUNELORA_CPU_CONV:-onednn}
RUNS=${RUNS:-runs} bash benchmarks/testbed_state.sh restore  # what earlier sessions trained (kept outside the work tree)
# what a finished step's marker records beside its command: the package's code and the presets, so that a
# step finished before either changed runs again (its finished models are reused; only what changed reruns)
code=$(find prunelora_keras configs -type f \( -name '*.py' -o -name '*.toml' -o -name '*.cc' \) | LC_ALL=C sort \
       | xargs cat | sha1sum | cut -c1-12)
run=(python -m prunelora_keras.run --model airbench --preset testbed --data-dir "$data")
reuse() {  # reuse FROM TO PATTERN...: hard-link FROM's finished models into TO (no copy, no retraining)
  local from=$1 to=$2
  shift 2
  mkdir -p "$to/checkpoints"
  for pattern in "$@"; do
    for f in "$from"/checkpoints/$pattern; do
      if [ -f "$f" ]; then ln -f "$f" "$to/checkpoints/"; fi
    done
  done
  return 0
}
share_originals() {  # share_originals TO: every trained original of $runs in TO (the command takes the one
  for d in "$runs"/*/; do  # whose key is its configuration's, e.g. curve-15's at the preset's 15 epochs)
    if [ "${d%/}" != "$1" ]; then reuse "${d%/}" "$1" 'original-*.keras' 'original-*.history.json' 'original-*.acc-*.json' 'original-*.eval-*.npz'; fi
  done
  return 0
}
for step in "$@"; do
  out="$runs/$step"
  case "$step" in
    class[0-9]*)
      share_originals "$out"
      reuse "$runs/methods-$step" "$out" 'retrain-*'  # a Retrain the methods step trained first (same key)
      cmd=("${run[@]}" --forget-class "${step#class}" --paradigms retrain,finetune,pruned,lora,pruned_lora --epochs "$epochs")
      ;;
    methods-class[0-9]*)
      n=${step#methods-class}
      reuse "$runs/class$n" "$out" 'original-*' 'retrain-*'
      cmd=("${run[@]}" --forget-class "$n" --paradigms "retrain,$methods" --epochs 10)
      ;;
    random)
      share_originals "$out"
      reuse "$runs/methods-random" "$out" 'retrain-*'
      cmd=("${run[@]}" --forget-fraction 0.1 --paradigms retrain,finetune,pruned,lora,pruned_lora --epochs "$epochs")
      ;;
    methods-random)
      share_originals "$out"  # before `random` has run too (a partial methods-random may run first)
      reuse "$runs/random" "$out" 'original-*' 'retrain-*'
      cmd=("${run[@]}" --forget-fraction 0.1 --paradigms "retrain,$random_methods" --epochs 10)
      ;;
    curve-[0-9]*)
      cmd=(python benchmarks/testbed_curve.py --data-dir "$data" --epochs "${step#curve-}")
      ;;
    *) echo "error: unknown step $step: use class<N>, methods-class<N>, random, methods-random or curve-<E>" >&2; exit 2 ;;
  esac
  case "$step" in
    curve-*) cmd+=(--out "$out" --json "$res/testbed-$step.json") ;;
    *) cmd+=(--overwrite --out "$out") ;;
  esac
  # a step that finished with this very command and code is skipped: rerunning it would reuse every model
  # and evaluate Retrain again
  if [ -f "$out/stage-done.txt" ] && [ "$(cat "$out/stage-done.txt")" = "${cmd[*]} code=$code" ]; then
    echo "$step: finished earlier with the same command and code, skipped ($out/stage-done.txt)"
    continue
  fi
  start=$(date +%s)
  "${cmd[@]}" >> "$res/testbed-$step.log" 2>&1
  case "$step" in curve-*) ;; *) cp "$out/results.json" "$res/testbed-$step${TAG:+-$TAG}-results.json" ;; esac
  echo "${cmd[*]} code=$code" > "$out/stage-done.txt"
  echo "$(date -u +%FT%TZ) $step wall_s=$(( $(date +%s) - start ))" >> "$res/testbed-wall.txt"
done
