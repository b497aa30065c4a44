#!/usr/bin/env bash
# Runs the `cpu` preset for both models on real CIFAR-10, one after the other (never two trainings
# at once on two cores), logging to benchmarks/results/. Usage: bash benchmarks/run_cpu_preset.sh [DATA]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
out=benchmarks/results
mkdir -p "$out"
for model in vit resnet50; do
  start=$(date +%s)
  python -m prunelora_keras.run --model "$model" --preset cpu --data-dir "$data" --out "runs/cpu-$model" \
    --overwrite > "$out/cpu-$model.log" 2>&1
  echo "$model wall_s=$(( $(date +%s) - start ))" >> "$out/cpu-wall.txt"
done
