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
# The ViT's LoRA with the adapters the paper describes (out-projection and head), from the same original model:
mkdir -p runs/cpu-vit-intended && cp -n runs/cpu-vit/checkpoints/original-* runs/cpu-vit-intended/ 2>/dev/null || true
mkdir -p runs/cpu-vit-intended/checkpoints && mv runs/cpu-vit-intended/original-* runs/cpu-vit-intended/checkpoints/ 2>/dev/null || true
python -m prunelora_keras.run --model vit --preset cpu --data-dir "$data" --out runs/cpu-vit-intended --overwrite \
  --paradigms lora,pruned_lora --set unlearn.vit_lora_targets=intended > "$out/cpu-vit-intended.log" 2>&1
