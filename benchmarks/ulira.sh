#!/usr/bin/env bash
# U-LiRA results (issue 26): quick preset, random (10%) and class-wise forgetting, logs and results in
# benchmarks/results/ulira-<model>-quick-<scenario>-s<S>.*  Usage: bash benchmarks/ulira.sh MODEL S PARADIGMS [EXTRA...]
#   bash benchmarks/ulira.sh vit 32 retrain,finetune,pruned,lora,pruned_lora,ga,rl,l1_sparse,salun,neggrad_plus,scrub --eval-models 16
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:?model}; S=${2:?shadows}; P=${3:?paradigms}; shift 3
for scenario in random classwise; do
  flags=(); [ "$scenario" = random ] && flags=(--forget-fraction 0.1)
  name=ulira-$M-quick-$scenario-s$S
  start=$(date +%s)
  if ! python -m prunelora_keras.run --model "$M" --preset quick "${flags[@]}" --eval-ulira "$S" --paradigms "$P" "$@" \
      --out "runs/$name" > "benchmarks/results/$name.log" 2>&1; then
    echo "$name failed: see benchmarks/results/$name.log"; continue
  fi
  echo "$(date -u +%FT%TZ) $name wall_s=$(( $(date +%s) - start )) (2-core x86 CPU)" >> benchmarks/results/ulira-wall.txt
  cp "runs/$name/results.md" "benchmarks/results/$name-results.md"
  cp "runs/$name/results.json" "benchmarks/results/$name-results.json"
done
